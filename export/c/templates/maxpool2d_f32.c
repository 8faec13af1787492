/* edgereg-requires: pool2d_geometry */
/* y = max over each window of x (padding ignored). x: (channels, in_h, in_w) float; y: (channels, out_h, out_w).
 * On int8 data this is exact: max commutes with the monotonic dequantization, so x and y share scale
 * and zero point. */
static void maxpool2d_f32(const float *x, const struct pool2d_geometry *g, float *y)
{
    for (int c = 0; c < g->channels; ++c) {
        const float *x_c = x + (size_t)c * g->in_h * g->in_w;
        float *y_c = y + (size_t)c * g->out_h * g->out_w;
        for (int oy = 0; oy < g->out_h; ++oy) {
            for (int ox = 0; ox < g->out_w; ++ox) {
                float best = -INFINITY;
                for (int ky = 0; ky < g->kernel_h; ++ky) {
                    const int iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                    if (iy < 0 || iy >= g->in_h) {
                        continue;
                    }
                    for (int kx = 0; kx < g->kernel_w; ++kx) {
                        const int ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                        if (ix >= 0 && ix < g->in_w && x_c[iy * g->in_w + ix] > best) {
                            best = x_c[iy * g->in_w + ix];
                        }
                    }
                }
                y_c[oy * g->out_w + ox] = best;
            }
        }
    }
}
