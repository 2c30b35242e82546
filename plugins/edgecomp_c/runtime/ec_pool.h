/* edgecomp C runtime: INT8 pooling and mean kernels (TFLite MAX_POOL_2D, AVERAGE_POOL_2D, MEAN).
 *
 * Semantics (not code) of the TFLite reference kernels as LiteRT 2.x runs them with
 * OpResolverType.BUILTIN_REF:
 *   - tensorflow/lite/kernels/internal/reference/integer_ops/pooling.h (MaxPool, AveragePool),
 *     parameters from tensorflow/lite/kernels/pooling.cc (GenericPrepare, ComputePaddingHeightWidth);
 *   - tensorflow/lite/kernels/internal/reference/reduce.h (QuantizedMeanOrSum, compute_sum=false),
 *     parameters from tensorflow/lite/kernels/reduce.cc (PrepareMeanOrSum, EvalQuantizedMean).
 *
 * Activations are NHWC (pools) or any row-major layout (mean), int8. Integer-only, no heap.
 * The parameter structs are computed at compile time by plugins/edgecomp_c/ops/pool.py.
 */
#ifndef EC_POOL_H
#define EC_POOL_H

#include <stdint.h>

#include "ec_fixedpoint.h"

/* MAX_POOL_2D / AVERAGE_POOL_2D parameters (TFLite PoolParams). Input [batches, input_height,
 * input_width, channels], output [batches, output_height, output_width, channels], both int8 with
 * the same scale and zero point (TFLite's pools never requantize). pad_height / pad_width are the
 * top / left padding TFLite computes for SAME (total // 2; the odd extra row/column is at the
 * bottom/right) or 0 for VALID; padded positions never enter a window. activation_min/max: the
 * fused activation's clamp in the output's quantized domain (CalculateActivationRangeQuantized). */
typedef struct {
    int32_t batches;
    int32_t input_height;
    int32_t input_width;
    int32_t channels;
    int32_t output_height;
    int32_t output_width;
    int32_t filter_height;
    int32_t filter_width;
    int32_t stride_height;
    int32_t stride_width;
    int32_t pad_height;
    int32_t pad_width;
    int32_t activation_min;
    int32_t activation_max;
} ec_pool_params;

/* MAX_POOL_2D, int8: the largest raw value of each window (clipped to the image), clamped to the
 * activation range. CMSIS-NN: arm_max_pool_s8 (same window clipping and clamp). */
void ec_max_pool_s8(const ec_pool_params *p, const int8_t *input, int8_t *output);

/* AVERAGE_POOL_2D, int8: sum of the raw values of each window (clipped to the image: padding is
 * not counted) divided by the number of summed values n, rounded half away from zero as
 * (sum > 0 ? sum + n/2 : sum - n/2) / n with C's truncating division, then clamped.
 * CMSIS-NN: arm_avgpool_s8 (same rounding and clamp). */
void ec_avg_pool_s8(const ec_pool_params *p, const int8_t *input, int8_t *output);

/* MEAN parameters. The input's axes are merged, at compile time, into groups of adjacent kept or
 * reduced axes. The kept groups, in order, give the output's row-major order (keep_dims only
 * inserts size-1 axes, which do not change the order).
 *
 *   kept_count, kept_dims[k], kept_strides[k]:        the kept groups and their input strides
 *                                                     (elements); kept_count may be 0 (one output);
 *   reduced_count, reduced_dims[r], reduced_strides[r]: the reduced groups likewise (>= 1 group);
 *   num_elements:  the number of input elements averaged into each output (product of reduced_dims);
 *   input_zero_point, output_zero_point;
 *   multiplier, shift: QuantizeMultiplier(input_scale / output_scale) with 1/num_elements folded in
 *     exactly as reference QuantizedMeanOrSum does it (see ops/pool.py);
 *   Both arrays hold at most EC_MEAN_MAX_GROUPS entries. */
#define EC_MEAN_MAX_GROUPS 8

typedef struct {
    int32_t kept_count;
    const int32_t *kept_dims;
    const int32_t *kept_strides;
    int32_t reduced_count;
    const int32_t *reduced_dims;
    const int32_t *reduced_strides;
    int32_t num_elements;
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t multiplier;
    int32_t shift;
} ec_mean_params;

/* MEAN, int8 (any axes, keep_dims or not): per output, the int32 sum of the raw input values over
 * the reduced axes, minus input_zero_point * num_elements, times the folded multiplier
 * (MultiplyByQuantizedMultiplier), plus output_zero_point, clamped to int8.
 * CMSIS-NN has no exact equivalent (arm_avgpool_s8 neither requantizes nor rounds this way).
 * Not the optimized resolver's 4-D H,W fast path (optimized_integer_ops::Mean), which rounds
 * differently: BUILTIN_REF always runs QuantizedMeanOrSum for int8. */
void ec_mean_s8(const ec_mean_params *p, const int8_t *input, int8_t *output);

#endif /* EC_POOL_H */
