/* edgecomp C runtime: INT8 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (see ec_conv.h).
 *
 * The loops are the TFLite reference kernels' loops, in their order, so the int32 accumulation
 * (and any wrap-around) is the same. On a Cortex-M the inner loops compile to one MLA per tap;
 * for speed, replace a kernel's body by the CMSIS-NN function named in ec_conv.h (SMLAD-based,
 * im2col, 4 output channels at a time) with the same parameters.
 */
#include "ec_conv.h"

/* Flat index of element (b, y, x, c) of a row-major [.., height, width, depth] tensor. */
static int32_t ec_offset4(int32_t height, int32_t width, int32_t depth,
                          int32_t b, int32_t y, int32_t x, int32_t c)
{
    return ((b * height + y) * width + x) * depth + c;
}

/* True when tap (y, x) lies inside a height x width image (taps in the zero padding contribute nothing). */
static int ec_inside(int32_t y, int32_t x, int32_t height, int32_t width)
{
    return x >= 0 && x < width && y >= 0 && y < height;
}

/* Output channel c of one accumulator: bias[c] added (when there is a bias), channel c's
 * MultiplyByQuantizedMultiplier (double rounding), output offset, fused activation clamp. */
static int8_t ec_output_channel_s8(int32_t acc, const int32_t *bias, int32_t c, const int32_t *multiplier,
                                   const int32_t *shift, int32_t output_offset, int32_t activation_min,
                                   int32_t activation_max)
{
    if (bias != NULL) {
        acc += bias[c];
    }
    acc = ec_multiply_by_quantized_multiplier(acc, multiplier[c], (int)shift[c]);
    acc += output_offset;
    return (int8_t)ec_clamp(acc, activation_min, activation_max);
}

/* ------------------------------------------------------------------------------- CONV_2D */

void ec_conv_s8(const ec_conv_params *p, const int8_t *input, const int8_t *filter,
                const int32_t *bias, int8_t *output)
{
    /* Grouped convolution: output channel c reads input channels
     * [group * filter_input_depth, (group + 1) * filter_input_depth) with
     * group = c / (output_depth / groups). groups == 1 for an ordinary convolution. */
    const int32_t groups = p->input_depth / p->filter_input_depth;
    const int32_t filters_per_group = p->output_depth / groups;
    int32_t batch, out_y, out_x, out_c, filter_y, filter_x, in_c;

    for (batch = 0; batch < p->batches; ++batch) {
        for (out_y = 0; out_y < p->output_height; ++out_y) {
            const int32_t in_y_origin = out_y * p->stride_height - p->pad_height;
            for (out_x = 0; out_x < p->output_width; ++out_x) {
                const int32_t in_x_origin = out_x * p->stride_width - p->pad_width;
                for (out_c = 0; out_c < p->output_depth; ++out_c) {
                    const int32_t group = out_c / filters_per_group;
                    int32_t acc = 0;
                    for (filter_y = 0; filter_y < p->filter_height; ++filter_y) {
                        const int32_t in_y = in_y_origin + p->dilation_height * filter_y;
                        for (filter_x = 0; filter_x < p->filter_width; ++filter_x) {
                            const int32_t in_x = in_x_origin + p->dilation_width * filter_x;
                            const int8_t *in_row;
                            const int8_t *filter_row;
                            if (!ec_inside(in_y, in_x, p->input_height, p->input_width)) {
                                continue;
                            }
                            in_row = input + ec_offset4(p->input_height, p->input_width, p->input_depth,
                                                        batch, in_y, in_x, group * p->filter_input_depth);
                            filter_row = filter + ec_offset4(p->filter_height, p->filter_width, p->filter_input_depth,
                                                             out_c, filter_y, filter_x, 0);
                            for (in_c = 0; in_c < p->filter_input_depth; ++in_c) {
                                acc += (int32_t)filter_row[in_c] * ((int32_t)in_row[in_c] + p->input_offset);
                            }
                        }
                    }
                    output[ec_offset4(p->output_height, p->output_width, p->output_depth, batch, out_y, out_x, out_c)] =
                        ec_output_channel_s8(acc, bias, out_c, p->output_multiplier, p->output_shift,
                                             p->output_offset, p->activation_min, p->activation_max);
                }
            }
        }
    }
}

void ec_conv_s8_nobias(const ec_conv_params *p, const int8_t *input, const int8_t *filter,
                       int8_t *output)
{
    ec_conv_s8(p, input, filter, NULL, output);
}

/* ------------------------------------------------------------------------------- DEPTHWISE_CONV_2D */

void ec_depthwise_conv_s8(const ec_depthwise_conv_params *p, const int8_t *input,
                          const int8_t *filter, const int32_t *bias, int8_t *output)
{
    int32_t batch, out_y, out_x, in_c, m, filter_y, filter_x;

    for (batch = 0; batch < p->batches; ++batch) {
        for (out_y = 0; out_y < p->output_height; ++out_y) {
            const int32_t in_y_origin = out_y * p->stride_height - p->pad_height;
            for (out_x = 0; out_x < p->output_width; ++out_x) {
                const int32_t in_x_origin = out_x * p->stride_width - p->pad_width;
                for (in_c = 0; in_c < p->input_depth; ++in_c) {
                    for (m = 0; m < p->depth_multiplier; ++m) {
                        /* Output channel in_c * depth_multiplier + m reads input channel in_c only. */
                        const int32_t out_c = m + in_c * p->depth_multiplier;
                        int32_t acc = 0;
                        for (filter_y = 0; filter_y < p->filter_height; ++filter_y) {
                            const int32_t in_y = in_y_origin + p->dilation_height * filter_y;
                            for (filter_x = 0; filter_x < p->filter_width; ++filter_x) {
                                const int32_t in_x = in_x_origin + p->dilation_width * filter_x;
                                int32_t input_val;
                                int32_t filter_val;
                                if (!ec_inside(in_y, in_x, p->input_height, p->input_width)) {
                                    continue;
                                }
                                input_val = input[ec_offset4(p->input_height, p->input_width, p->input_depth,
                                                             batch, in_y, in_x, in_c)];
                                filter_val = filter[ec_offset4(p->filter_height, p->filter_width, p->output_depth,
                                                               0, filter_y, filter_x, out_c)];
                                acc += filter_val * (input_val + p->input_offset);
                            }
                        }
                        output[ec_offset4(p->output_height, p->output_width, p->output_depth, batch, out_y, out_x, out_c)] =
                            ec_output_channel_s8(acc, bias, out_c, p->output_multiplier, p->output_shift,
                                                 p->output_offset, p->activation_min, p->activation_max);
                    }
                }
            }
        }
    }
}

void ec_depthwise_conv_s8_nobias(const ec_depthwise_conv_params *p, const int8_t *input,
                                 const int8_t *filter, int8_t *output)
{
    ec_depthwise_conv_s8(p, input, filter, NULL, output);
}

/* ------------------------------------------------------------------------------- FULLY_CONNECTED */

/* Number of significant bits of v (0 for 0). */
static int32_t ec_bit_length_u64(uint64_t v)
{
    int32_t bits = 0;
    while (v != 0) {
        ++bits;
        v >>= 1;
    }
    return bits;
}

int32_t ec_multiply_by_double_scale(int32_t x, int64_t mantissa, int32_t exponent)
{
    /* The C++ computes round((double)x * scale): x converts exactly, the product is rounded to a
     * 53-bit significand (ties to even), std::round rounds half away from zero. Both roundings
     * are symmetric, so work on |x| and restore the sign at the end. */
    const uint32_t a = x < 0 ? (uint32_t)0 - (uint32_t)x : (uint32_t)x; /* |x| <= 2^31 */
    const uint64_t m = (uint64_t)mantissa;                               /* < 2^53 */
    uint64_t low, high, p_lo, p_hi, q, remainder, half, magnitude;
    int32_t bits, drop, e;

    if (a == 0 || m == 0) {
        return 0;
    }
    /* 1. Exact product p = a * m < 2^84 as (p_hi, p_lo): two 32x32->64 multiplies (UMULL). */
    low = (uint64_t)a * (uint32_t)(m & 0xFFFFFFFFu); /* < 2^64 */
    high = (uint64_t)a * (uint32_t)(m >> 32);        /* < 2^52 */
    p_lo = low + (high << 32);
    p_hi = (high >> 32) + (p_lo < low ? 1u : 0u);

    /* 2. Round p to 53 significant bits, ties to even: q * 2^drop (q <= 2^53). */
    bits = p_hi != 0 ? 64 + ec_bit_length_u64(p_hi) : ec_bit_length_u64(p_lo);
    drop = bits > 53 ? bits - 53 : 0; /* <= 32, so the dropped bits all lie in p_lo */
    if (drop == 0) {
        q = p_lo;
    } else {
        q = (p_lo >> drop) | (p_hi << (64 - drop));
        remainder = p_lo & ((((uint64_t)1) << drop) - 1u);
        half = ((uint64_t)1) << (drop - 1);
        if (remainder > half || (remainder == half && (q & 1u) != 0)) {
            ++q;
        }
    }

    /* 3. |x| * scale = q * 2^e; round to an integer, ties away from zero. */
    e = exponent + drop;
    if (e >= 0) {
        magnitude = (e >= 31 || q > ((uint64_t)1 << (31 - e))) ? ((uint64_t)1 << 31) : (q << e);
    } else if (-e >= 55) {
        magnitude = 0; /* q < 2^54 <= 2^(-e-1): below one half */
    } else {
        magnitude = (q + (((uint64_t)1) << (-e - 1))) >> -e;
    }
    /* Saturate to int32 (-2^31 is representable, +2^31 is not). */
    if (x < 0) {
        return magnitude >= ((uint64_t)1 << 31) ? INT32_MIN : -(int32_t)magnitude;
    }
    return magnitude >= ((uint64_t)1 << 31) ? INT32_MAX : (int32_t)magnitude;
}

void ec_fully_connected_s8(const ec_fully_connected_params *p, const int8_t *input,
                           const int8_t *filter, const int32_t *bias, int8_t *output)
{
    int32_t b, out_c, d;

    for (b = 0; b < p->batches; ++b) {
        const int8_t *in_row = input + b * p->input_depth;
        for (out_c = 0; out_c < p->output_depth; ++out_c) {
            const int8_t *filter_row = filter + out_c * p->input_depth;
            const int32_t channel = p->per_channel ? out_c : 0;
            int32_t acc = 0;
            int64_t scaled;
            for (d = 0; d < p->input_depth; ++d) {
                acc += ((int32_t)filter_row[d] + p->filter_offset) * ((int32_t)in_row[d] + p->input_offset);
            }
            if (bias != NULL) {
                acc += bias[out_c];
            }
            /* round(acc * scale) + output offset, clamped; the sum in 64 bits so that a
             * saturated product cannot overflow (it clamps as the C++ int32 sum would). */
            scaled = (int64_t)ec_multiply_by_double_scale(acc, p->scale_mantissa[channel], p->scale_exponent[channel])
                     + p->output_offset;
            scaled = scaled < p->activation_min ? p->activation_min : scaled;
            scaled = scaled > p->activation_max ? p->activation_max : scaled;
            output[b * p->output_depth + out_c] = (int8_t)scaled;
        }
    }
}

void ec_fully_connected_s8_nobias(const ec_fully_connected_params *p, const int8_t *input,
                                  const int8_t *filter, int8_t *output)
{
    ec_fully_connected_s8(p, input, filter, NULL, output);
}
