"""Resize (nearest, linear) -> RESIZE_NEAREST_NEIGHBOR, RESIZE_BILINEAR.

ONNX Resize maps each output coordinate ``x`` to an input coordinate by its
``coordinate_transformation_mode`` (ONNX operator spec: ``half_pixel``, ``pytorch_half_pixel``,
``align_corners``, ``asymmetric``, ``tf_half_pixel_for_nn``), then rounds it by ``nearest_mode``
(nearest) or interpolates between its floor and ceil clamped to the input (linear). TFLite has two
flags (``tensorflow/lite/kernels/internal/reference/resize_nearest_neighbor.h``,
``resize_bilinear.h``): ``align_corners`` (scale ``(in-1)/(out-1)``, nearest rounds) and
``half_pixel_centers`` (``(x + 0.5) * scale - 0.5`` for bilinear, ``floor((x + 0.5) * scale)`` for
nearest), with ``scale = in / out`` otherwise, computed in float32.

Rather than a table of mode equivalences (which depend on sizes, e.g. rounding ties only occur
for some ratios), :func:`choose_flags` computes, for the model's actual sizes, the input index
(nearest) or the clamped input coordinate (linear) of every output row and column both ways, and
takes the TFLite flags that reproduce ONNX exactly; none matching is an unsupported node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.spatial import read_channels_last

Builtin = schema.BuiltinOperator

_FLAG_CANDIDATES = ((False, False), (True, False), (False, True))  # (align_corners, half_pixel_centers)


def _text(node: ir.Node, name: str, default: str) -> str:
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


def onnx_coordinates(mode: str, out_size: int, in_size: int, scale: float) -> np.ndarray | None:
    """ONNX input coordinate of each output index, or None for an unsupported mode.

    Computed in float32 as ONNX Runtime (the project's reference executor) does, with
    ``scale = float32(out / in)`` for ``sizes``: at exact rounding ties (28 -> 17 rows hits 13.5)
    the float32 result decides which row nearest picks, so float64 would predict the wrong one.
    """
    x = np.arange(out_size, dtype=np.float32)
    scale32, half = np.float32(scale), np.float32(0.5)
    if mode == "half_pixel":
        result = (x + half) / scale32 - half
    elif mode == "pytorch_half_pixel":
        result = (x + half) / scale32 - half if out_size > 1 else np.zeros_like(x)
    elif mode == "align_corners":
        result = x * np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        result = x / scale32
    elif mode == "tf_half_pixel_for_nn":
        result = (x + half) / scale32
    else:
        return None
    return result.astype(np.float64)


def onnx_nearest(coordinates: np.ndarray, nearest_mode: str, in_size: int) -> np.ndarray | None:
    """ONNX nearest index per output index (clamped to the input), or None for an unknown mode."""
    rounding = {
        "round_prefer_floor": lambda c: np.ceil(c - 0.5),
        "round_prefer_ceil": lambda c: np.floor(c + 0.5),
        "floor": np.floor,
        "ceil": np.ceil,
    }.get(nearest_mode)
    if rounding is None:
        return None
    return np.clip(rounding(coordinates), 0, in_size - 1).astype(np.int64)


def tflite_nearest(out_size: int, in_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite RESIZE_NEAREST_NEIGHBOR input index per output index (reference kernel, float32)."""
    scale = np.float32((in_size - 1) / (out_size - 1)) if align_corners and out_size > 1 else np.float32(in_size / out_size)
    x = np.arange(out_size, dtype=np.float32) + np.float32(0.5 if half_pixel else 0.0)
    scaled = x * scale
    if align_corners:  # TfLiteRound: half away from zero (the values are >= 0 here)
        index = np.where(scaled - np.floor(scaled) >= 0.5, np.ceil(scaled), np.floor(scaled))
    else:
        index = np.floor(scaled)
    index = np.minimum(index.astype(np.int64), in_size - 1)
    return np.maximum(index, 0) if half_pixel else index


def tflite_bilinear(out_size: int, in_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite RESIZE_BILINEAR effective input coordinate per output index: the reference kernel's
    ``(x + 0.5) * scale - 0.5`` (half pixel) or ``x * scale``, which its floor/ceil clamping makes
    equal to interpolating at the coordinate clamped to [0, in - 1]."""
    scale = np.float32((in_size - 1) / (out_size - 1)) if align_corners and out_size > 1 else np.float32(in_size / out_size)
    x = np.arange(out_size, dtype=np.float32)
    scaled = (x + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else x * scale
    return np.clip(scaled.astype(np.float64), 0, in_size - 1)


def choose_flags(info: GraphInfo, node: ir.Node) -> tuple[int, bool, bool] | str:
    """(builtin code, align_corners, half_pixel_centers) reproducing the ONNX Resize, or a reason."""
    mode = _text(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} has no TFLite kernel (nearest and linear only)"
    if attribute(node, "antialias", 0):
        return "Resize antialias has no TFLite kernel"
    if _text(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize keep_aspect_ratio_policy other than stretch is not lowered"
    in_shape, out_shape = info.shape(node.inputs[0]), info.shape(node.outputs[0])
    if in_shape is None or out_shape is None or len(in_shape) != 4:
        return "Resize is lowered for 4-D NCHW tensors with known shapes"
    same_batch = in_shape[0] is None or out_shape[0] is None or in_shape[0] == out_shape[0]
    if any(d is None for d in (*in_shape[1:], *out_shape[1:])) or in_shape[1] != out_shape[1] or not same_batch:
        return "Resize may only change the static spatial (H, W) dimensions"
    scales = None
    scales_value = info.input(node, 2) if len(node.inputs) > 2 else info.input(node, 1) if info.opset < 11 else None
    if scales_value is not None:
        array = info.constant(scales_value)
        if array is None:
            return "Resize scales must be constant"
        if array.size:
            scales = [float(s) for s in array.reshape(-1)]
    sizes_value = info.input(node, 3)
    if sizes_value is not None and info.constant(sizes_value) is None:
        return "Resize sizes must be constant"
    if scales is not None and len(scales) == 4 and (scales[0] != 1.0 or scales[1] != 1.0):
        return "Resize may only scale H and W"
    coordinate_mode = _text(node, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = _text(node, "nearest_mode", "round_prefer_floor")
    code = Builtin.RESIZE_NEAREST_NEIGHBOR if mode == "nearest" else Builtin.RESIZE_BILINEAR
    for align_corners, half_pixel in _FLAG_CANDIDATES:
        if all(
            _axis_matches(mode, coordinate_mode, nearest_mode, out_shape[axis], in_shape[axis], scales[axis] if scales and len(scales) == 4 else out_shape[axis] / in_shape[axis], align_corners, half_pixel)
            for axis in (2, 3)
        ):
            return code, align_corners, half_pixel
    return f"Resize {mode} with coordinate_transformation_mode={coordinate_mode!r}" + (f", nearest_mode={nearest_mode!r}" if mode == "nearest" else "") + " matches no TFLite align_corners/half_pixel_centers setting for these sizes"


def _axis_matches(mode: str, coordinate_mode: str, nearest_mode: str, out_size: int, in_size: int, scale: float, align_corners: bool, half_pixel: bool) -> bool:
    coordinates = onnx_coordinates(coordinate_mode, out_size, in_size, scale)
    if coordinates is None:
        return False
    if mode == "nearest":
        expected = onnx_nearest(coordinates, nearest_mode, in_size)
        return expected is not None and bool(np.array_equal(expected, tflite_nearest(out_size, in_size, align_corners, half_pixel)))
    expected = np.clip(coordinates, 0, in_size - 1)
    return bool(np.allclose(expected, tflite_bilinear(out_size, in_size, align_corners, half_pixel), rtol=0, atol=1e-5))


def check_resize(info: GraphInfo, node: ir.Node) -> str | None:
    chosen = choose_flags(info, node)
    return chosen if isinstance(chosen, str) else None


@register("Resize", check=check_resize)
def lower_resize(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Resize -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR (NHWC) with the flags :func:`choose_flags` found."""
    code, align_corners, half_pixel = choose_flags(ctx, node)  # type: ignore[misc]
    x = read_channels_last(ctx, node)
    out_h, out_w = ctx.static_shape(node.outputs[0])[2:4]
    options = schema.ResizeNearestNeighborOptionsT() if code == Builtin.RESIZE_NEAREST_NEIGHBOR else schema.ResizeBilinearOptionsT()
    options.alignCorners, options.halfPixelCenters = align_corners, half_pixel
    size = ctx.int32_constant(f"{node.name}/size", [out_h, out_w])
    ctx.emit(code, [x, size], [ctx.define_output_like(node.outputs[0], Layout.nhwc(4), x)], options)  # int8: input's parameters
