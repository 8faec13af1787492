/* y[c] = max of x[c, :, :]. x: (channels, size) float with size = H * W; y: (channels,) float. */
static void global_maxpool_f32(const float *x, int channels, int size, float *y)
{
    for (int c = 0; c < channels; ++c) {
        const float *x_c = x + (size_t)c * size;
        float best = -INFINITY;
        for (int i = 0; i < size; ++i) {
            best = x_c[i] > best ? x_c[i] : best;
        }
        y[c] = best;
    }
}
