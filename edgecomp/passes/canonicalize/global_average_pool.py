"""WholeWindowAveragePoolPass: an AveragePool whose window is its whole input becomes GlobalAveragePool."""

from __future__ import annotations

import onnx_ir as ir

from edgecomp.passes.canonicalize._util import fuse_nodes
from edgecomp.passes.rewrite import NodeRewritePass

__all__ = ["WholeWindowAveragePoolPass"]


class WholeWindowAveragePoolPass(NodeRewritePass):
    """Rewrites ``AveragePool`` with one window covering the whole spatial input into ``GlobalAveragePool``.

    Keras ``AveragePooling2D(pool_size=8)`` on an 8x8 map (MLPerf Tiny ResNet-8) is exported as
    ``AveragePool(kernel_shape=[8, 8])``: it averages each channel over all H x W positions, which is
    ``GlobalAveragePool`` (ONNX operator specs, "AveragePool" and "GlobalAveragePool": output
    ``[N, C, 1, ..., 1]``, the mean over the spatial axes). Both compute the same float values; the
    global form is the one every later stage understands as a reduction:

    - in int8 an ``AveragePool`` must keep its input's scale and zero point (TFLite int8
      quantization specification, AVERAGE_POOL_2D), while ``GlobalAveragePool`` (TFLite MEAN)
      gets its own calibrated parameters, so the pooled values, which span a much narrower range
      than their inputs, keep their resolution;
    - with equal input and output parameters every exact half-LSB mean is a rounding tie, which
      TFLite's kernels round away from zero and ONNX QuantizeLinear to even (ResNet-8 on 4 photos:
      1 of its 256 pooled values, enough to move its softmax by 9 LSB); separate parameters make
      such ties rare.

    Conditions (else the node is left, reason in :attr:`refusals`): static spatial input
    dimensions equal to ``kernel_shape``; ``auto_pad`` NOTSET or VALID with all ``pads`` zero;
    ``dilations`` absent or all 1. ``strides``, ``ceil_mode`` and ``count_include_pad`` do not
    change a single window without padding. The new node keeps the AveragePool's name and output
    value (name, type, shape).

    Attributes:
        refusals: after a run, AveragePool node name -> why it was left.

    Raises nothing.
    """

    op_type = "AveragePool"

    def check(self, model: ir.Model, node: ir.Node) -> ir.Node | str | None:
        return _check(node) or node

    def rewrite(self, model: ir.Model, node: ir.Node, match: ir.Node) -> None:
        pool = ir.Node("", "GlobalAveragePool", [node.inputs[0]], name=node.name, num_outputs=1)
        fuse_nodes(model.graph, [node], pool)


def _check(node: ir.Node) -> str | None:
    """Returns why ``node`` (an AveragePool) is not a whole-window average, or None."""
    kernel = list(node.attributes.get_ints("kernel_shape", ()))
    shape = node.inputs[0].shape
    if shape is None or len(shape) != len(kernel) + 2:
        return "input rank unknown or not kernel rank + 2"
    spatial = list(shape)[2:]
    if not all(isinstance(dim, int) for dim in spatial):
        return "spatial input dimensions are not static"
    if spatial != kernel:
        return f"kernel_shape {kernel} is not the whole input {spatial}"
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "auto_pad pads the input"
    if any(node.attributes.get_ints("pads", ())):
        return "pads are not zero"
    if any(d != 1 for d in node.attributes.get_ints("dilations", ())):
        return "dilations are not 1"
    return None
