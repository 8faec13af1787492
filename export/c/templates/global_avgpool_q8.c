/* y[c] = the real mean of int8 plane x[c]: (sum(x[c]) - size * zero_point) * scale / size, summed
 * exactly in int32. x: (channels, size) int8 with size = H * W; y: (channels,) float. */
static void global_avgpool_q8(const int8_t *x, int channels, int size, int32_t zero_point, float scale, float *y)
{
    for (int c = 0; c < channels; ++c) {
        const int8_t *x_c = x + (size_t)c * size;
        int32_t sum = 0;
        for (int i = 0; i < size; ++i) {
            sum += (int32_t)x_c[i] - zero_point;
        }
        y[c] = (float)sum * scale / (float)size;
    }
}
