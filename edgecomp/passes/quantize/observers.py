"""Calibration observers: choose an activation's clipping range from batches seen one at a time.

An observer is fed every calibration batch of one tensor (:meth:`Observer.update`) and then gives the
real-valued clipping range ``(min, max)`` (:meth:`Observer.range`) for asymmetric per-tensor INT8
quantization, as the TFLite int8 quantization specification prescribes for activations. The range
always contains 0, so that zero is exactly representable. :func:`quantization_params` turns it into
a scale and zero point; :func:`symmetric_scale` gives per-channel weight scales.

Memory does not grow with the number of batches: :class:`MinMaxObserver` keeps two numbers and the
histogram observers keep one fixed-size histogram (``bins`` int64 counts, 2048 by default) plus a few
scalars. All work on activation values is numpy-vectorized.

Non-finite values (NaN, +-inf) are ignored by every observer.

Histogram layout
----------------
The histogram has ``bins`` bins of width ``W`` over ``[-k*W, (bins-k)*W)``: zero is always a bin
edge (bin ``k`` starts at 0) and the range always contains 0. The first batch with a nonzero value
sets ``W`` so that ``[min(x_min, 0), max(x_max, 0)]`` fits in ``bins - 1`` bins. When a later batch
falls outside, the width grows by the smallest power of two ``F`` whose zero-aligned grid holds the
old range and the batch; each old bin is added to the new bin containing it (``F`` old bins per new
bin, exactly, since both grids have an edge at 0), and spare bins go to each side of zero in
proportion to that side's extent. The re-binning is exact (a value's new bin is the one it would
get if binned directly at the new width), so the histogram equals ``np.histogram`` of all values seen
over the final edges, and its bin width is less than ``2 * span / (bins - 2)``: at most about twice
what binning all the data at once would give.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from edgecomp.errors import CalibrationDataError

METHODS = ("minmax", "percentile", "entropy", "mse")
"""The calibration methods :func:`make_observer` knows."""

DEFAULT_BINS = 2048
"""Histogram bins (TensorRT's calibrator also uses 2048; Migacz, GTC 2017)."""

DEFAULT_PERCENTILE = 99.999
DEFAULT_QUANTIZED_BINS = 128
"""Quantized bins of the entropy search (Migacz, GTC 2017: 128 levels of the int8 magnitude)."""

DEGENERATE_RANGE_SCALE = 1.0
"""Scale :func:`quantization_params` returns when the range is zero (a tensor that was always 0)."""

ZERO_WEIGHT_SCALE = float(np.finfo(np.float32).eps)
"""Scale :func:`symmetric_scale` returns for an all-zero channel: 2**-23, positive and a normal float32."""

_INT8_MIN, _INT8_MAX = -128, 127
_KL_EPSILON = 1e-4  # MXNet _smooth_distribution eps, in counts
_CHUNK = 1 << 20  # values binned per step (bounds the float64/int64 temporaries to 8 MiB each)


class Observer(abc.ABC):
    """Base class: sees batches of one tensor, gives its clipping range.

    Args:
        name: the tensor's name, used in error messages (optional).

    Attributes:
        method: the calibration method name (one of :data:`METHODS`).
        name: the tensor's name.
    """

    method: str = ""

    def __init__(self, *, name: str = "") -> None:
        self.name = name
        self._min = math.inf
        self._max = -math.inf
        self._count = 0

    def update(self, x: np.ndarray) -> None:
        """Observe one batch.

        Args:
            x: activation values, any shape, float (bool/integer arrays are accepted as their values).
                NaN and +-inf are ignored.

        Raises:
            TypeError: ``x`` is not numeric.
        """
        values = _finite_values(x)
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        self._min = min(self._min, low)
        self._max = max(self._max, high)
        self._count += int(values.size)
        self._observe(values, low, high)

    def _observe(self, values: np.ndarray, low: float, high: float) -> None:
        """Subclass hook: the batch's finite values (flattened, not empty) and their min and max."""

    def range(self) -> tuple[float, float]:
        """The clipping range ``(min, max)`` in the tensor's real units; ``min <= 0 <= max``.

        Raises:
            CalibrationDataError: no finite value was ever observed (``update`` never called, or the
                batches held only NaN/inf); the message names the tensor.
        """
        if self._count == 0:
            subject = f"tensor '{self.name}'" if self.name else "tensor"
            raise CalibrationDataError(
                f"{self.method} observer for {subject}: no finite values observed (no batch seen, or only NaN/inf)"
            )
        low, high = self._choose_range()
        low, high = max(low, self._min), min(high, self._max)
        return (min(float(low), 0.0), max(float(high), 0.0))

    @abc.abstractmethod
    def _choose_range(self) -> tuple[float, float]:
        """The method's range; ``range`` then clamps it to the observed min/max and adds zero."""

    @property
    def observed_min(self) -> float:
        """The smallest finite value seen (``inf`` before any)."""
        return self._min

    @property
    def observed_max(self) -> float:
        """The largest finite value seen (``-inf`` before any)."""
        return self._max

    def state_nbytes(self) -> int:
        """Bytes held in numpy arrays by this observer (constant across batches)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, count={self._count})"


def _finite_values(x: np.ndarray) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"observers take numeric arrays, got dtype {array.dtype}")
    values = array.reshape(-1)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
    elif values.dtype.kind == "b":
        values = values.astype(np.uint8)
    return values


class MinMaxObserver(Observer):
    """``minmax``: the running minimum and maximum of all values (extended to include 0)."""

    method = "minmax"

    def _choose_range(self) -> tuple[float, float]:
        return (self._min, self._max)


class HistogramObserver(Observer):
    """Shared base of the histogram methods: a fixed-size histogram whose range grows (see module doc).

    Args:
        bins: number of histogram bins, even and >= 2 (default 2048).
        name: the tensor's name, for error messages.
    """

    method = "histogram"

    def __init__(self, *, bins: int = DEFAULT_BINS, name: str = "") -> None:
        super().__init__(name=name)
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even integer >= 2, got {bins!r}")
        self.bins = bins
        self._counts = np.zeros(bins, dtype=np.int64)
        self._width = 0.0  # 0 until a nonzero value is seen
        self._zero_bin = 0  # k: number of bins below zero
        self._zeros_before_histogram = 0  # values seen while all were exactly 0

    def _observe(self, values: np.ndarray, low: float, high: float) -> None:
        low, high = min(low, 0.0), max(high, 0.0)
        if self._width == 0.0:
            if low == high:  # only zeros so far: nothing to size the histogram with yet
                self._zeros_before_histogram += int(values.size)
                return
            self._start(low, high)
        else:
            self._grow(low, high)
        for start in range(0, values.size, _CHUNK):  # float64 index math, bounded temporary memory
            chunk = values[start : start + _CHUNK].astype(np.float64)
            index = np.floor(chunk / self._width).astype(np.int64)
            index += self._zero_bin
            np.clip(index, 0, self.bins - 1, out=index)
            self._counts += np.bincount(index, minlength=self.bins)

    def _start(self, low: float, high: float) -> None:
        width = (high - low) / (self.bins - 1)
        zero_bin = min(max(math.ceil(-low / width), 0), self.bins - 1)
        self._width, self._zero_bin = width, zero_bin
        self._counts[zero_bin] += self._zeros_before_histogram
        self._zeros_before_histogram = 0

    def _grow(self, low: float, high: float) -> None:
        bins, width, zero_bin = self.bins, self._width, self._zero_bin
        if low >= -zero_bin * width and high < (bins - zero_bin) * width:
            return
        low = min(low, -zero_bin * width)  # the new range must hold the old one too
        high = max(high, (bins - zero_bin) * width)
        factor = 1
        while True:  # the smallest power-of-two width multiple whose zero-aligned grid holds [low, high]
            factor *= 2
            new_width = factor * width
            first = math.ceil(-low / new_width)  # fewest bins below zero
            last = math.ceil(bins - high / new_width) - 1  # most bins below zero
            if first <= last:
                break
        # spare bins go to each side in proportion to its extent (all to the right for ReLU data)
        new_zero_bin = first + round((last - first) * (-low) / (high - low))
        target = np.floor_divide(np.arange(bins) - zero_bin, factor) + new_zero_bin
        counts = np.zeros(bins, np.int64)
        np.add.at(counts, target, self._counts)
        self._counts[:] = counts
        self._width, self._zero_bin = new_width, new_zero_bin

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The histogram so far: ``(counts int64 [bins], edges float64 [bins + 1])`` in real units.

        Before any nonzero value is seen the width is 0 and all counts (zeros) are in one bin with
        edges ``[0, 0]``: ``(array([n]), array([0., 0.]))``.
        """
        if self._width == 0.0:
            return np.array([self._zeros_before_histogram], np.int64), np.zeros(2)
        edges = (np.arange(self.bins + 1) - self._zero_bin) * self._width
        return self._counts.copy(), edges

    def _choose_range(self) -> tuple[float, float]:
        if self._width == 0.0:
            return (0.0, 0.0)
        return self._choose_from_histogram()

    def _choose_from_histogram(self) -> tuple[float, float]:
        return (self._min, self._max)


class PercentileObserver(HistogramObserver):
    """``percentile``: clip each tail at ``percentile`` of the value distribution.

    The range is ``(P(100 - percentile), P(percentile))`` with ``P`` defined as ``np.percentile``'s
    default (linear interpolation between the order statistics at rank ``(n - 1) * q / 100``); each
    order statistic is estimated from the histogram by spreading a bin's values evenly across it, so
    the result is within about one bin width of ``np.percentile`` over all values seen. Clipping at a
    high percentile is the "percentile" calibration compared in Wu et al., "Integer Quantization for
    Deep Learning Inference: Principles and Empirical Evaluation" (NVIDIA, 2020).

    Args:
        percentile: in (50, 100]; default 99.999.
        bins, name: see :class:`HistogramObserver`.
    """

    method = "percentile"

    def __init__(self, *, percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS, name: str = "") -> None:
        super().__init__(bins=bins, name=name)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _choose_from_histogram(self) -> tuple[float, float]:
        counts, edges = self.histogram()
        cumulative = np.cumsum(counts)
        total = int(cumulative[-1])
        # np.percentile's default ("linear"): rank r = (n - 1) * q / 100 between order statistics.
        ranks = np.array([100.0 - self.percentile, self.percentile]) / 100.0 * (total - 1)
        below = np.floor(ranks)
        fraction = ranks - below
        order = np.concatenate([below, np.minimum(below + 1, total - 1)]).astype(np.int64)
        # the k-th smallest value lies in the first bin whose cumulative count exceeds k; the c values
        # of a bin are taken as evenly spread, the i-th of them at (i + 0.5) / c of the bin
        index = np.searchsorted(cumulative, order, side="right")
        before = np.where(index > 0, cumulative[index - 1], 0)
        statistic = edges[index] + (order - before + 0.5) / counts[index] * self._width
        statistic = np.where(order == 0, self._min, np.where(order == total - 1, self._max, statistic))
        values = statistic[:2] + fraction * (statistic[2:] - statistic[:2])
        return (float(values[0]), float(values[1]))


def kl_divergence_threshold(histogram: np.ndarray, num_quantized_bins: int = DEFAULT_QUANTIZED_BINS) -> int:
    """TensorRT's entropy calibration: how many histogram bins to keep (the clipping threshold).

    For every candidate ``i`` in ``num_quantized_bins .. len(histogram)``, ``P`` is the first ``i``
    bins with all the mass beyond them added to bin ``i - 1``, and ``Q`` is those ``i`` bins (without
    the outliers) merged into ``num_quantized_bins`` groups (``i // num_quantized_bins`` bins each, the
    last group taking the remainder), each group's mass spread evenly over the bins where ``P`` is
    nonzero. The result is the ``i`` minimizing ``KL(P || Q)``. Source: Migacz, "8-bit Inference with
    TensorRT", GTC 2017, as implemented in MXNet's ``_get_optimal_threshold``.

    To vectorize the whole search (all candidates at once, arrays ``[candidates, num_quantized_bins]``),
    KL is computed per group in closed form, ``sum_j P_j log P_j - sum_g P_g log(Q_g / (n_g sum Q))``,
    instead of expanding ``Q`` bin by bin. ``Q`` can only be 0 where ``P`` is not in bin ``i - 1``, when
    the outliers land in a last group whose unclipped bins are all empty; as MXNet's smoothing does,
    that bin gets ``Q = 1e-4`` counts instead of 0 (MXNet also shifts every other bin by a negligible
    amount, which is left out here). A candidate keeping no mass at all (every value beyond it, e.g.
    a ReLU output that never comes near zero) has no ``Q`` and divergence infinity, as MXNet's
    smoothing refuses an all-zero distribution.

    Args:
        histogram: counts of ``|x|`` in equal-width bins starting at 0, shape ``[n]``, non-negative.
        num_quantized_bins: quantization levels of the magnitude (128 for int8).

    Returns:
        the number of bins to keep; the threshold is that many bin widths.
    """
    counts = np.asarray(histogram, dtype=np.float64)
    n_bins = counts.size
    if n_bins <= num_quantized_bins:
        return n_bins
    total = counts.sum()
    if total <= 0:
        return n_bins
    with np.errstate(divide="ignore", invalid="ignore"):
        x_log_x = np.where(counts > 0, counts * np.log(counts), 0.0)
        cum_counts = np.concatenate([[0.0], np.cumsum(counts)])
        cum_nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
        cum_x_log_x = np.concatenate([[0.0], np.cumsum(x_log_x)])

        kept = np.arange(num_quantized_bins, n_bins + 1)  # candidates i
        outliers = total - cum_counts[kept]
        merged = kept // num_quantized_bins
        starts = np.arange(num_quantized_bins)[None, :] * merged[:, None]
        stops = starts + merged[:, None]
        stops[:, -1] = kept
        group_q = cum_counts[stops] - cum_counts[starts]  # Q mass per group, [candidates, groups]
        group_nonzero = (cum_nonzero[stops] - cum_nonzero[starts]).astype(np.float64)
        last_bin = counts[kept - 1]
        group_nonzero[:, -1] += (last_bin == 0) & (outliers > 0)
        group_p = group_q.copy()
        group_p[:, -1] += outliers
        p_last = last_bin + outliers
        sum_p_log_p = cum_x_log_x[kept - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        q_total = cum_counts[kept]
        kept_is_empty = q_total == 0  # every value is beyond the threshold: Q is undefined (MXNet: inf)
        # MXNet-style smoothing where it matters: a last group with no Q mass but outliers in P
        empty = (group_q[:, -1] == 0) & (group_p[:, -1] > 0)
        group_q[:, -1] = np.where(empty, _KL_EPSILON, group_q[:, -1])
        q_total = q_total + np.where(empty, _KL_EPSILON, 0.0)
        log_q = np.log(group_q / (group_nonzero * q_total[:, None]))
        cross = np.where(group_p > 0, group_p * log_q, 0.0).sum(axis=1)
        divergence = (sum_p_log_p - cross) / total - np.log(total)
    divergence = np.where(np.isnan(divergence) | kept_is_empty, np.inf, divergence)
    return int(kept[np.argmin(divergence)])


class EntropyObserver(HistogramObserver):
    """``entropy``: the KL-divergence threshold of TensorRT (Migacz, GTC 2017).

    The search (:func:`kl_divergence_threshold`) is symmetric by construction, so it runs on the
    histogram of ``|x|``: the signed histogram is folded at zero (exact, zero is a bin edge), giving a
    threshold ``T``; the range is ``(max(min, -T), min(max, T))``. For non-negative data (after
    ReLU) this is ``(0, T)``, as in TensorRT, with the search quantizing into ``2 *
    num_quantized_bins - 1`` levels because asymmetric int8 puts all 255 steps on the one side; for
    signed data both sides are clipped at the same magnitude, and a side that never reaches ``T``
    keeps its observed extreme.

    Args:
        num_quantized_bins: quantization levels of the magnitude (default 128, int8).
        bins, name: see :class:`HistogramObserver`; ``bins // 2`` must exceed ``num_quantized_bins``.
    """

    method = "entropy"

    def __init__(
        self, *, num_quantized_bins: int = DEFAULT_QUANTIZED_BINS, bins: int = DEFAULT_BINS, name: str = ""
    ) -> None:
        super().__init__(bins=bins, name=name)
        if num_quantized_bins < 2 or bins // 2 <= num_quantized_bins:
            raise ValueError(
                f"num_quantized_bins must be >= 2 and < bins // 2, got {num_quantized_bins} with bins={bins}"
            )
        self.num_quantized_bins = int(num_quantized_bins)

    def magnitude_histogram(self) -> np.ndarray:
        """Counts of ``|x|`` in bins ``[j*W, (j+1)*W)``, j = 0..max(k, bins-k)-1 (int64)."""
        positive = self._counts[self._zero_bin :]
        negative = self._counts[: self._zero_bin][::-1]
        folded = np.zeros(max(positive.size, negative.size), np.int64)
        folded[: positive.size] += positive
        folded[: negative.size] += negative
        return folded

    def _choose_from_histogram(self) -> tuple[float, float]:
        magnitudes = self.magnitude_histogram()
        levels = self.num_quantized_bins
        if self.observed_min >= 0 or self.observed_max <= 0:
            # One-sided data (ReLU outputs): asymmetric int8 spends all 2 * levels - 1 steps on
            # that side, so the KL search quantizes the magnitude into that many levels.
            levels = min(2 * levels - 1, magnitudes.size - 1)
        threshold = kl_divergence_threshold(magnitudes, levels) * self._width
        return (-threshold, threshold)


def quantization_error(
    values: np.ndarray, weights: np.ndarray, rmin: np.ndarray, rmax: np.ndarray, qmin: int = _INT8_MIN, qmax: int = _INT8_MAX
) -> np.ndarray:
    """Expected squared error of asymmetric quantize-dequantize for candidate ranges (vectorized).

    Each candidate ``(rmin, rmax)`` gets ``scale = (rmax - rmin) / (qmax - qmin)`` and
    ``zp = clip(round(qmin - rmin / scale), qmin, qmax)`` (as :func:`quantization_params`), so the
    representable values are ``[(qmin - zp) * scale, (qmax - zp) * scale]``. A value beyond them costs
    its clipping error ``(v - bound)**2``; a value inside costs the rounding error ``scale**2 / 12`` of
    the additive uniform noise model (Widrow; the clipping + rounding decomposition of Banner et al.,
    "Post training 4-bit quantization of convolutional networks for rapid-deployment", NeurIPS 2019). The noise model is used instead of rounding each value because ``values`` are
    histogram bin centers: rounding a few centers per quantization step aliases and makes the search
    pick a visibly worse range than the minimum on the raw data.

    Args:
        values: float [n] values (bin centers); weights: float [n] (counts), sum > 0.
        rmin, rmax: float [c] candidate ranges with ``rmin <= 0 <= rmax`` and ``rmax > rmin``.

    Returns:
        float64 [c]: ``sum(weights * error) / sum(weights)``, in squared real units.
    """
    rmin = np.asarray(rmin, np.float64)[:, None]
    rmax = np.asarray(rmax, np.float64)[:, None]
    values = np.asarray(values, np.float64)[None, :]
    weights = np.asarray(weights, np.float64)
    scale = (rmax - rmin) / (qmax - qmin)
    zero_point = np.clip(np.round(qmin - rmin / scale), qmin, qmax)
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    excess = np.maximum(np.maximum(low - values, values - high), 0.0)
    error = np.where(excess > 0, excess * excess, scale * scale / 12.0)
    return error @ weights / weights.sum()


class MseObserver(HistogramObserver):
    """``mse``: the range minimizing the expected squared error of asymmetric int8 quantization.

    The error of a candidate range is :func:`quantization_error` over the histogram (bin centers
    weighted by counts): clipping error of the values beyond the range plus rounding error inside. Candidates are a grid of fractions
    of the observed extremes, ``(-f_a * |min|, f_b * max)`` with ``f`` on 64 geometric steps from
    1/256 to 1 (one side is fixed at 0 when the data never cross it), then a 33 x 33 linear grid
    between the neighbours of the best pair. Every candidate is evaluated vectorized, in chunks of
    about 2**20 (candidate, bin) pairs. Minimizing the L2 quantization error over the clipping range
    is the "MSE" calibration of e.g. Banner et al., "Post training 4-bit quantization of convolutional
    networks for rapid-deployment" (NeurIPS 2019) and Nagel et al., "A White Paper on Neural Network
    Quantization" (2021), "range setting".

    Args:
        bins, name: see :class:`HistogramObserver`.
    """

    method = "mse"
    coarse_steps = 64
    fine_steps = 33
    smallest_fraction = 1.0 / 256

    def _choose_from_histogram(self) -> tuple[float, float]:
        counts, edges = self.histogram()
        used = counts > 0
        centers = ((edges[:-1] + edges[1:]) / 2)[used]
        weights = counts[used].astype(np.float64)
        left, right = max(-self._min, 0.0), max(self._max, 0.0)
        fractions = np.geomspace(self.smallest_fraction, 1.0, self.coarse_steps)
        left_fractions = fractions if left > 0 else np.zeros(1)
        right_fractions = fractions if right > 0 else np.zeros(1)
        best_left, best_right = self._best_pair(centers, weights, left, right, left_fractions, right_fractions)
        fine_left = self._neighbourhood(fractions, best_left) if left > 0 else np.zeros(1)
        fine_right = self._neighbourhood(fractions, best_right) if right > 0 else np.zeros(1)
        fine_left, fine_right = np.union1d(fine_left, [best_left]), np.union1d(fine_right, [best_right])
        best_left, best_right = self._best_pair(centers, weights, left, right, fine_left, fine_right)
        return (-best_left * left, best_right * right)

    def _neighbourhood(self, fractions: np.ndarray, best: float) -> np.ndarray:
        position = int(np.argmin(np.abs(fractions - best)))
        low = fractions[max(position - 1, 0)]
        high = fractions[min(position + 1, fractions.size - 1)]
        return np.linspace(low, high, self.fine_steps)

    @staticmethod
    def _best_pair(
        centers: np.ndarray, weights: np.ndarray, left: float, right: float, left_fractions: np.ndarray, right_fractions: np.ndarray
    ) -> tuple[float, float]:
        grid_left, grid_right = np.meshgrid(left_fractions, right_fractions, indexing="ij")
        grid_left, grid_right = grid_left.ravel(), grid_right.ravel()
        rmin, rmax = -grid_left * left, grid_right * right
        chunk = max(1, (1 << 20) // max(centers.size, 1))
        errors = np.concatenate([
            quantization_error(centers, weights, rmin[start : start + chunk], rmax[start : start + chunk])
            for start in range(0, rmin.size, chunk)
        ])
        best = int(np.argmin(errors))
        return float(grid_left[best]), float(grid_right[best])


_OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MseObserver,
}


def make_observer(method: str, **options) -> Observer:
    """A new observer for a calibration method.

    Args:
        method: one of :data:`METHODS`.
        **options: keyword arguments of that observer class (``name``; ``bins`` for the histogram
            methods; ``percentile``; ``num_quantized_bins``).

    Raises:
        ValueError: unknown method (names it and the valid ones), or an option the method does not take.
    """
    try:
        cls = _OBSERVERS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}") from None
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(f"calibration method {method!r}: bad options {sorted(options)}: {error}") from None


def quantization_params(rmin: float, rmax: float, qmin: int = _INT8_MIN, qmax: int = _INT8_MAX) -> tuple[float, int]:
    """Scale and zero point of asymmetric quantization of the real range ``[rmin, rmax]``.

    ``real = (q - zero_point) * scale`` (TFLite int8 quantization specification; ONNX
    QuantizeLinear/DequantizeLinear). The range is first extended to contain 0; then
    ``scale = (rmax - rmin) / (qmax - qmin)`` rounded to float32 and
    ``zero_point = clip(round(qmin - rmin / scale), qmin, qmax)`` (round half to even), so real 0
    maps exactly to ``zero_point`` and ``qmin``/``qmax`` dequantize to ``rmin``/``rmax`` within one scale.
    A range narrower than float32 ``tiny`` (e.g. a tensor that was always 0) gets scale
    :data:`DEGENERATE_RANGE_SCALE` (1.0) and zero point 0, as ONNX Runtime's ``compute_scale_zp``
    does; a tiny scale here would become ``s_in`` of downstream bias scales ``s_in * s_w`` and underflow.

    Args:
        rmin, rmax: the clipping range in real units (finite).
        qmin, qmax: the integer range, ``qmin <= 0 <= qmax`` and ``qmin < qmax`` (int8: -128, 127).

    Returns:
        (scale, zero_point): a float32-representable positive Python float and a Python int.

    Raises:
        ValueError: non-finite range, or a bad integer range.
    """
    if not (math.isfinite(rmin) and math.isfinite(rmax)):
        raise ValueError(f"quantization range must be finite, got ({rmin}, {rmax})")
    if not qmin <= 0 <= qmax or qmin >= qmax:
        raise ValueError(f"integer range must satisfy qmin <= 0 <= qmax and qmin < qmax, got [{qmin}, {qmax}]")
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    scale = np.float32((rmax - rmin) / (qmax - qmin))
    if not scale >= np.finfo(np.float32).tiny:
        return DEGENERATE_RANGE_SCALE, 0
    zero_point = int(np.clip(np.round(qmin - rmin / np.float64(scale)), qmin, qmax))
    return float(scale), zero_point


def symmetric_scale(absmax: np.ndarray, qmax: int = _INT8_MAX) -> np.ndarray:
    """Per-channel scales of symmetric quantization (zero point 0): ``scale = absmax / qmax``.

    The TFLite int8 quantization specification quantizes weights symmetrically per channel with
    zero point 0 and the range ``[-qmax, qmax]`` (int8: -127..127). A channel whose ``absmax`` is 0
    (all-zero weights) gets :data:`ZERO_WEIGHT_SCALE` (float32 eps, 2**-23) instead of 0: its weights
    still quantize to 0, and no scale is 0 or NaN. Callers building int32 biases with scale
    ``s_in * s_w`` must still check those biases fit int32.

    Args:
        absmax: float array, any shape (usually [channels]): max |w| per channel, finite, >= 0.
        qmax: the largest quantized magnitude (127 for int8).

    Returns:
        float32 array of the same shape, every element > 0.

    Raises:
        ValueError: negative or non-finite ``absmax``, or ``qmax < 1``.
    """
    absmax = np.asarray(absmax, dtype=np.float64)
    if qmax < 1:
        raise ValueError(f"qmax must be >= 1, got {qmax}")
    if not np.all(np.isfinite(absmax)) or np.any(absmax < 0):
        raise ValueError("absmax must be finite and >= 0")
    scale = (absmax / qmax).astype(np.float32)
    return np.where(scale >= np.finfo(np.float32).tiny, scale, np.float32(ZERO_WEIGHT_SCALE)).astype(np.float32)
