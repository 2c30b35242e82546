/* edgecomp C runtime: INT8 kernels bit-exact with the TFLite reference kernels.
 *
 * Every kernel takes a const parameter struct (computed at compile time by edgecomp, see
 * plugins/edgecomp_c/ops/) and tensor pointers: inputs first, then outputs. Activations are NHWC,
 * row-major. No kernel allocates memory or uses floating point, except the boundary
 * quantize/dequantize kernels (as TFLite's own QUANTIZE/DEQUANTIZE do).
 *
 * To use CMSIS-NN on a Cortex-M, replace the body of a kernel by the matching arm_*_s8 call
 * (same parameters: offsets, per-channel multipliers and shifts, activation range); see the
 * comment above each kernel.
 */
#ifndef EC_KERNELS_H
#define EC_KERNELS_H

#include <stdint.h>

#include "ec_fixedpoint.h"
#include "ec_conv.h"
#include "ec_pool.h"
#include "ec_elementwise.h"
#include "ec_softmax.h"
#include "ec_shape.h"

#endif /* EC_KERNELS_H */
