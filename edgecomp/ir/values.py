"""Reading values of the IR: what counts as a constant, and its data."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """Returns the value's data when it is a constant, else None.

    A constant is an initializer or the output of a ``Constant`` node (read with
    ``ir.convenience.get_const_tensor``). An initializer that is also a graph input is not a
    constant: from IR version 4 on, the ONNX IR spec makes it a default the caller may override
    (ONNX ``docs/IR.md``, "Graphs"). IR version < 4 models list every initializer as an input
    (there it means nothing); ``RemoveLegacyInitializerInputsPass`` rewrites them first.

    Args:
        value: any value of a graph, or None (an absent optional input).

    Returns:
        A numpy array with the value's dtype and shape, or None.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return tensor.numpy()
