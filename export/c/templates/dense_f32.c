/* y[r, n] = clamp(sum_k x[r, k] * weight[n, k] + bias[n], act_min, act_max) for each of `rows` rows.
 * x: (rows, in_features) float; weight: (out_features, in_features) float; bias: (out_features,) or NULL. */
static void dense_f32(const float *x, int rows, int in_features, const float *weight, const float *bias,
                      int out_features, float act_min, float act_max, float *y)
{
    for (int r = 0; r < rows; ++r) {
        const float *x_r = x + (size_t)r * in_features;
        for (int n = 0; n < out_features; ++n) {
            const float *w_n = weight + (size_t)n * in_features;
            float acc = bias ? bias[n] : 0.0f;
            for (int k = 0; k < in_features; ++k) {
                acc += x_r[k] * w_n[k];
            }
            y[(size_t)r * out_features + n] = fminf(fmaxf(acc, act_min), act_max);
        }
    }
}
