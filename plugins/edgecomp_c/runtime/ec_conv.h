/* edgecomp C runtime: INT8 convolution, depthwise convolution and fully connected kernels.
 *
 * Bit-exact with the LiteRT reference kernels (OpResolverType.BUILTIN_REF, LiteRT 2.3):
 *
 *   ec_conv_s8             tensorflow/lite/kernels/internal/reference/integer_ops/conv.h
 *                          ConvPerChannel (grouped convolution included)
 *   ec_depthwise_conv_s8   .../reference/integer_ops/depthwise_conv.h DepthwiseConvPerChannel
 *   ec_fully_connected_s8  .../reference/integer_ops/fully_connected.h FullyConnected and
 *                          FullyConnectedPerChannel, the overloads taking float scales (the ones
 *                          fully_connected.cc calls for kReference): requantization by
 *                          round(double(acc) * double scale), emulated here in integers.
 *
 * Tensors are row-major: activations NHWC, CONV_2D filters OHWI, DEPTHWISE_CONV_2D filters 1HWO,
 * FULLY_CONNECTED filters [output_depth, input_depth]. The parameter structs are computed at
 * compile time by edgecomp (plugins/edgecomp_c/ops/conv.py) the way the TFLite Prepare functions
 * compute them. Each kernel has a *_nobias variant for operators without a bias tensor (the
 * generated code passes only the tensors the operator has); the main kernels also accept
 * bias == NULL.
 *
 * Integer-only C99: no heap, no floating point. Accumulators are int32_t as in TFLite; they cannot
 * overflow while filter_height * filter_width * filter_input_depth (or input_depth for FC) stays
 * below 2^16 (|filter * (input - zero_point)| <= 127 * 255).
 */
#ifndef EC_CONV_H
#define EC_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "ec_fixedpoint.h"

/* CONV_2D parameters (ConvParams plus the shapes and per-channel requantization). */
typedef struct {
    int32_t batches;             /* N of input and output */
    int32_t input_height;        /* input [N, input_height, input_width, input_depth] */
    int32_t input_width;
    int32_t input_depth;
    int32_t filter_height;       /* filter [output_depth, filter_height, filter_width, filter_input_depth] */
    int32_t filter_width;
    int32_t filter_input_depth;  /* input_depth / groups (== input_depth unless grouped) */
    int32_t output_height;       /* output [N, output_height, output_width, output_depth] */
    int32_t output_width;
    int32_t output_depth;
    int32_t stride_height;
    int32_t stride_width;
    int32_t dilation_height;
    int32_t dilation_width;
    int32_t pad_height;          /* padding before the first row/column (ComputePaddingHeightWidth) */
    int32_t pad_width;
    int32_t input_offset;        /* -input zero point */
    int32_t output_offset;       /* output zero point */
    int32_t activation_min;      /* fused activation clamp, in the output's quantized domain */
    int32_t activation_max;
    const int32_t *output_multiplier; /* [output_depth] QuantizeMultiplier(in_scale * filter_scale[c] / out_scale) */
    const int32_t *output_shift;      /* [output_depth] its exponent (> 0: left shift) */
} ec_conv_params;

/* DEPTHWISE_CONV_2D parameters (DepthwiseParams plus the shapes and per-channel requantization). */
typedef struct {
    int32_t batches;
    int32_t input_height;        /* input [N, input_height, input_width, input_depth] */
    int32_t input_width;
    int32_t input_depth;
    int32_t filter_height;       /* filter [1, filter_height, filter_width, output_depth] */
    int32_t filter_width;
    int32_t depth_multiplier;    /* output_depth / input_depth (from the shapes, as TFLite does) */
    int32_t output_height;       /* output [N, output_height, output_width, output_depth] */
    int32_t output_width;
    int32_t output_depth;        /* input_depth * depth_multiplier */
    int32_t stride_height;
    int32_t stride_width;
    int32_t dilation_height;
    int32_t dilation_width;
    int32_t pad_height;
    int32_t pad_width;
    int32_t input_offset;        /* -input zero point */
    int32_t output_offset;       /* output zero point */
    int32_t activation_min;
    int32_t activation_max;
    const int32_t *output_multiplier; /* [output_depth] */
    const int32_t *output_shift;      /* [output_depth] */
} ec_depthwise_conv_params;

/* FULLY_CONNECTED parameters. The effective scale in_scale * filter_scale / out_scale, a double in
 * TFLite, is stored exactly as scale_mantissa * 2^scale_exponent with scale_mantissa in
 * [2^52, 2^53) (0 for a zero scale). */
typedef struct {
    int32_t batches;             /* rows: output element count / output_depth */
    int32_t input_depth;         /* accumulation depth: filter [output_depth, input_depth] */
    int32_t output_depth;
    int32_t input_offset;        /* -input zero point */
    int32_t filter_offset;       /* -filter zero point (per-tensor filters; 0 when per-channel) */
    int32_t output_offset;       /* output zero point */
    int32_t activation_min;
    int32_t activation_max;
    int32_t per_channel;         /* 1: the scale arrays have output_depth entries; 0: one entry */
    const int64_t *scale_mantissa;
    const int32_t *scale_exponent;
} ec_fully_connected_params;

/* round(x * mantissa * 2^exponent) exactly as C++ computes std::round((double)x * scale) for the
 * double scale = mantissa * 2^exponent (mantissa in [2^52, 2^53) or 0): the product rounded to
 * 53 significant bits (ties to even), then to an integer (ties away from zero). Integer-only.
 * Results beyond int32 saturate (the C++ conversion would be undefined there). */
int32_t ec_multiply_by_double_scale(int32_t x, int64_t mantissa, int32_t exponent);

/* CONV_2D, int8 activations, int8 filter (per-channel or broadcast per-tensor scales), int32 bias
 * (or NULL). input [N,H,W,Cin], filter [Cout,KH,KW,Cin/groups], bias [Cout], output [N,OH,OW,Cout].
 * CMSIS-NN: arm_convolve_s8 (arm_convolve_wrapper_s8) computes the same arithmetic with the
 * same offsets, multipliers, shifts and clamp on Cortex-M (groups == 1). */
void ec_conv_s8(const ec_conv_params *p, const int8_t *input, const int8_t *filter,
                const int32_t *bias, int8_t *output);
void ec_conv_s8_nobias(const ec_conv_params *p, const int8_t *input, const int8_t *filter,
                       int8_t *output);

/* DEPTHWISE_CONV_2D, int8. input [N,H,W,C], filter [1,KH,KW,C*M], bias [C*M] (or NULL),
 * output [N,OH,OW,C*M]. CMSIS-NN: arm_depthwise_conv_s8 (arm_depthwise_conv_wrapper_s8). */
void ec_depthwise_conv_s8(const ec_depthwise_conv_params *p, const int8_t *input,
                          const int8_t *filter, const int32_t *bias, int8_t *output);
void ec_depthwise_conv_s8_nobias(const ec_depthwise_conv_params *p, const int8_t *input,
                                 const int8_t *filter, int8_t *output);

/* FULLY_CONNECTED, int8. input [batches * input_depth], filter [output_depth, input_depth],
 * bias [output_depth] (or NULL), output [batches, output_depth]. CMSIS-NN:
 * arm_fully_connected_s8 (arm_fully_connected_per_channel_s8). It requantizes with
 * QuantizeMultiplier's fixed-point multiplier instead, as TFLite Micro and LiteRT's optimized
 * kernel do, which is one LSB off the reference kernel on a few outputs (0.02-0.6% of the MLPerf
 * Tiny AD model's FULLY_CONNECTED outputs). */
void ec_fully_connected_s8(const ec_fully_connected_params *p, const int8_t *input,
                           const int8_t *filter, const int32_t *bias, int8_t *output);
void ec_fully_connected_s8_nobias(const ec_fully_connected_params *p, const int8_t *input,
                                  const int8_t *filter, int8_t *output);

#endif /* EC_CONV_H */
