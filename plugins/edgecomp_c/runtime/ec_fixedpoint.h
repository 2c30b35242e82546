/* edgecomp C runtime: fixed-point arithmetic of the TFLite reference int8 kernels.
 *
 * Sources (semantics, not code): gemmlowp fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul,
 * RoundingDivideByPOT) and tensorflow/lite/kernels/internal/common.h (MultiplyByQuantizedMultiplier,
 * the double-rounding variant used when TFLITE_SINGLE_ROUNDING is not defined).
 *
 * Integer-only; assumes two's complement int32 and arithmetic right shift of negative values
 * (GCC and Clang on Arm and x86 guarantee both). Overflowing left shifts are computed on uint32_t
 * so they wrap instead of being undefined.
 */
#ifndef EC_FIXEDPOINT_H
#define EC_FIXEDPOINT_H

#include <stdint.h>

/* (a * b * 2) / 2^32 rounded to nearest (ties away from zero), saturating the one overflow case. */
static inline int32_t ec_sat_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero; 0 <= exponent <= 31. */
static inline int32_t ec_rounding_divide_by_pot(int32_t x, int exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * 2^left_shift with the wrap-around of int32 (the C++ kernels' x * (1 << left_shift)). */
static inline int32_t ec_shift_left(int32_t x, int left_shift)
{
    return (int32_t)((uint32_t)x << left_shift);
}

/* x * multiplier * 2^(shift - 31): MultiplyByQuantizedMultiplier (shift > 0: left shift first). */
static inline int32_t ec_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift)
{
    const int left_shift = shift > 0 ? shift : 0;
    const int right_shift = shift > 0 ? 0 : -shift;
    return ec_rounding_divide_by_pot(
        ec_sat_rounding_doubling_high_mul(ec_shift_left(x, left_shift), multiplier), right_shift);
}

/* MultiplyByQuantizedMultiplierSmallerThanOneExp: shift <= 0. */
static inline int32_t ec_multiply_by_quantized_multiplier_smaller_than_one(int32_t x, int32_t multiplier, int shift)
{
    return ec_rounding_divide_by_pot(ec_sat_rounding_doubling_high_mul(x, multiplier), -shift);
}

/* MultiplyByQuantizedMultiplierGreaterThanOne: shift >= 0. */
static inline int32_t ec_multiply_by_quantized_multiplier_greater_than_one(int32_t x, int32_t multiplier, int shift)
{
    return ec_sat_rounding_doubling_high_mul(ec_shift_left(x, shift), multiplier);
}

static inline int32_t ec_clamp(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

#endif /* EC_FIXEDPOINT_H */
