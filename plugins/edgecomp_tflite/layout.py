"""Stored layouts: how a TFLite tensor holds the elements of an ONNX (logical) tensor.

ONNX vision models are NCHW; TFLite's spatial kernels (CONV_2D, pools, resizes) are NHWC. Instead
of wrapping every spatial op in Transposes, the lowering tracks, per ONNX tensor, how its TFLite
tensor stores it (:class:`Layout`) and lets each op choose the layout of its output:

- ``perm``: the stored tensor is ``numpy.transpose(logical, perm)``; stored axis ``j`` is logical
  axis ``perm[j]``. ``(0, 2, 3, 1)`` is NHWC storage of an NCHW tensor; the identity is the ONNX
  layout itself.
- ``feature_order`` (only for rank-2 tensors produced by flattening a channels-last tensor): the
  stored last axis is a permutation of the logical one, ``stored[..., j] = logical[..., order[j]]``.
  Only FULLY_CONNECTED consumers accept it: they permute their weight rows instead (mnist-8:
  MaxPool -> Reshape [1, 256] -> Gemm keeps ONNX element order without a TRANSPOSE).

Changing the layout of a tensor costs nothing when the two layouts put the elements in the same
flat order (:func:`same_flat_order`: then a RESHAPE, or nothing, does it) and a TRANSPOSE otherwise.

Shapes here are lists of ints; a dynamic (symbolic) dim is represented by :data:`PROBE_DIM` when
comparing element orders, so a dynamic batch axis cannot be mistaken for a size-1 axis.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

Perm = tuple[int, ...]

#: Size substituted for a dynamic dim when comparing element orders (any size > 1 works; a prime
#: avoids accidental coincidences with static dims).
PROBE_DIM = 3


def identity(rank: int) -> Perm:
    """The ONNX layout of a rank-``rank`` tensor: ``(0, 1, ..., rank-1)``."""
    return tuple(range(rank))


def channels_last(rank: int) -> Perm:
    """Channels-last storage of a channels-first tensor: ``(0, 2, 3, ..., rank-1, 1)`` (NCHW -> NHWC).

    Ranks below 3 have no channel/spatial split and get the identity.
    """
    if rank < 3:
        return identity(rank)
    return (0, *range(2, rank), 1)


def inverse(perm: Sequence[int]) -> Perm:
    """The permutation undoing ``perm``: ``transpose(transpose(x, perm), inverse(perm)) == x``."""
    result = [0] * len(perm)
    for position, axis in enumerate(perm):
        result[axis] = position
    return tuple(result)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a TFLite tensor stores an ONNX tensor (module docstring).

    Attributes:
        perm: stored axis ``j`` holds logical axis ``perm[j]``.
        feature_order: for a flattened rank-2 tensor, the logical index of each stored element of
            the last axis; None when the last axis is in logical order.
    """

    perm: Perm
    feature_order: tuple[int, ...] | None = None

    @classmethod
    def onnx(cls, rank: int) -> "Layout":
        return cls(identity(rank))

    @classmethod
    def nhwc(cls, rank: int) -> "Layout":
        return cls(channels_last(rank))

    @property
    def rank(self) -> int:
        return len(self.perm)

    @property
    def is_identity(self) -> bool:
        return self.perm == identity(len(self.perm)) and self.feature_order is None

    def stored_shape(self, logical_shape: Sequence) -> list:
        """Logical dims rearranged into stored order (dims may be ``None`` for dynamic)."""
        return [logical_shape[axis] for axis in self.perm]

    def stored_axis(self, logical_axis: int) -> int:
        """Position in the stored tensor of logical axis ``logical_axis`` (negative axes allowed)."""
        return self.perm.index(logical_axis % len(self.perm))

    def describe(self) -> str:
        if self.feature_order is not None:
            return "flattened channels-last"
        if self.perm == identity(self.rank):
            return "onnx"
        if self.perm == channels_last(self.rank):
            return "channels-last"
        return "perm" + "".join(str(axis) for axis in self.perm)


def transpose_perm(source: Perm, target: Perm) -> Perm:
    """The TRANSPOSE ``perm`` turning a tensor stored as ``source`` into one stored as ``target``.

    Stored target axis ``j`` holds logical axis ``target[j]``, which the source stores at position
    ``source.index(target[j])``.
    """
    return tuple(source.index(axis) for axis in target)


def after_transpose(layout: Perm, onnx_perm: Sequence[int]) -> Perm:
    """Layout of ``y = Transpose(x, perm=onnx_perm)`` when y reuses x's stored tensor unchanged.

    Stored axis ``j`` holds x's logical axis ``layout[j]``, which is y's logical axis
    ``inverse(onnx_perm)[layout[j]]`` (ONNX Transpose: ``y.shape[i] = x.shape[onnx_perm[i]]``).
    """
    back = inverse(onnx_perm)
    return tuple(back[axis] for axis in layout)


def probe_shape(shape: Sequence[int | None]) -> list[int]:
    """``shape`` with every dynamic dim replaced by :data:`PROBE_DIM`."""
    return [PROBE_DIM if dim is None else int(dim) for dim in shape]


def same_flat_order(source_shape: Sequence[int | None], source: Layout, target_shape: Sequence[int | None], target: Layout) -> bool:
    """True when the stored tensors of two layouts hold the elements in the same flat (C) order.

    The logical tensors are ``x`` (``source_shape``) and ``reshape(x, target_shape)`` in ONNX
    (C order) semantics; the question is whether ``ravel(store(x, source)) ==
    ravel(store(reshape(x, target_shape), target))``, answered exactly by storing the element
    indices ``arange(numel)``. When True, a RESHAPE of the stored tensor (or nothing, when the
    stored shapes are equal too) changes the layout; otherwise a TRANSPOSE is needed.

    Args:
        source_shape, target_shape: logical shapes with the same number of elements (``None`` =
            dynamic; at most the same dynamic dims in both, see :func:`probe_shape`).
        source, target: the two layouts.
    """
    source_dims, target_dims = probe_shape(source_shape), probe_shape(target_shape)
    count = int(np.prod(source_dims, dtype=np.int64))
    if count != int(np.prod(target_dims, dtype=np.int64)):
        return False
    indices = np.arange(count, dtype=np.int64)
    return bool(np.array_equal(store(indices.reshape(source_dims), source).ravel(), store(indices.reshape(target_dims), target).ravel()))


def store(array: np.ndarray, layout: Layout) -> np.ndarray:
    """The stored form of a logical array: transposed by ``layout.perm``, last axis reordered by
    ``layout.feature_order`` when set. Used for constants and in :func:`same_flat_order`."""
    stored = np.transpose(array, layout.perm) if array.ndim > 1 else array
    if layout.feature_order is not None:
        stored = stored[..., list(layout.feature_order)]
    return stored


def load(stored: np.ndarray, layout: Layout) -> np.ndarray:
    """Inverse of :func:`store`: the logical array from its stored form (the runner's outputs)."""
    array = stored
    if layout.feature_order is not None:
        array = array[..., list(np.argsort(layout.feature_order))]
    return np.transpose(array, inverse(layout.perm)) if array.ndim > 1 else array


def broadcast_constant(array: np.ndarray, rank: int, layout: Layout) -> np.ndarray:
    """A constant operand of an element-wise op, stored to match a rank-``rank`` operand in ``layout``.

    ONNX broadcasting aligns trailing axes (numpy rules), so the constant first gets leading
    size-1 axes up to ``rank``, then the layout's permutation. A scalar stays a scalar (broadcasts
    in any layout). Feature-ordered layouts reorder the constant's last axis when it is not size 1.
    """
    if array.ndim == 0:
        return array
    expanded = array.reshape((1,) * (rank - array.ndim) + array.shape)
    stored = np.transpose(expanded, layout.perm)
    if layout.feature_order is not None and stored.shape[-1] != 1:
        stored = stored[..., list(layout.feature_order)]
    return np.ascontiguousarray(stored)


def flatten_feature_order(logical_shape: Sequence[int], layout: Layout) -> tuple[int, ...]:
    """For ``Reshape(x, [N, K])`` of a tensor ``x`` [N, d1, ..., dk] stored with ``layout`` (batch
    stored first), the logical flat index of each stored element of one sample: the
    ``feature_order`` of the flattened result when the stored tensor is reshaped as it is.
    """
    inner = [int(dim) for dim in logical_shape[1:]]
    inner_perm = tuple(axis - 1 for axis in layout.perm[1:])
    indices = np.arange(int(np.prod(inner, dtype=np.int64)), dtype=np.int64).reshape(inner)
    return tuple(int(i) for i in np.transpose(indices, inner_perm).ravel())
