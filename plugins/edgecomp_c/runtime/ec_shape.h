/* edgecomp C runtime: data-movement and boundary kernels (TFLite RESHAPE, PAD, PADV2,
 * CONCATENATION, QUANTIZE, DEQUANTIZE).
 *
 * Semantics (not code) of the TFLite reference kernels as LiteRT 2.x runs them with
 * OpResolverType.BUILTIN_REF:
 *   - tensorflow/lite/kernels/reshape.cc (a byte copy);
 *   - tensorflow/lite/kernels/pad.cc (EvalInt: the pad value) and kernels/internal/reference/pad.h;
 *   - tensorflow/lite/kernels/concatenation.cc (int8: equal parameters, a copy) and
 *     kernels/internal/reference/concatenation.h;
 *   - tensorflow/lite/kernels/quantize.cc with kernels/internal/reference/quantize.h
 *     (AffineQuantize) and reference/requantize.h (Requantize);
 *   - tensorflow/lite/kernels/dequantize.cc with kernels/internal/reference/integer_ops/dequantize.h.
 *
 * Integer-only except ec_quantize_f32_s8 and ec_dequantize_s8_f32 (float32 arithmetic, as TFLite's
 * own QUANTIZE/DEQUANTIZE; no libm). No heap. Parameter structs are computed at compile time by
 * plugins/edgecomp_c/ops/shape.py.
 */
#ifndef EC_SHAPE_H
#define EC_SHAPE_H

#include <stdint.h>

#include "ec_fixedpoint.h"

/* RESHAPE (and any other byte copy): `bytes` bytes from input to output. Any element type.
 * When the emitter places input and output at the same address the copy is skipped.
 * CMSIS-NN: none needed (memcpy / arm_memcpy_s8). */
typedef struct {
    int32_t bytes;
} ec_reshape_params;

void ec_reshape(const ec_reshape_params *p, const void *input, void *output);

/* PAD / PADV2, int8, up to EC_PAD_MAX_DIMS dimensions (TFLite's PadKernelMaxDimensionCount).
 * Shapes are right-aligned to 5 dimensions (leading 1s), as reference Pad extends them:
 *   input_shape[5]: the input's dimensions; before[5], after[5]: padding per dimension;
 *   pad_value: the output's zero point (PAD) or the int8 constant (PADV2).
 * CMSIS-NN: arm_pad_s8 (recent versions: 4-D, same semantics). */
#define EC_PAD_MAX_DIMS 5

typedef struct {
    const int32_t *input_shape;
    const int32_t *before;
    const int32_t *after;
    int32_t pad_value;
} ec_pad_params;

void ec_pad_s8(const ec_pad_params *p, const int8_t *input, int8_t *output);

/* CONCATENATION, int8 (inputs and output share one scale and zero point: TFLite's Prepare
 * requires it, so the kernel copies bytes). With outer_count = product of the dimensions before
 * the axis and inner = product of those after it, input i contributes copy_sizes[i] =
 * dims_i[axis] * inner bytes per outer step:
 *   output = for each outer step o, for each input i: input_i[o * copy_sizes[i] ...+ copy_sizes[i]].
 * inputs: the input_count input pointers (an emitted const pointer array).
 * CMSIS-NN: arm_concatenation_s8_x / _y / _z / _w (one call per input, axis-specific). */
typedef struct {
    const int8_t *const *inputs;
    const int32_t *copy_sizes;
    int32_t input_count;
    int32_t outer_count;
} ec_concat_params;

void ec_concat_s8(const ec_concat_params *p, int8_t *output);

/* QUANTIZE float32 -> int8 (reference AffineQuantize): q = clamp((int32)round(x / scale) +
 * zero_point, -128, 127), the division and round-half-away-from-zero in float32.
 * Out-of-int32-range quotients and NaN follow LiteRT on x86-64 (cvttss2si gives INT32_MIN, then
 * a wrapping add of the zero point), so even +inf is bit-exact with the reference there.
 * CMSIS-NN: none (a float boundary; TFLite Micro's quantize.cc is the same arithmetic). */
typedef struct {
    int32_t size;
    float scale;
    int32_t zero_point;
} ec_quantize_params;

void ec_quantize_f32_s8(const ec_quantize_params *p, const float *input, int8_t *output);

/* QUANTIZE int8 -> int8 (reference Requantize): q = clamp(MultiplyByQuantizedMultiplier(x -
 * input_zero_point, multiplier, shift) + output_zero_point, -128, 127), with (multiplier, shift) =
 * QuantizeMultiplier(input_scale / output_scale).
 * CMSIS-NN: none as such (arm_nn_requantize per element). */
typedef struct {
    int32_t size;
    int32_t multiplier;
    int32_t shift;
    int32_t input_zero_point;
    int32_t output_zero_point;
} ec_requantize_params;

void ec_requantize_s8(const ec_requantize_params *p, const int8_t *input, int8_t *output);

/* DEQUANTIZE int8 -> float32 (reference_integer_ops::Dequantize): y = scale * (q - zero_point).
 * TFLite multiplies in double and rounds to float; the double product of a float32 scale and an
 * integer of at most 9 bits is exact, so one correctly rounded float32 multiplication gives the
 * same bits (no double arithmetic needed on a single-precision FPU).
 * CMSIS-NN: none (a float boundary). */
typedef struct {
    int32_t size;
    float scale;
    int32_t zero_point;
} ec_dequantize_params;

void ec_dequantize_s8_f32(const ec_dequantize_params *p, const int8_t *input, float *output);

#endif /* EC_SHAPE_H */
