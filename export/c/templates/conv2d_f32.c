/* edgereg-requires: conv2d_geometry */
/* y = clamp(conv(x, weight) + bias, act_min, act_max).
 * x: (in_c, in_h, in_w) float; weight: (out_c, in_c / groups, kernel_h, kernel_w) float;
 * bias: (out_c,) float or NULL; y: (out_c, out_h, out_w) float. Padding taps are skipped (zeros). */
static void conv2d_f32(const float *x, const struct conv2d_geometry *g, const float *weight,
                       const float *bias, float act_min, float act_max, float *y)
{
    const int in_per_group = g->in_c / g->groups;
    const int out_per_group = g->out_c / g->groups;
    const int taps = g->kernel_h * g->kernel_w;
    for (int m = 0; m < g->out_c; ++m) {
        const int first_channel = (m / out_per_group) * in_per_group;
        const float *w_m = weight + (size_t)m * in_per_group * taps;
        float *y_m = y + (size_t)m * g->out_h * g->out_w;
        for (int oy = 0; oy < g->out_h; ++oy) {
            for (int ox = 0; ox < g->out_w; ++ox) {
                float acc = bias ? bias[m] : 0.0f;
                for (int c = 0; c < in_per_group; ++c) {
                    const float *x_c = x + (size_t)(first_channel + c) * g->in_h * g->in_w;
                    const float *w_c = w_m + (size_t)c * taps;
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
                            acc += x_c[iy * g->in_w + ix] * w_c[ky * g->kernel_w + kx];
                        }
                    }
                }
                y_m[oy * g->out_w + ox] = fminf(fmaxf(acc, act_min), act_max);
            }
        }
    }
}
