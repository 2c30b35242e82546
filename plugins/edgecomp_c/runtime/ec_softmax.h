/* edgecomp C runtime: SOFTMAX, int8 input -> int8 output (scale 1/256, zero point -128).
 *
 * Bit-exact with LiteRT's reference kernel (OpResolverType.BUILTIN_REF): SoftmaxPrepare/SoftmaxEval
 * <kReference> in tensorflow/lite/kernels/activations.cc run reference_ops::Softmax
 * (kernels/internal/reference/softmax.h), gemmlowp fixed point throughout. (The optimized
 * kernels, which BUILTIN_REF does not use, compute a float lookup table instead.)
 *
 * Per row of `depth` elements (the last axis):
 *   max  = the row's largest input
 *   d    = x - max (<= 0); elements with d < diff_min contribute nothing and output -128
 *   e    = exp_on_negative_values(Q5.26 value MultiplyByQuantizedMultiplierGreaterThanOne(
 *              d, input_multiplier, input_left_shift)), Q0.31
 *   sum  = sum of Rescale<12>(e) (Q12.19)
 *   r    = GetReciprocal(sum): 1 / sum as a Q0.31 value times 2^-num_bits_over_unit
 *   y    = clamp(RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(r, e),
 *                num_bits_over_unit + 23) - 128, -128, 127)
 * The compiler computes input_multiplier / input_left_shift = QuantizeMultiplierGreaterThanOne(
 * beta * input_scale * 2^26) and diff_min = -CalculateInputRadius(5, input_left_shift)
 * (tensorflow/lite/kernels/internal/quantization_util.cc, PreprocessSoftmaxScaling).
 *
 * Integer-only, no heap. CMSIS-NN: arm_softmax_s8(input, rows, depth, input_multiplier,
 * input_left_shift, diff_min, output) takes the same parameters (its exp/reciprocal are its own
 * implementation: check bit-exactness on the target before swapping it in).
 */
#ifndef EC_SOFTMAX_H
#define EC_SOFTMAX_H

#include <stdint.h>

typedef struct {
    int32_t input_multiplier; /* Q31 multiplier of beta * input_scale * 2^26 */
    int32_t input_left_shift; /* >= 0 */
    int32_t diff_min;         /* <= 0: the smallest x - max that contributes */
    int32_t rows;             /* product of all axes but the last */
    int32_t depth;            /* the last axis (softmax axis) */
} ec_softmax_params;

/* input, output: int8 [rows, depth], row-major.
 *
 * A row whose exponentials sum to 512 or more (possible only when depth >= 512, each term being at
 * most 1) makes TFLite's reference kernel abort: its final shift num_bits_over_unit + 23 exceeds 31
 * (TFLITE_CHECK). Here every output of such a row is -128, the rounded value of probabilities
 * below 1/512. The sum saturates instead of overflowing for rows longer than 4096. */
void ec_softmax_s8(const ec_softmax_params *p, const int8_t *input, int8_t *output);

#endif /* EC_SOFTMAX_H */
