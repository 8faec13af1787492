/* y[c] = mean of x[c, :, :]. x: (channels, size) float with size = H * W; y: (channels,) float. */
static void global_avgpool_f32(const float *x, int channels, int size, float *y)
{
    for (int c = 0; c < channels; ++c) {
        const float *x_c = x + (size_t)c * size;
        float sum = 0.0f;
        for (int i = 0; i < size; ++i) {
            sum += x_c[i];
        }
        y[c] = sum / (float)size;
    }
}
