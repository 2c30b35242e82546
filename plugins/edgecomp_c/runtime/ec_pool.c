/* edgecomp C runtime: INT8 pooling and mean kernels. See ec_pool.h for the semantics and sources.
 *
 * Loops are written for readability on a Cortex-M (no heap, no division in the inner loops except
 * the one per output of AVERAGE_POOL_2D, int32 accumulators). */
#include "ec_pool.h"

/* The window of output position (out_y, out_x), clipped to the image:
 * rows [*y_start, *y_end) and columns [*x_start, *x_end) of the input. */
static void ec_pool_window(const ec_pool_params *p, int32_t out_y, int32_t out_x,
                           int32_t *y_start, int32_t *y_end, int32_t *x_start, int32_t *x_end)
{
    const int32_t in_y_origin = out_y * p->stride_height - p->pad_height;
    const int32_t in_x_origin = out_x * p->stride_width - p->pad_width;
    const int32_t fy_start = in_y_origin < 0 ? -in_y_origin : 0;
    const int32_t fx_start = in_x_origin < 0 ? -in_x_origin : 0;
    const int32_t fy_end = p->input_height - in_y_origin < p->filter_height ? p->input_height - in_y_origin : p->filter_height;
    const int32_t fx_end = p->input_width - in_x_origin < p->filter_width ? p->input_width - in_x_origin : p->filter_width;
    *y_start = in_y_origin + fy_start;
    *y_end = in_y_origin + fy_end;
    *x_start = in_x_origin + fx_start;
    *x_end = in_x_origin + fx_end;
}

/* The largest value of one channel over a window of height x width pixels: pixel (y, x) of the
 * window is corner[y * row + x * channels]. */
static int32_t ec_window_max(const int8_t *corner, int32_t height, int32_t width, int32_t row, int32_t channels)
{
    int32_t max = INT8_MIN;
    int32_t y, x;
    for (y = 0; y < height; ++y) {
        const int8_t *pixel = corner + y * row;
        for (x = 0; x < width; ++x, pixel += channels) {
            if (*pixel > max) {
                max = *pixel;
            }
        }
    }
    return max;
}

/* The average of one channel over a window (as ec_window_max), rounded half away from zero. */
static int32_t ec_window_average(const int8_t *corner, int32_t height, int32_t width, int32_t row, int32_t channels)
{
    const int32_t count = height * width;
    int32_t sum = 0;
    int32_t y, x;
    for (y = 0; y < height; ++y) {
        const int8_t *pixel = corner + y * row;
        for (x = 0; x < width; ++x, pixel += channels) {
            sum += *pixel;
        }
    }
    /* count >= 1 for every window TFLite's Prepare accepts (SAME or VALID). */
    return sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
}

/* MAX_POOL_2D (average == 0) and AVERAGE_POOL_2D (average == 1): every window of every channel
 * reduced, then clamped to the activation range. */
static void ec_pool_s8(const ec_pool_params *p, const int8_t *input, int8_t *output, int average)
{
    const int32_t channels = p->channels;
    const int32_t row = p->input_width * channels;
    int32_t batch, out_y, out_x, channel;
    for (batch = 0; batch < p->batches; ++batch) {
        const int8_t *image = input + (int32_t)batch * p->input_height * row;
        for (out_y = 0; out_y < p->output_height; ++out_y) {
            for (out_x = 0; out_x < p->output_width; ++out_x) {
                int32_t y_start, y_end, x_start, x_end;
                ec_pool_window(p, out_y, out_x, &y_start, &y_end, &x_start, &x_end);
                for (channel = 0; channel < channels; ++channel) {
                    const int8_t *corner = image + y_start * row + x_start * channels + channel;
                    const int32_t value = average ? ec_window_average(corner, y_end - y_start, x_end - x_start, row, channels)
                                                  : ec_window_max(corner, y_end - y_start, x_end - x_start, row, channels);
                    *output++ = (int8_t)ec_clamp(value, p->activation_min, p->activation_max);
                }
            }
        }
    }
}

void ec_max_pool_s8(const ec_pool_params *p, const int8_t *input, int8_t *output)
{
    ec_pool_s8(p, input, output, 0);
}

void ec_avg_pool_s8(const ec_pool_params *p, const int8_t *input, int8_t *output)
{
    ec_pool_s8(p, input, output, 1);
}

/* One step of a row-major odometer over count axes of extents dims[] (the last axis moves fastest):
 * advances index[] and returns how far the element offset moves (strides[] per axis); after the
 * last position every index is back at 0. */
static int32_t ec_odometer_step(int32_t *index, const int32_t *dims, const int32_t *strides, int32_t count)
{
    int32_t move = 0;
    int32_t k;
    for (k = count - 1; k >= 0; --k) {
        move += strides[k];
        if (++index[k] < dims[k]) {
            break;
        }
        move -= dims[k] * strides[k];
        index[k] = 0;
    }
    return move;
}

void ec_mean_s8(const ec_mean_params *p, const int8_t *input, int8_t *output)
{
    /* Odometers over the kept groups (one output each) and the reduced groups (one sum term each). */
    int32_t kept_index[EC_MEAN_MAX_GROUPS];
    int32_t reduced_index[EC_MEAN_MAX_GROUPS];
    int32_t k, r;
    int32_t outputs = 1;
    int32_t base = 0; /* input offset of the current output's first element */
    int32_t o;
    for (k = 0; k < p->kept_count; ++k) {
        kept_index[k] = 0;
        outputs *= p->kept_dims[k];
    }
    for (o = 0; o < outputs; ++o) {
        int32_t sum = 0;
        int32_t offset = base;
        int32_t n;
        for (r = 0; r < p->reduced_count; ++r) {
            reduced_index[r] = 0;
        }
        for (n = 0; n < p->num_elements; ++n) {
            sum += input[offset];
            offset += ec_odometer_step(reduced_index, p->reduced_dims, p->reduced_strides, p->reduced_count);
        }
        {
            /* TFLite: static_cast<int32_t>(sum - zero_point * num_elements), computed in int64. */
            const int32_t shifted = (int32_t)((int64_t)sum - (int64_t)p->input_zero_point * p->num_elements);
            const int32_t value = ec_multiply_by_quantized_multiplier(shifted, p->multiplier, (int)p->shift) + p->output_zero_point;
            output[o] = (int8_t)ec_clamp(value, INT8_MIN, INT8_MAX);
        }
        base += ec_odometer_step(kept_index, p->kept_dims, p->kept_strides, p->kept_count); /* next output */
    }
}
