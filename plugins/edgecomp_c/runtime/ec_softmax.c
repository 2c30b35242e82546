/* edgecomp C runtime: SOFTMAX int8 (see ec_softmax.h for the formula and sources).
 *
 * The gemmlowp fixed-point functions below (fixedpoint/fixedpoint.h) are written for the formats
 * the softmax uses, raw int32 values:
 *   Q0.31  FixedPoint<int32_t, 0>: value = raw / 2^31, [-1, 1)
 *   Q2.29  FixedPoint<int32_t, 2>: value = raw / 2^29
 *   Q5.26  FixedPoint<int32_t, 5>: value = raw / 2^26 (the scaled input differences)
 *   Q12.19 FixedPoint<int32_t, 12>: value = raw / 2^19 (the sum of exponentials)
 * Fixed-point products are ec_sat_rounding_doubling_high_mul (the integer bits add up).
 */
#include "ec_softmax.h"

#include "ec_fixedpoint.h"

/* gemmlowp SaturatingRoundingMultiplyByPOT<exponent> for 0 < exponent < 31: x * 2^exponent,
 * saturated to the int32 range. */
static int32_t ec_saturating_shift_left(int32_t x, int exponent)
{
    const int32_t threshold = (int32_t)((1u << (31 - exponent)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return ec_shift_left(x, exponent);
}

/* gemmlowp RoundingHalfSum: (a + b) / 2 rounded to nearest, ties away from zero. */
static int32_t ec_rounding_half_sum(int32_t a, int32_t b)
{
    const int64_t sum = (int64_t)a + (int64_t)b;
    const int64_t sign = sum >= 0 ? 1 : -1;
    return (int32_t)((sum + sign) / 2);
}

/* Number of leading zero bits of a nonzero x (the CLZ instruction on Cortex-M3 and later). */
static int ec_count_leading_zeros(uint32_t x)
{
#if defined(__GNUC__)
    return __builtin_clz(x);
#else
    int zeros = 0;
    while ((x & 0x80000000u) == 0u) {
        x <<= 1;
        ++zeros;
    }
    return zeros;
#endif
}

/* gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl: exp(a) for a in [-1/4, 0),
 * Q0.31 -> Q0.31, a 4th-order Taylor expansion around -1/8. */
static int32_t ec_exp_on_interval_between_negative_one_quarter_and_0_excl(int32_t a)
{
    const int32_t constant_term = 1895147668; /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = a + (1 << 28); /* a + 1/8 */
    const int32_t x2 = ec_sat_rounding_doubling_high_mul(x, x);
    const int32_t x3 = ec_sat_rounding_doubling_high_mul(x2, x);
    const int32_t x4 = ec_sat_rounding_doubling_high_mul(x2, x2);
    const int32_t x4_over_4 = ec_rounding_divide_by_pot(x4, 2);
    const int32_t x4_over_24_plus_x3_over_6_plus_x2_over_2 = ec_rounding_divide_by_pot(
        ec_sat_rounding_doubling_high_mul(x4_over_4 + x3, constant_1_over_3) + x2, 1);
    return constant_term +
           ec_sat_rounding_doubling_high_mul(constant_term, x + x4_over_24_plus_x3_over_6_plus_x2_over_2);
}

/* gemmlowp exp_on_negative_values for a Q5.26 input a <= 0: exp(a) as Q0.31 (1.0 is INT32_MAX).
 * exp(a) = exp(a mod 1/4 - 1/4) * product of exp(-2^k) over the set bits of the remainder. */
static int32_t ec_exp_on_negative_values_q5(int32_t a)
{
    static const int32_t multipliers[7] = {
        1672461947, /* exp(-1/4) */
        1302514674, /* exp(-1/2) */
        790015084,  /* exp(-1) */
        290630308,  /* exp(-2) */
        39332535,   /* exp(-4) */
        720401,     /* exp(-8) */
        242,        /* exp(-16) */
    };
    const int32_t one_quarter = 1 << 24; /* 1/4 in Q5.26 */
    const int32_t a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter;
    /* Rescale<0> from Q5.26 to Q0.31: a saturating shift by 5 (no saturation: |value| <= 1/4) */
    int32_t result = ec_exp_on_interval_between_negative_one_quarter_and_0_excl(
        ec_saturating_shift_left(a_mod_quarter_minus_one_quarter, 5));
    const int32_t remainder = a_mod_quarter_minus_one_quarter - a;
    int k;
    for (k = 0; k < 7; ++k) {
        if (remainder & (1 << (24 + k))) { /* bit of 2^(k-2) in Q5.26 */
            result = ec_sat_rounding_doubling_high_mul(result, multipliers[k]);
        }
    }
    /* 5 integer bits: gemmlowp's clamp below -32 does not apply (kIntegerBits > 5 only) */
    return a == 0 ? INT32_MAX : result;
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) for a in [0, 1), Q0.31 -> Q0.31, by
 * three Newton-Raphson steps on the half denominator (Q2.29 iterate, 48/17 - 32/17 * d start). */
static int32_t ec_one_over_one_plus_x_for_x_in_0_1(int32_t a)
{
    const int32_t half_denominator = ec_rounding_half_sum(a, INT32_MAX);
    const int32_t constant_48_over_17 = 1515870810;     /* Q2.29 */
    const int32_t constant_neg_32_over_17 = -1010580540; /* Q2.29 */
    const int32_t one_q2 = 1 << 29;
    int32_t x = constant_48_over_17 + ec_sat_rounding_doubling_high_mul(half_denominator, constant_neg_32_over_17);
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t half_denominator_times_x = ec_sat_rounding_doubling_high_mul(half_denominator, x);
        const int32_t one_minus_half_denominator_times_x = one_q2 - half_denominator_times_x;
        /* x * (1 - d x) is Q4.27; Rescale<2> back to Q2.29 */
        x = x + ec_saturating_shift_left(ec_sat_rounding_doubling_high_mul(x, one_minus_half_denominator_times_x), 2);
    }
    /* x / 2 as Q1.30 (same raw value), Rescale<0> to Q0.31 */
    return ec_saturating_shift_left(x, 1);
}

/* TFLite GetReciprocal (kernels/internal/common.h) for a positive Q12.19 x: returns 1 / x' (Q0.31)
 * where x' = x / 2^num_bits_over_unit lies in [1, 2). */
static int32_t ec_get_reciprocal_q12(int32_t x, int *num_bits_over_unit)
{
    const int headroom_plus_one = ec_count_leading_zeros((uint32_t)x);
    const int32_t shifted_sum_minus_one =
        (int32_t)(((uint32_t)x << headroom_plus_one) - ((uint32_t)1 << 31));
    *num_bits_over_unit = 12 - headroom_plus_one;
    return ec_one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one);
}

/* exp(d * beta * input_scale) as Q0.31 for one input difference d >= diff_min. */
static int32_t ec_softmax_exp(const ec_softmax_params *p, int32_t input_diff)
{
    const int32_t scaled_diff_q5 =
        ec_multiply_by_quantized_multiplier_greater_than_one(input_diff, p->input_multiplier, p->input_left_shift);
    return ec_exp_on_negative_values_q5(scaled_diff_q5);
}

void ec_softmax_s8(const ec_softmax_params *p, const int8_t *input, int8_t *output)
{
    int32_t row;
    for (row = 0; row < p->rows; ++row) {
        const int8_t *x = input + row * p->depth;
        int8_t *y = output + row * p->depth;
        int32_t max_in_row = INT8_MIN;
        int32_t sum_of_exps = 0; /* Q12.19, saturated at INT32_MAX (sums >= 4096) */
        int32_t reciprocal;
        int num_bits_over_unit;
        int exponent;
        int32_t c;

        for (c = 0; c < p->depth; ++c) {
            max_in_row = x[c] > max_in_row ? x[c] : max_in_row;
        }
        for (c = 0; c < p->depth; ++c) {
            const int32_t input_diff = (int32_t)x[c] - max_in_row;
            if (input_diff >= p->diff_min) {
                /* Rescale<12>: Q0.31 -> Q12.19 */
                const int32_t term = ec_rounding_divide_by_pot(ec_softmax_exp(p, input_diff), 12);
                sum_of_exps = sum_of_exps > INT32_MAX - term ? INT32_MAX : sum_of_exps + term;
            }
        }

        reciprocal = ec_get_reciprocal_q12(sum_of_exps, &num_bits_over_unit);
        exponent = num_bits_over_unit + 31 - 8;
        /* exponent > 31 means sum >= 512: every probability is below 1/512 and rounds to output -128.
         * (TFLite's reference kernel aborts there: TFLITE_CHECK(exponent <= 31).) */

        for (c = 0; c < p->depth; ++c) {
            const int32_t input_diff = (int32_t)x[c] - max_in_row;
            if (input_diff >= p->diff_min) {
                const int32_t probability = ec_sat_rounding_doubling_high_mul(reciprocal, ec_softmax_exp(p, input_diff));
                const int32_t shifted = (exponent > 31 ? 0 : ec_rounding_divide_by_pot(probability, exponent)) + INT8_MIN;
                y[c] = (int8_t)ec_clamp(shifted, INT8_MIN, INT8_MAX);
            } else {
                y[c] = INT8_MIN;
            }
        }
    }
}
