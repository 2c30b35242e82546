/* edgecomp C runtime: element-wise INT8 kernels (see ec_elementwise.h for the formulas and sources). */
#include "ec_elementwise.h"

#include "ec_fixedpoint.h"

/* A broadcast walk, one output row at a time: the row is output[start, start + length) and its
 * element i reads input1[offset1 + i * step1] and input2[offset2 + i * step2]. The last axis is the
 * row; index[] counts the rows along the outer axes. Equal shapes (dims == 0) are one row of every
 * element with unit steps. */
typedef struct {
    int32_t dims;
    const int32_t *shape;
    const int32_t *strides1;
    const int32_t *strides2;
    int32_t size;
    int32_t index[EC_BROADCAST_MAX_DIMS];
    int32_t start;
    int32_t length;
    int32_t offset1;
    int32_t offset2;
    int32_t step1;
    int32_t step2;
} ec_broadcast_cursor;

/* Positions the cursor on the first row of the walk that the broadcast fields of ec_add_params /
 * ec_mul_params describe (size, dims, shape, input1_strides, input2_strides). */
static void ec_broadcast_begin(ec_broadcast_cursor *cursor, int32_t size, int32_t dims, const int32_t *shape,
                               const int32_t *strides1, const int32_t *strides2)
{
    int32_t axis;
    for (axis = 0; axis < EC_BROADCAST_MAX_DIMS; ++axis) {
        cursor->index[axis] = 0;
    }
    cursor->dims = dims;
    cursor->shape = shape;
    cursor->strides1 = strides1;
    cursor->strides2 = strides2;
    cursor->size = size;
    cursor->start = 0;
    cursor->offset1 = 0;
    cursor->offset2 = 0;
    if (dims == 0) {
        cursor->length = size;
        cursor->step1 = 1;
        cursor->step2 = 1;
    } else {
        cursor->length = shape[dims - 1];
        cursor->step1 = strides1[dims - 1];
        cursor->step2 = strides2[dims - 1];
    }
}

/* Moves the cursor to the next row (odometer over axes dims-2 .. 0); returns 0 after the last row. */
static int ec_broadcast_next_row(ec_broadcast_cursor *cursor)
{
    int32_t axis;
    cursor->start += cursor->length;
    for (axis = cursor->dims - 2; axis >= 0; --axis) {
        cursor->index[axis] += 1;
        cursor->offset1 += cursor->strides1[axis];
        cursor->offset2 += cursor->strides2[axis];
        if (cursor->index[axis] < cursor->shape[axis]) {
            break;
        }
        cursor->offset1 -= cursor->strides1[axis] * cursor->shape[axis];
        cursor->offset2 -= cursor->strides2[axis] * cursor->shape[axis];
        cursor->index[axis] = 0;
    }
    return cursor->start < cursor->size;
}

/* AddFunc (reference_integer_ops) and the body of SubElementwise (reference_ops): one element. */
static inline int8_t ec_add_sub_one(const ec_add_params *p, int8_t x1, int8_t x2, int subtract)
{
    const int32_t shifted1 = ec_shift_left(p->input1_offset + x1, p->left_shift);
    const int32_t shifted2 = ec_shift_left(p->input2_offset + x2, p->left_shift);
    const int32_t scaled1 =
        ec_multiply_by_quantized_multiplier_smaller_than_one(shifted1, p->input1_multiplier, p->input1_shift);
    const int32_t scaled2 =
        ec_multiply_by_quantized_multiplier_smaller_than_one(shifted2, p->input2_multiplier, p->input2_shift);
    const int32_t raw = subtract ? scaled1 - scaled2 : scaled1 + scaled2;
    const int32_t result =
        ec_multiply_by_quantized_multiplier_smaller_than_one(raw, p->output_multiplier, p->output_shift) +
        p->output_offset;
    return (int8_t)ec_clamp(result, p->activation_min, p->activation_max);
}

/* MulElementwise (reference_integer_ops): one element. */
static inline int8_t ec_mul_one(const ec_mul_params *p, int8_t x1, int8_t x2)
{
    const int32_t product = (p->input1_offset + x1) * (p->input2_offset + x2);
    const int32_t result =
        ec_multiply_by_quantized_multiplier(product, p->output_multiplier, p->output_shift) + p->output_offset;
    return (int8_t)ec_clamp(result, p->activation_min, p->activation_max);
}

static void ec_add_sub(const ec_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                       int subtract)
{
    ec_broadcast_cursor row;
    int32_t i;
    ec_broadcast_begin(&row, p->size, p->dims, p->shape, p->input1_strides, p->input2_strides);
    do {
        for (i = 0; i < row.length; ++i) {
            output[row.start + i] =
                ec_add_sub_one(p, input1[row.offset1 + i * row.step1], input2[row.offset2 + i * row.step2], subtract);
        }
    } while (ec_broadcast_next_row(&row));
}

void ec_add_s8(const ec_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    ec_add_sub(p, input1, input2, output, 0);
}

void ec_sub_s8(const ec_sub_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    ec_add_sub(p, input1, input2, output, 1);
}

void ec_mul_s8(const ec_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    ec_broadcast_cursor row;
    int32_t i;
    ec_broadcast_begin(&row, p->size, p->dims, p->shape, p->input1_strides, p->input2_strides);
    do {
        for (i = 0; i < row.length; ++i) {
            output[row.start + i] = ec_mul_one(p, input1[row.offset1 + i * row.step1], input2[row.offset2 + i * row.step2]);
        }
    } while (ec_broadcast_next_row(&row));
}

void ec_lut_s8(const ec_lut_params *p, const int8_t *input, int8_t *output)
{
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        output[i] = p->table[(uint8_t)input[i]];
    }
}
