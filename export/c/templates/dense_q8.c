/* edgereg-requires: q8_output */
/* Integer fully connected layer: acc = bias[n] + sum_k (x[r, k] - x_zero) * weight[n, k], then q8_store.
 * x: (rows, in_features) int8; weight: (out_features, in_features) int8, symmetric;
 * bias: (out_features,) int32 in units of x_scale * weight_scale[n], or NULL. */
static void dense_q8(const int8_t *x, int rows, int in_features, const int8_t *weight, const int32_t *bias,
                     int out_features, int32_t x_zero, const struct q8_output *out)
{
    for (int r = 0; r < rows; ++r) {
        const int8_t *x_r = x + (size_t)r * in_features;
        for (int n = 0; n < out_features; ++n) {
            const int8_t *w_n = weight + (size_t)n * in_features;
            int32_t acc = bias ? bias[n] : 0;
            for (int k = 0; k < in_features; ++k) {
                acc += ((int32_t)x_r[k] - x_zero) * (int32_t)w_n[k];
            }
            q8_store(out, n, (size_t)r * out_features + n, acc);
        }
    }
}
