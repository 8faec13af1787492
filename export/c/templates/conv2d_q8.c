/* edgereg-requires: conv2d_geometry q8_output */
/* Integer convolution: acc = bias[m] + sum (x - x_zero) * weight, in int32, then q8_store.
 * x: (in_c, in_h, in_w) int8 with zero point x_zero; weight: (out_c, in_c / groups, kh, kw) int8,
 * symmetric (zero point 0); bias: (out_c,) int32 in units of x_scale * weight_scale[m], or NULL.
 * Padding taps are skipped: they hold the real value 0, i.e. x == x_zero. */
static void conv2d_q8(const int8_t *x, const struct conv2d_geometry *g, const int8_t *weight,
                      const int32_t *bias, int32_t x_zero, const struct q8_output *out)
{
    const int in_per_group = g->in_c / g->groups;
    const int out_per_group = g->out_c / g->groups;
    const int taps = g->kernel_h * g->kernel_w;
    for (int m = 0; m < g->out_c; ++m) {
        const int first_channel = (m / out_per_group) * in_per_group;
        const int8_t *w_m = weight + (size_t)m * in_per_group * taps;
        const size_t y_m = (size_t)m * g->out_h * g->out_w;
        for (int oy = 0; oy < g->out_h; ++oy) {
            for (int ox = 0; ox < g->out_w; ++ox) {
                int32_t acc = bias ? bias[m] : 0;
                for (int c = 0; c < in_per_group; ++c) {
                    const int8_t *x_c = x + (size_t)(first_channel + c) * g->in_h * g->in_w;
                    const int8_t *w_c = w_m + (size_t)c * taps;
                    for (int ky = 0; ky < g->kernel_h; ++ky) {
                        const int iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                        if (iy < 0 || iy >= g->in_h) {
                            continue;
                        }
                        for (int kx = 0; kx < g->kernel_w; ++kx) {
                            const int ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                            if (ix < 0 || ix >= g->in_w) {
                                continue;
                            }
                            acc += ((int32_t)x_c[iy * g->in_w + ix] - x_zero) * (int32_t)w_c[ky * g->kernel_w + kx];
                        }
                    }
                }
                q8_store(out, m, y_m + (size_t)oy * g->out_w + ox, acc);
            }
        }
    }
}
