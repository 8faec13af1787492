/* edgereg-requires: q8_round */
/* Where the int32 accumulators of an int8 kernel go.
 * With q set: q[i] = saturate(round(acc * multiplier[c]) + zero_point) into [min, max]
 *   (multiplier = input_scale * weight_scale[c] / output_scale, as onnxruntime's QLinearConv).
 * With f set: f[i] = clamp(acc * multiplier[c], act_min, act_max)
 *   (multiplier = input_scale * weight_scale[c]: the real value, for a float consumer). */
struct q8_output {
    const float *multiplier;   /* per output channel */
    int32_t zero_point;        /* of the int8 output */
    int32_t min, max;          /* int8 clamp (a fused ReLU raises min to the zero point) */
    float act_min, act_max;    /* float clamp (fused ReLU/Clip) for float outputs */
    int8_t *q;                 /* int8 destination, or NULL */
    float *f;                  /* float destination, or NULL */
};

static inline void q8_store(const struct q8_output *out, int channel, size_t index, int32_t acc)
{
    const float real_steps = (float)acc * out->multiplier[channel];
    if (out->q) {
        out->q[index] = q8_round(real_steps, out->zero_point, out->min, out->max);
    } else {
        out->f[index] = fminf(fmaxf(real_steps, out->act_min), out->act_max);
    }
}
