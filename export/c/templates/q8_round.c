/* Float -> int8 with round-half-to-even (lrintf in the default rounding mode) and saturation.
 * real_steps: the value in units of the output scale (x / scale), before the zero point is added.
 * lo, hi: the int8 range to clamp to (-128..127, narrower when a ReLU was fused). */
static inline int8_t q8_round(float real_steps, int32_t zero_point, int32_t lo, int32_t hi)
{
    const float lo_steps = (float)(lo - zero_point);
    const float hi_steps = (float)(hi - zero_point);
    float v = real_steps < lo_steps ? lo_steps : real_steps;
    v = v > hi_steps ? hi_steps : v;
    return (int8_t)(lrintf(v) + zero_point);
}

/* ONNX QuantizeLinear to int8: saturate(round(x / scale) + zero_point). */
static inline int8_t q8_quantize(float x, float scale, int32_t zero_point)
{
    return q8_round(x / scale, zero_point, -128, 127);
}
