/* edgecomp C runtime: element-wise INT8 kernels: ADD, SUB, MUL (numpy broadcasting) and the
 * 256-entry lookup table of LOGISTIC and TANH.
 *
 * Bit-exact with LiteRT's reference kernels (OpResolverType.BUILTIN_REF):
 *   ADD  tensorflow/lite/kernels/add.cc, reference_integer_ops::Add / BroadcastAdd6DSlow
 *        (kernels/internal/reference/integer_ops/add.h, AddFunc);
 *   SUB  tensorflow/lite/kernels/sub.cc, reference_ops::Sub / BroadcastQuantSubSlow
 *        (kernels/internal/reference/sub.h, SubElementwise);
 *   MUL  tensorflow/lite/kernels/mul.cc, reference_integer_ops::Mul / BroadcastMul6DSlow
 *        (kernels/internal/reference/integer_ops/mul.h, MulElementwise);
 *   LOGISTIC, TANH  tensorflow/lite/kernels/activations.cc: for int8 the reference kernel is a
 *        table lookup (LUTPopulate<int8_t> in Prepare, LookupTable in Eval); the table is
 *        computed by edgecomp at compile time (plugins/edgecomp_c/ops/elementwise.py).
 *
 * All parameters (offsets, multipliers, shifts, activation range, broadcast strides) are computed
 * at compile time exactly as the TFLite Prepare functions compute them. Integer-only, no heap.
 *
 * Cortex-M cost per output element: ADD/SUB three SaturatingRoundingDoublingHighMul (32x32->64-bit
 * products: SMULL on Cortex-M3/M4/M7, a library call on Cortex-M0), MUL one; LOGISTIC/TANH one
 * byte load. The parameter structs and tables are const (flash).
 *
 * Broadcasting: the output is walked in row-major order. The compiler merges adjacent axes that
 * broadcast alike, so the usual cases are short: equal shapes (dims == 0, one flat loop), a
 * per-channel operand ([rows, C], strides {C, 1} and {0, 1}), a scalar operand ([n], strides
 * {1} and {0}).
 */
#ifndef EC_ELEMENTWISE_H
#define EC_ELEMENTWISE_H

#include <stdint.h>

/* Most axes a broadcast walk handles (TFLite's BroadcastBinaryOpSimple: 6). */
#define EC_BROADCAST_MAX_DIMS 6

/* ADD and SUB (same parameters, TFLite's ArithmeticParams of the 8-bit general path):
 *
 *   a = (x1 + input1_offset) << left_shift,  b = (x2 + input2_offset) << left_shift
 *   a' = MultiplyByQuantizedMultiplierSmallerThanOneExp(a, input1_multiplier, input1_shift)
 *   b' = same with input2_multiplier, input2_shift
 *   y  = clamp(MultiplyByQuantizedMultiplierSmallerThanOneExp(a' +/- b', output_multiplier,
 *              output_shift) + output_offset, activation_min, activation_max)
 *
 * Shifts are <= 0 (right shifts); left_shift is 20 for int8. */
typedef struct {
    int32_t input1_offset;     /* -input1 zero point */
    int32_t input2_offset;     /* -input2 zero point */
    int32_t output_offset;     /* output zero point */
    int32_t left_shift;        /* 20 */
    int32_t input1_multiplier; /* Q31, from input1_scale / (2 * max input scale) */
    int32_t input1_shift;      /* <= 0 */
    int32_t input2_multiplier;
    int32_t input2_shift;
    int32_t output_multiplier; /* Q31, from 2 * max input scale / (2^left_shift * output_scale) */
    int32_t output_shift;      /* <= 0 */
    int32_t activation_min;    /* fused activation clamp, in the output's quantized domain */
    int32_t activation_max;
    int32_t size;              /* output elements */
    int32_t dims;              /* 0: equal shapes (flat loop); else 1..EC_BROADCAST_MAX_DIMS */
    const int32_t *shape;      /* [dims] output extents (axes merged where possible) */
    const int32_t *input1_strides; /* [dims] element strides of input1, 0 on broadcast axes */
    const int32_t *input2_strides; /* [dims] element strides of input2, 0 on broadcast axes */
} ec_add_params;

/* SUB uses ADD's parameters. */
typedef ec_add_params ec_sub_params;

/* MUL: y = clamp(MultiplyByQuantizedMultiplier((x1 + input1_offset) * (x2 + input2_offset),
 *                output_multiplier, output_shift) + output_offset, activation_min, activation_max)
 * with output_multiplier/output_shift = QuantizeMultiplier(s1 * s2 / s_out) (shift may be > 0). */
typedef struct {
    int32_t input1_offset;
    int32_t input2_offset;
    int32_t output_offset;
    int32_t output_multiplier;
    int32_t output_shift;      /* > 0: left shift */
    int32_t activation_min;
    int32_t activation_max;
    int32_t size;
    int32_t dims;
    const int32_t *shape;
    const int32_t *input1_strides;
    const int32_t *input2_strides;
} ec_mul_params;

/* LOGISTIC / TANH (int8): y = table[(uint8_t)x]. */
typedef struct {
    int32_t size;              /* elements */
    const int8_t *table;       /* [256], indexed by the input's bit pattern as uint8_t */
} ec_lut_params;

/* ADD: output[i] = input1[i] + input2[i] (broadcast), int8, any shapes described by p.
 * CMSIS-NN: arm_elementwise_add_s8 takes the same parameters (same-shape operands only: one call
 * per row for a broadcast operand of full row length). */
void ec_add_s8(const ec_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);

/* SUB: output = input1 - input2 (broadcast). CMSIS-NN has no int8 subtraction:
 * arm_elementwise_add_s8 with input2's multiplier negated is close but not bit-exact
 * (SaturatingRoundingDoublingHighMul rounds ties upward, so negation changes tie results). */
void ec_sub_s8(const ec_sub_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);

/* MUL: output = input1 * input2 (broadcast). CMSIS-NN: arm_elementwise_mul_s8 (same-shape). */
void ec_mul_s8(const ec_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);

/* LOGISTIC and TANH: a 256-entry table lookup. No CMSIS-NN counterpart (a byte lookup loop). */
void ec_lut_s8(const ec_lut_params *p, const int8_t *input, int8_t *output);

#endif /* EC_ELEMENTWISE_H */
