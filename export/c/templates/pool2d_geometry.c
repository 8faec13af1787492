/* A 2-D pooling window over one (channels, in_h, in_w) image, ONNX MaxPool/AveragePool semantics. */
struct pool2d_geometry {
    int channels, in_h, in_w;
    int out_h, out_w;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_top, pad_left, pad_bottom, pad_right;
    int dilation_h, dilation_w;
    int count_include_pad;       /* AveragePool: divide by the window size including padding */
};

/* The number of window taps inside the padded image (count_include_pad) or inside the image. */
static inline int pool2d_divisor(const struct pool2d_geometry *g, int oy, int ox)
{
    int count = 0;
    for (int ky = 0; ky < g->kernel_h; ++ky) {
        const int iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
        const int rows = g->count_include_pad ? g->in_h + g->pad_bottom : g->in_h;
        const int first = g->count_include_pad ? -g->pad_top : 0;
        if (iy < first || iy >= rows) {
            continue;
        }
        for (int kx = 0; kx < g->kernel_w; ++kx) {
            const int ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
            const int cols = g->count_include_pad ? g->in_w + g->pad_right : g->in_w;
            const int first_col = g->count_include_pad ? -g->pad_left : 0;
            if (ix >= first_col && ix < cols) {
                ++count;
            }
        }
    }
    return count > 0 ? count : 1;
}
