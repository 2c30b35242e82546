/* edgecomp C runtime: data-movement and boundary kernels. See ec_shape.h for the semantics and
 * sources. */
#include "ec_shape.h"

void ec_reshape(const ec_reshape_params *p, const void *input, void *output)
{
    const uint8_t *src = (const uint8_t *)input;
    uint8_t *dst = (uint8_t *)output;
    int32_t i;
    if (src == dst) {
        return; /* aliased in place by the emitter */
    }
    for (i = 0; i < p->bytes; ++i) {
        dst[i] = src[i];
    }
}

static int8_t *ec_fill_s8(int8_t *dst, int8_t value, int32_t count)
{
    int32_t i;
    for (i = 0; i < count; ++i) {
        dst[i] = value;
    }
    return dst + count;
}

void ec_pad_s8(const ec_pad_params *p, const int8_t *input, int8_t *output)
{
    /* Walk the output in row-major order over the first four dimensions; each innermost row is
     * either all padding or (before, the input row, after). The input is read sequentially. */
    const int32_t *in = p->input_shape;
    const int32_t *lo = p->before;
    const int32_t *hi = p->after;
    const int8_t value = (int8_t)p->pad_value;
    const int32_t out0 = lo[0] + in[0] + hi[0];
    const int32_t out1 = lo[1] + in[1] + hi[1];
    const int32_t out2 = lo[2] + in[2] + hi[2];
    const int32_t out3 = lo[3] + in[3] + hi[3];
    const int32_t out4 = lo[4] + in[4] + hi[4];
    int32_t d0, d1, d2, d3, i;
    for (d0 = 0; d0 < out0; ++d0) {
        const int pad0 = d0 < lo[0] || d0 >= lo[0] + in[0];
        for (d1 = 0; d1 < out1; ++d1) {
            const int pad1 = pad0 || d1 < lo[1] || d1 >= lo[1] + in[1];
            for (d2 = 0; d2 < out2; ++d2) {
                const int pad2 = pad1 || d2 < lo[2] || d2 >= lo[2] + in[2];
                for (d3 = 0; d3 < out3; ++d3) {
                    if (pad2 || d3 < lo[3] || d3 >= lo[3] + in[3]) {
                        output = ec_fill_s8(output, value, out4);
                        continue;
                    }
                    output = ec_fill_s8(output, value, lo[4]);
                    for (i = 0; i < in[4]; ++i) {
                        *output++ = *input++;
                    }
                    output = ec_fill_s8(output, value, hi[4]);
                }
            }
        }
    }
}

void ec_concat_s8(const ec_concat_params *p, int8_t *output)
{
    int32_t outer, k, i;
    for (outer = 0; outer < p->outer_count; ++outer) {
        for (k = 0; k < p->input_count; ++k) {
            const int32_t size = p->copy_sizes[k];
            const int8_t *src = p->inputs[k] + outer * size;
            for (i = 0; i < size; ++i) {
                *output++ = src[i];
            }
        }
    }
}

/* static_cast<int32_t>(std::round(v)) for a float v, as compiled for x86-64: std::round rounds
 * half away from zero (done here exactly, without libm); a result outside int32 (and NaN) converts
 * to INT32_MIN (the x86 "integer indefinite" of cvttss2si). */
static int32_t ec_round_f32_to_int32(float v)
{
    const float magnitude = v < 0.0f ? -v : v;
    int32_t truncated;
    if (!(magnitude < 2147483648.0f)) {
        return INT32_MIN; /* NaN, +-inf, |v| >= 2^31 (-2^31 itself is INT32_MIN too) */
    }
    truncated = (int32_t)magnitude; /* in range: exact truncation */
    /* magnitude >= 2^23 is integral; below, (float)truncated and the difference are exact */
    if (magnitude - (float)truncated >= 0.5f) {
        truncated += 1;
    }
    return v < 0.0f ? -truncated : truncated;
}

void ec_quantize_f32_s8(const ec_quantize_params *p, const float *input, int8_t *output)
{
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        const int32_t rounded = ec_round_f32_to_int32(input[i] / p->scale); /* float32 division */
        /* + zero_point with int32 wrap-around (only reachable for the INT32_MIN case) */
        const int32_t value = (int32_t)((uint32_t)rounded + (uint32_t)p->zero_point);
        output[i] = (int8_t)ec_clamp(value, INT8_MIN, INT8_MAX);
    }
}

void ec_requantize_s8(const ec_requantize_params *p, const int8_t *input, int8_t *output)
{
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        const int32_t value = ec_multiply_by_quantized_multiplier(input[i] - p->input_zero_point, p->multiplier, (int)p->shift)
                              + p->output_zero_point;
        output[i] = (int8_t)ec_clamp(value, INT8_MIN, INT8_MAX);
    }
}

void ec_dequantize_s8_f32(const ec_dequantize_params *p, const int8_t *input, float *output)
{
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        output[i] = p->scale * (float)(input[i] - p->zero_point);
    }
}
