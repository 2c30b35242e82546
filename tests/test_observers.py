"""Calibration observers and quantization parameters, checked against values computed independently."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from edgecomp.errors import CalibrationDataError
from edgecomp.passes.quantize.observers import (
    METHODS,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    kl_divergence_threshold,
    make_observer,
    quantization_params,
    symmetric_scale,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST_CALIB = ROOT / "examples" / "mnist" / "mnist_calib_1000.npz"
KWS_SAMPLE = ROOT / "tests" / "assets" / "mlperf_tiny" / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy"


def quantize_dequantize(x: np.ndarray, rmin: float, rmax: float) -> np.ndarray:
    """Independent asymmetric int8 fake-quantization (TFLite spec formulas), float64."""
    scale = (rmax - rmin) / 255.0
    zero_point = np.clip(np.round(-128 - rmin / scale), -128, 127)
    q = np.clip(np.round(x / scale) + zero_point, -128, 127)
    return (q - zero_point) * scale


def gaussian_with_outliers(seed: int = 0) -> list[np.ndarray]:
    """10 batches of N(0.3, 1), 409,600 values, with 5 outliers at 9.5 to 16 sigma (asymmetric), float32."""
    rng = np.random.default_rng(seed)
    batches = [rng.normal(0.3, 1.0, size=(16, 64, 40)).astype(np.float32) for _ in range(10)]
    batches[2].flat[[5, 900, 3000]] = [14.0, -11.0, 12.5]
    batches[7].flat[[11, 2000]] = [16.0, -9.5]
    return batches


def array_state_bytes(observer) -> int:
    return sum(v.nbytes for v in vars(observer).values() if isinstance(v, np.ndarray))


# ------------------------------------------------------------------------------------------ minmax


def test_minmax_equals_numpy_min_max_over_real_batches():
    with np.load(MNIST_CALIB) as z:
        x = z["x"].astype(np.float32)
    kws = (np.load(KWS_SAMPLE).astype(np.float32) - 83) * 0.5847029089927673  # dequantized MFCC
    observer = MinMaxObserver(name="Input3")
    for start in range(0, 1000, 100):
        observer.update(x[start : start + 100] / 255.0 - 0.2)
    assert observer.range() == (float(np.min(x / 255.0 - 0.2)), float(np.max(x / 255.0 - 0.2)))
    mfcc = MinMaxObserver()
    for row in kws[0]:
        mfcc.update(row)
    assert mfcc.range() == (float(kws.min()), float(kws.max()))
    assert mfcc.range()[0] < -100 and mfcc.range()[1] > 0


def test_minmax_range_always_contains_zero_and_ignores_nan():
    observer = MinMaxObserver()
    observer.update(np.array([[2.0, np.nan, 5.0], [np.inf, 3.0, -np.inf]]))
    assert observer.range() == (0.0, 5.0)
    negative = MinMaxObserver()
    negative.update(np.array([-4.0, -1.5]))
    assert negative.range() == (-4.0, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_range_without_data_raises_naming_the_tensor(method):
    observer = make_observer(method, name="conv1_out")
    with pytest.raises(CalibrationDataError, match="conv1_out"):
        observer.range()
    observer.update(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(CalibrationDataError, match="conv1_out"):
        observer.range()


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gives_a_zero_range(method):
    observer = make_observer(method)
    for _ in range(3):
        observer.update(np.zeros((2, 8), np.float32))
    assert observer.range() == (0.0, 0.0)


def test_make_observer_unknown_method_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'kl'.*minmax, percentile, entropy, mse"):
        make_observer("kl")
    with pytest.raises(ValueError, match="bins"):
        make_observer("minmax", bins=128)
    assert isinstance(make_observer("percentile", percentile=99.9, bins=512), PercentileObserver)
    assert [make_observer(m).method for m in METHODS] == list(METHODS)


# --------------------------------------------------------------------------------------- histogram


def growing_batches() -> list[np.ndarray]:
    """Batches whose range grows on both sides, starting with an all-zero batch (ReLU-like)."""
    rng = np.random.default_rng(7)
    batches = [np.zeros(500)]
    batches += [np.abs(rng.normal(0, 0.01 * 3**i, 4000)) for i in range(4)]  # non-negative, growing
    batches += [rng.normal(-1.0, 2.0 + i, 4000) for i in range(4)]  # now negative values too
    batches += [rng.laplace(3.0, 4.0, 4000)]
    return batches


def test_histogram_with_growing_range_equals_numpy_histogram_of_all_data():
    observer = PercentileObserver(bins=2048)
    batches = growing_batches()
    for batch in batches:
        observer.update(batch)
    counts, edges = observer.histogram()
    data = np.concatenate(batches)
    assert edges[0] <= data.min() and edges[-1] > data.max()
    assert 0.0 in edges  # zero is a bin edge
    expected, _ = np.histogram(data, bins=edges)
    np.testing.assert_array_equal(counts, expected)
    # the width is at most twice that of binning all the data at once
    assert edges[1] - edges[0] < 2 * (data.max() - min(data.min(), 0)) / (2048 - 2)


@pytest.mark.parametrize("percentile", [99.999, 99.99, 99.0, 90.0])
def test_percentile_matches_numpy_percentile_within_a_bin(percentile):
    observer = PercentileObserver(percentile=percentile)
    batches = growing_batches()
    for batch in batches:
        observer.update(batch)
    data = np.concatenate(batches)
    width = np.diff(observer.histogram()[1][:2])[0]
    low, high = np.percentile(data, [100 - percentile, percentile])
    got_low, got_high = observer.range()
    assert got_low == pytest.approx(min(low, 0.0), abs=width)
    assert got_high == pytest.approx(high, abs=width)
    assert got_high < data.max()


def test_percentile_100_is_the_exact_min_and_max():
    batches = growing_batches()
    observer = PercentileObserver(percentile=100.0)
    for batch in batches:
        observer.update(batch)
    data = np.concatenate(batches)
    assert observer.range() == (data.min(), data.max())


@pytest.mark.parametrize("method", METHODS)
def test_state_size_does_not_grow_with_batches(method):
    rng = np.random.default_rng(3)
    observer = make_observer(method)
    for i in range(10):
        observer.update(rng.normal(0, 1 + i, 1000))
    after_10 = array_state_bytes(observer)
    for i in range(90):
        observer.update(rng.normal(0, 1 + i, 1000))
    assert array_state_bytes(observer) == after_10 == observer.state_nbytes()
    if isinstance(observer, HistogramObserver):
        assert after_10 == 2048 * 8  # the histogram counts, nothing else


# ------------------------------------------------------------------------------------ entropy, mse


def test_kl_threshold_keeps_everything_for_a_uniform_histogram():
    assert kl_divergence_threshold(np.full(2048, 100)) == 2048


def test_kl_threshold_clips_a_long_sparse_tail():
    histogram = np.zeros(2048)
    histogram[:200] = np.exp(-np.arange(200) / 40.0) * 1e5
    histogram[2000] = 1  # one outlier far out
    threshold = kl_divergence_threshold(histogram)
    assert 128 <= threshold < 2000


@pytest.mark.parametrize("cls", [EntropyObserver, MseObserver])
def test_entropy_and_mse_clip_outliers_below_the_max(cls):
    batches = gaussian_with_outliers()
    data = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    observer = cls()
    for batch in batches:
        observer.update(batch)
    low, high = observer.range()
    assert data.min() < low < 0 < high < data.max()
    assert high < 0.75 * data.max() and low > 0.75 * data.min()
    assert high > np.percentile(data, 99.9) and low < np.percentile(data, 0.1)  # not the body


def test_mse_range_has_lower_quantization_error_than_minmax():
    batches = gaussian_with_outliers()
    data = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    observers = {method: make_observer(method) for method in METHODS}
    for batch in batches:
        for observer in observers.values():
            observer.update(batch)
    error = {
        method: np.mean((data - quantize_dequantize(data, *observer.range())) ** 2)
        for method, observer in observers.items()
    }
    assert error["mse"] < 0.7 * error["minmax"]
    assert error["mse"] < error["entropy"] and error["mse"] < error["percentile"]
    # a nearby range is no better: the search found a minimum, not just an improvement
    low, high = observers["mse"].range()
    for factor in (0.8, 1.25):
        assert error["mse"] <= np.mean((data - quantize_dequantize(data, low * factor, high)) ** 2)
        assert error["mse"] <= np.mean((data - quantize_dequantize(data, low, high * factor)) ** 2)


def test_entropy_on_non_negative_data_starts_at_zero():
    rng = np.random.default_rng(5)
    observer = EntropyObserver()
    data = np.maximum(rng.normal(0.5, 1.0, 50000), 0.0)
    data[:3] = [40.0, 30.0, 25.0]
    observer.update(data)
    low, high = observer.range()
    assert low == 0.0 and 2.0 < high < 25.0


# ----------------------------------------------------------------------------- quantization params


@pytest.mark.parametrize("rmin, rmax", [(-1.0, 3.0), (-0.37, 0.011), (-5.5, 0.0), (0.0, 6.0), (2.0, 7.5), (-1e-3, 1e3)])
def test_quantization_params_zero_exact_and_endpoints_within_one_scale(rmin, rmax):
    scale, zero_point = quantization_params(rmin, rmax)
    assert isinstance(zero_point, int) and -128 <= zero_point <= 127
    assert scale > 0 and float(np.float32(scale)) == scale
    # real 0 quantizes to the zero point and dequantizes to exactly 0
    q0 = int(np.clip(np.round(0.0 / scale) + zero_point, -128, 127))
    assert q0 == zero_point and (q0 - zero_point) * scale == 0.0
    low, high = min(rmin, 0.0), max(rmax, 0.0)
    assert abs((-128 - zero_point) * scale - low) <= scale
    assert abs((127 - zero_point) * scale - high) <= scale


def test_quantization_params_known_values():
    scale, zero_point = quantization_params(-1.0, 3.0)
    assert scale == float(np.float32(4.0 / 255.0))
    assert zero_point == -64  # round(-128 + 1 / (4/255)) = round(-64.25)
    assert quantization_params(0.0, 6.0) == (float(np.float32(6.0 / 255)), -128)
    assert quantization_params(-2.0, 0.0) == (float(np.float32(2.0 / 255)), 127)
    assert quantization_params(0.0, 1.0, qmin=0, qmax=255) == (float(np.float32(1 / 255)), 0)


def test_quantization_params_degenerate_range():
    assert quantization_params(0.0, 0.0) == (1.0, 0)
    with pytest.raises(ValueError):
        quantization_params(float("nan"), 1.0)


def test_symmetric_scale_per_channel():
    absmax = np.array([0.5, 1.27, 0.0, 3e-3])
    scale = symmetric_scale(absmax)
    assert scale.dtype == np.float32 and scale.shape == (4,)
    np.testing.assert_array_equal(scale[[0, 1, 3]], (absmax[[0, 1, 3]] / 127).astype(np.float32))
    assert np.all(np.isfinite(scale)) and scale[2] > 0 and scale[2] < 1e-6
    assert np.all(np.round(absmax / scale) <= 127)
    with pytest.raises(ValueError):
        symmetric_scale(np.array([-1.0]))


def test_entropy_on_one_sided_data_searches_with_255_levels():
    """ReLU outputs use all 255 asymmetric int8 steps on [0, T]: the KL search quantizes into 255 levels."""
    rng = np.random.default_rng(7)
    relu_like = np.maximum(rng.standard_normal(200_000) * np.exp(rng.standard_normal(200_000)), 0).astype(np.float32)
    observer = EntropyObserver()
    for chunk in np.array_split(relu_like, 10):
        observer.update(chunk)
    low, high = observer.range()
    width = observer.histogram()[1][1] - observer.histogram()[1][0]
    expected = kl_divergence_threshold(observer.magnitude_histogram(), 255) * width
    assert low == 0.0
    assert high == pytest.approx(expected)
    assert high != pytest.approx(kl_divergence_threshold(observer.magnitude_histogram(), 128) * width)
    assert high < relu_like.max()  # it still clips the long tail


def test_entropy_never_clips_everything():
    """A ReLU output that never comes near zero (a bottleneck layer): no candidate may drop all mass."""
    values = np.random.default_rng(3).uniform(0.9, 3.7, 20_000).astype(np.float32)
    observer = EntropyObserver()
    observer.update(values)
    low, high = observer.range()
    assert low == 0.0
    assert high > values.min()  # the old search returned ~0.46, below every value: all clipped
