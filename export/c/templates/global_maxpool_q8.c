/* y[c] = max of int8 plane x[c] (exact: max commutes with dequantization; y keeps x's scale and zero
 * point). x: (channels, size) int8 with size = H * W; y: (channels,) int8. */
static void global_maxpool_q8(const int8_t *x, int channels, int size, int8_t *y)
{
    for (int c = 0; c < channels; ++c) {
        const int8_t *x_c = x + (size_t)c * size;
        int8_t best = INT8_MIN;
        for (int i = 0; i < size; ++i) {
            best = x_c[i] > best ? x_c[i] : best;
        }
        y[c] = best;
    }
}
