/* edgereg-requires: pool2d_geometry q8_round */
/* Window mean on int8 data whose input and output share scale and zero point (what onnxruntime's
 * quantizer writes for AveragePool): y = round(mean(x - zero_point)) + zero_point. Padding taps hold
 * the real value 0 (x == zero_point) and add nothing to the sum. */
static void avgpool2d_q8(const int8_t *x, const struct pool2d_geometry *g, int32_t zero_point, int8_t *y)
{
    for (int c = 0; c < g->channels; ++c) {
        const int8_t *x_c = x + (size_t)c * g->in_h * g->in_w;
        int8_t *y_c = y + (size_t)c * g->out_h * g->out_w;
        for (int oy = 0; oy < g->out_h; ++oy) {
            for (int ox = 0; ox < g->out_w; ++ox) {
                int32_t sum = 0;
                for (int ky = 0; ky < g->kernel_h; ++ky) {
                    const int iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                    if (iy < 0 || iy >= g->in_h) {
                        continue;
                    }
                    for (int kx = 0; kx < g->kernel_w; ++kx) {
                        const int ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                        if (ix >= 0 && ix < g->in_w) {
                            sum += (int32_t)x_c[iy * g->in_w + ix] - zero_point;
                        }
                    }
                }
                y_c[oy * g->out_w + ox] = q8_round((float)sum / (float)pool2d_divisor(g, oy, ox),
                                                   zero_point, -128, 127);
            }
        }
    }
}
