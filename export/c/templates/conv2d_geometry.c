/* A 2-D convolution of one (in_c, in_h, in_w) image into (out_c, out_h, out_w), ONNX Conv semantics. */
struct conv2d_geometry {
    int in_c, in_h, in_w;        /* input channels, rows, columns */
    int out_c, out_h, out_w;     /* output channels, rows, columns */
    int kernel_h, kernel_w;      /* taps */
    int stride_h, stride_w;
    int pad_top, pad_left;       /* zero padding before the first row / column */
    int dilation_h, dilation_w;
    int groups;                  /* 1: dense; in_c == out_c == groups: depthwise */
};
