/* Softmax along one axis of a tensor viewed as (outer, n, inner): for each (o, i),
 * y[o, :, i] = exp(x[o, :, i] - max) / sum. x and y may be the same buffer. */
static void softmax_f32(const float *x, int outer, int n, int inner, float *y)
{
    for (int o = 0; o < outer; ++o) {
        for (int i = 0; i < inner; ++i) {
            const size_t base = (size_t)o * n * inner + i;
            float largest = -INFINITY;
            for (int k = 0; k < n; ++k) {
                largest = x[base + (size_t)k * inner] > largest ? x[base + (size_t)k * inner] : largest;
            }
            float sum = 0.0f;
            for (int k = 0; k < n; ++k) {
                const float e = expf(x[base + (size_t)k * inner] - largest);
                y[base + (size_t)k * inner] = e;
                sum += e;
            }
            for (int k = 0; k < n; ++k) {
                y[base + (size_t)k * inner] /= sum;
            }
        }
    }
}
