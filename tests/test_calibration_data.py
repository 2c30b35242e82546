"""Calibration data loading: real MNIST/KWS data and photos from the repo; bad inputs built in tmp_path."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from edgecomp.errors import CalibrationDataError
from edgecomp.passes.quantize.calibration_data import (
    CalibrationDataset,
    ImagePreprocessing,
    InputSpec,
    input_specs,
    open_dataset,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST = ROOT / "examples" / "mnist"
MNIST_MODEL = MNIST / "mnist-8.onnx"
MNIST_CALIB = MNIST / "mnist_calib_1000.npz"
IMAGES = ROOT / "tests" / "assets" / "images"
KWS_SAMPLE = ROOT / "tests" / "assets" / "mlperf_tiny" / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy"
KWS_MODEL = ROOT / "tests" / "assets" / "mlperf_tiny" / "kws" / "kws_ref_model_float32.onnx"

MNIST_SPEC = InputSpec("Input3", (1, 1, 28, 28), np.dtype(np.float32))  # batch fixed at 1, as in the model
MNIST_DYNAMIC = InputSpec("Input3", ("N", 1, 28, 28), np.dtype(np.float32))
KWS_SPEC = InputSpec("input_1", ("unk__123", 49, 10, 1), np.dtype(np.float32))


def collect(dataset: CalibrationDataset, batch_size: int) -> dict[str, np.ndarray]:
    batches = list(dataset.batches(batch_size))
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def raises_naming(*fragments: str):
    """Context manager: a one-line CalibrationDataError whose message contains every fragment."""

    class _Check:
        def __enter__(self):
            self._raises = pytest.raises(CalibrationDataError)
            self.info = self._raises.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._raises.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for fragment in fragments:
                assert str(fragment) in message, f"{fragment!r} not in {message!r}"
            assert self.info.value.exit_code == 4
            return suppressed

    return _Check()


# ---------------------------------------------------------------------------------- model inputs


def test_input_specs_skip_initializers_and_keep_symbolic_dims():
    assert input_specs(onnx.load(MNIST_MODEL)) == (MNIST_SPEC,)
    (kws,) = input_specs(onnx.load(KWS_MODEL))
    assert kws.name == "input_1" and isinstance(kws.shape[0], str) and kws.shape[1:] == (49, 10, 1)
    assert kws.fixed_batch_size is None and MNIST_SPEC.fixed_batch_size == 1


# ------------------------------------------------------------------------------------------- npz


def test_npz_batches_equal_source_slices_cast_to_float32():
    with np.load(MNIST_CALIB) as z:
        x, y = z["x"], z["y"]
    dataset = open_dataset(MNIST_CALIB, [MNIST_DYNAMIC])
    assert dataset.num_samples == 1000
    np.testing.assert_array_equal(dataset.labels, y)
    assert dataset.labels.dtype == np.int64
    batches = list(dataset.batches(64))
    assert [len(b["Input3"]) for b in batches] == [64] * 15 + [40]
    for i, batch in enumerate(batches):
        assert batch["Input3"].dtype == np.float32
        np.testing.assert_array_equal(batch["Input3"], x[i * 64 : (i + 1) * 64].astype(np.float32))
    assert batches[3]["Input3"].max() == 255.0  # raw 0..255 pixels, not rescaled


def test_batches_do_not_share_memory_with_the_source():
    dataset = open_dataset(MNIST_CALIB, [MNIST_DYNAMIC], limit=4)
    first = next(iter(dataset.batches(4)))["Input3"]
    first[:] = -1.0
    again = next(iter(dataset.batches(4)))["Input3"]
    assert again.min() == 0.0


def test_fixed_batch_dimension_forces_the_batch_size_and_limit_takes_the_first_samples():
    with np.load(MNIST_CALIB) as z:
        x, y = z["x"][:5], z["y"][:5]
    dataset = open_dataset(MNIST_CALIB, input_specs(onnx.load(MNIST_MODEL)), limit=5)
    batches = list(dataset.batches(32))  # mnist-8's batch axis is fixed at 1
    assert [b["Input3"].shape for b in batches] == [(1, 1, 28, 28)] * 5
    np.testing.assert_array_equal(np.concatenate([b["Input3"] for b in batches]), x.astype(np.float32))
    np.testing.assert_array_equal(dataset.labels, y)
    assert dataset.num_batches(32) == 5


def test_fixed_batch_larger_than_one_skips_the_incomplete_last_batch(tmp_path):
    with np.load(MNIST_CALIB) as z:
        x = z["x"][:10]
    np.savez(tmp_path / "c.npz", x=x)
    spec = InputSpec("Input3", (4, 1, 28, 28), np.dtype(np.float32))
    batches = list(open_dataset(tmp_path / "c.npz", [spec]).batches(3))
    assert [len(b["Input3"]) for b in batches] == [4, 4]
    np.testing.assert_array_equal(batches[1]["Input3"], x[4:8].astype(np.float32))


def test_npz_keyed_by_input_names_for_a_two_input_model(tmp_path):
    kws = np.load(KWS_SAMPLE)
    a = np.repeat(kws, 3, axis=0)
    b = np.arange(3 * 7, dtype=np.float64).reshape(3, 7)
    np.savez(tmp_path / "two.npz", mfcc=a, extra=b, y=np.array([5, 5, 1]))
    specs = [InputSpec("mfcc", (None, 49, 10, 1), np.float32), InputSpec("extra", ("n", 7), np.float32)]
    got = collect(open_dataset(tmp_path / "two.npz", specs), 2)
    np.testing.assert_array_equal(got["mfcc"], a.astype(np.float32))
    np.testing.assert_array_equal(got["extra"], b.astype(np.float32))


def test_integer_data_feeds_an_integer_input_unchanged(tmp_path):
    kws = np.load(KWS_SAMPLE)  # int8, already quantized with the model's input parameters
    spec = InputSpec("input_1", (None, 49, 10, 1), np.int8)
    batch = next(iter(open_dataset(KWS_SAMPLE, [spec])))["input_1"]
    assert batch.dtype == np.int8
    np.testing.assert_array_equal(batch, kws)
    # int16 values that fit int8 are accepted
    np.savez(tmp_path / "wide.npz", x=kws.astype(np.int16))
    np.testing.assert_array_equal(next(iter(open_dataset(tmp_path / "wide.npz", [spec])))["input_1"], kws)


# ------------------------------------------------------------------------------- npy and folders


def test_single_npy_file_of_int8_mfcc_into_a_float_input():
    kws = np.load(KWS_SAMPLE)
    dataset = open_dataset(KWS_SAMPLE, [KWS_SPEC])
    assert dataset.num_samples == 1 and dataset.labels is None
    batch = next(iter(dataset))["input_1"]
    assert batch.dtype == np.float32 and batch.shape == (1, 49, 10, 1)
    np.testing.assert_array_equal(batch, kws.astype(np.float32))
    assert batch[0, 0, 0, 0] == float(kws[0, 0, 0, 0])


def test_npy_folder_one_sample_per_file_with_or_without_batch_axis(tmp_path):
    kws = np.load(KWS_SAMPLE)  # [1, 49, 10, 1]
    samples = [kws[0], kws[0][::-1], kws[0] // 2]
    np.save(tmp_path / "b.npy", samples[1][None])  # with a leading batch axis of 1
    np.save(tmp_path / "a.npy", samples[0])  # without
    np.save(tmp_path / "c.npy", samples[2][None])
    (tmp_path / "notes.txt").write_text("ignored")
    dataset = open_dataset(tmp_path, [KWS_SPEC])
    assert dataset.num_samples == 3
    got = collect(dataset, 2)["input_1"]
    np.testing.assert_array_equal(got, np.stack(samples).astype(np.float32))  # sorted by name: a, b, c


def test_npy_sample_subfolders_feed_several_inputs(tmp_path):
    kws = np.load(KWS_SAMPLE)[0]
    specs = [InputSpec("mfcc", ("N", 49, 10, 1), np.float32), InputSpec("gain", ("N", 1), np.float32)]
    for i in range(3):
        sample = tmp_path / f"{i:04d}"
        sample.mkdir()
        np.save(sample / "mfcc.npy", kws + i)
        np.save(sample / "gain.npy", np.array([[0.5 * i]]))
    got = collect(open_dataset(tmp_path, specs), 2)
    np.testing.assert_array_equal(got["mfcc"], np.stack([kws + i for i in range(3)]).astype(np.float32))
    np.testing.assert_array_equal(got["gain"], np.array([[0.0], [0.5], [1.0]], np.float32))


# ---------------------------------------------------------------------------- ONNX test data sets


def test_model_folder_test_data_sets_yield_exactly_the_pb_arrays():
    expected = [numpy_helper.to_array(onnx.load_tensor(MNIST / f"test_data_set_{i}" / "input_0.pb")) for i in range(3)]
    dataset = open_dataset(MNIST, input_specs(onnx.load(MNIST_MODEL)))
    batches = [b["Input3"] for b in dataset]
    assert len(batches) == 3
    for got, want in zip(batches, expected):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(expected[0], expected[1])
    single = list(open_dataset(MNIST / "test_data_set_2", [MNIST_SPEC]))
    assert len(single) == 1
    np.testing.assert_array_equal(single[0]["Input3"], expected[2])


def test_test_data_sets_map_by_tensor_name_and_batch_across_sets(tmp_path):
    specs = [InputSpec("a", ("N", 2), np.float32), InputSpec("b", ("N", 3), np.float32)]
    set0, set1 = tmp_path / "test_data_set_0", tmp_path / "test_data_set_1"
    set0.mkdir()
    set1.mkdir()
    a0, b0 = np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(9, dtype=np.float32).reshape(3, 3)
    a1, b1 = -np.arange(4, dtype=np.float32).reshape(2, 2), -np.arange(6, dtype=np.float32).reshape(2, 3)
    # set 0 by position (unnamed tensors); set 1 with the files swapped but named after the inputs
    onnx.save_tensor(numpy_helper.from_array(a0), str(set0 / "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(b0), str(set0 / "input_1.pb"))
    onnx.save_tensor(numpy_helper.from_array(b1, name="b"), str(set1 / "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(a1, name="a"), str(set1 / "input_1.pb"))
    dataset = open_dataset(tmp_path, specs)
    assert dataset.num_samples == 5
    batches = list(dataset.batches(4))
    assert [len(b["a"]) for b in batches] == [4, 1]
    np.testing.assert_array_equal(batches[0]["a"], np.concatenate([a0, a1[:1]]))
    np.testing.assert_array_equal(batches[0]["b"], np.concatenate([b0, b1[:1]]))
    np.testing.assert_array_equal(batches[1]["b"], b1[1:])


# ------------------------------------------------------------------------------------------ images


def test_image_preprocessing_matches_an_independent_computation(tmp_path):
    with Image.open(IMAGES / "skimage_chelsea.png") as image:
        crop = image.convert("RGB").crop((100, 50, 140, 80))  # 40 x 30 real photo pixels
    crop.save(tmp_path / "chelsea_crop.png")
    pixels = np.asarray(crop)  # [30, 40, 3] uint8
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    prep = ImagePreprocessing(size=(30, 40), layout="NCHW", channels=3, mean=mean, std=std)
    spec = InputSpec("image", ("N", 3, 30, 40), np.float32)
    x = next(iter(open_dataset(tmp_path, [spec], preprocessing=prep)))["image"]
    assert x.shape == (1, 3, 30, 40) and x.dtype == np.float32
    for row, col, channel in [(0, 0, 0), (7, 31, 1), (29, 39, 2), (12, 5, 2)]:
        expected = (pixels[row, col, channel] / 255.0 - mean[channel]) / std[channel]
        assert x[0, channel, row, col] == pytest.approx(expected, abs=1e-5)


def test_image_folder_with_preprocessing_toml_resizes_nhwc_like_the_vww_recipe(tmp_path):
    for name in ("skimage_retina.jpg", "skimage_coffee.png", "skimage_camera.png"):
        (tmp_path / name).write_bytes((IMAGES / name).read_bytes())
    (tmp_path / "LICENSE.txt").write_text("not an image")
    (tmp_path / "preprocessing.toml").write_text('size = [96, 96]\nlayout = "NHWC"\nchannels = 3\nscale = 0.00392156862745098\n')
    spec = InputSpec("input_1", ("unk__1", 96, 96, 3), np.float32)
    dataset = open_dataset(tmp_path, [spec])
    assert dataset.num_samples == 3
    got = collect(dataset, 2)["input_1"]
    # the README's VWW recipe, in sorted file order (camera is grayscale: converted to RGB)
    for i, name in enumerate(sorted(["skimage_retina.jpg", "skimage_coffee.png", "skimage_camera.png"])):
        with Image.open(IMAGES / name) as image:
            want = np.asarray(image.convert("RGB").resize((96, 96), Image.BILINEAR), np.float32) / 255
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_preprocessing_argument_overrides_the_folder_file_grayscale(tmp_path):
    (tmp_path / "camera.png").write_bytes((IMAGES / "skimage_camera.png").read_bytes())
    (tmp_path / "preprocessing.toml").write_text("size = [8, 8]\n")
    prep = ImagePreprocessing(size=(28, 28), channels=1, scale=1.0)
    spec = InputSpec("Input3", (1, 1, 28, 28), np.float32)
    x = next(iter(open_dataset(tmp_path, [spec], preprocessing=prep)))["Input3"]
    with Image.open(IMAGES / "skimage_camera.png") as image:
        want = np.asarray(image.convert("L").resize((28, 28), Image.BILINEAR), np.float32)
    np.testing.assert_array_equal(x[0, 0], want)


def test_preprocessing_from_file_reads_every_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('size = [32, 48]\nlayout = "NHWC"\nchannels = 1\nscale = 1.0\nmean = 127.5\nstd = [127.5]\ndtype = "float16"\n')
    prep = ImagePreprocessing.from_file(path)
    assert prep == ImagePreprocessing(size=(32, 48), layout="NHWC", channels=1, scale=1.0, mean=(127.5,), std=(127.5,), dtype="float16")
    assert prep.sample_shape() == (32, 48, 1)


def test_preprocessing_layout_in_any_letter_case(tmp_path):
    """`layout = "nhwc"` as `--io-layout nhwc` spells it; the default scale is 1/255."""
    path = tmp_path / "p.toml"
    path.write_text('size = [32, 32]\nlayout = "nhwc"\n')
    prep = ImagePreprocessing.from_file(path)
    assert prep.layout == "NHWC" and prep.sample_shape() == (32, 32, 3) and prep.scale == pytest.approx(1 / 255)


@pytest.mark.parametrize(
    "text, key",
    [
        ("size = [96, 96]\ncolour = 'rgb'\n", "colour"),
        ("size = [96]\n", "size"),
        ("layout = 'NCHW'\n", "size"),
        ("size = [96, 96]\nlayout = 'CHW'\n", "layout"),
        ("size = [96, 96]\nchannels = 4\n", "channels"),
        ("size = [96, 96]\nmean = [0.5, 0.5]\n", "mean"),
        ("size = [96, 96]\nstd = 0\n", "std"),
        ("size = [96, 96]\ndtype = 'int8'\n", "dtype"),
    ],
)
def test_preprocessing_file_errors_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "preprocessing.toml"
    path.write_text(text)
    with raises_naming(str(path), f"'{key}'"):
        ImagePreprocessing.from_file(path)


def test_preprocessing_file_that_is_not_toml(tmp_path):
    path = tmp_path / "preprocessing.toml"
    path.write_text("size = [96, 96\n")
    with raises_naming(str(path), "TOML"):
        ImagePreprocessing.from_file(path)


# ------------------------------------------------------------------------------------------ errors


def test_missing_path(tmp_path):
    with raises_naming(tmp_path / "absent.npz", "not found"):
        open_dataset(tmp_path / "absent.npz", [MNIST_SPEC])


def test_unknown_format(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with raises_naming(tmp_path / "data.csv", "unknown"):
        open_dataset(tmp_path / "data.csv", [MNIST_SPEC])


def test_empty_folder(tmp_path):
    with raises_naming(tmp_path, "0 samples"):
        open_dataset(tmp_path, [MNIST_SPEC])


def test_empty_npz(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 1, 28, 28), np.uint8))
    with raises_naming(tmp_path / "e.npz", "no samples"):
        open_dataset(tmp_path / "e.npz", [MNIST_SPEC])


def test_input_without_data(tmp_path):
    np.savez(tmp_path / "m.npz", a=np.zeros((2, 2), np.float32))
    specs = [InputSpec("a", ("N", 2), np.float32), InputSpec("b", ("N", 3), np.float32)]
    with raises_naming(tmp_path / "m.npz", "'b'", "no data"):
        open_dataset(tmp_path / "m.npz", specs)


def test_key_matching_no_input(tmp_path):
    with np.load(MNIST_CALIB) as z:
        np.savez(tmp_path / "k.npz", Input3=z["x"][:3], images=z["x"][:3])
    with raises_naming(tmp_path / "k.npz", "'images'"):
        open_dataset(tmp_path / "k.npz", [MNIST_SPEC])


def test_sample_shape_not_fitting(tmp_path):
    with np.load(MNIST_CALIB) as z:
        np.savez(tmp_path / "s.npz", x=z["x"][:3, :, :27, :])
    with raises_naming(tmp_path / "s.npz", "'x'", "Input3", "[1,27,28]"):
        open_dataset(tmp_path / "s.npz", [MNIST_SPEC])


def test_sample_missing_the_sample_axis(tmp_path):
    with np.load(MNIST_CALIB) as z:
        np.savez(tmp_path / "r.npz", x=z["x"][0])  # one sample without the sample axis
    with raises_naming(tmp_path / "r.npz", "Input3"):
        open_dataset(tmp_path / "r.npz", [MNIST_SPEC])


def test_float_data_into_an_integer_input(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.load(KWS_SAMPLE).astype(np.float32))
    spec = InputSpec("input_1", (None, 49, 10, 1), np.int8)
    with raises_naming(tmp_path / "f.npz", "input_1", "float32"):
        open_dataset(tmp_path / "f.npz", [spec])


def test_integer_values_out_of_range_for_an_integer_input(tmp_path):
    np.savez(tmp_path / "w.npz", x=np.load(KWS_SAMPLE).astype(np.int16) * 4)
    spec = InputSpec("input_1", (None, 49, 10, 1), np.int8)
    with raises_naming(tmp_path / "w.npz", "input_1"):
        list(open_dataset(tmp_path / "w.npz", [spec]))


def test_non_numeric_data(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.array([["a", "b"]]))
    with raises_naming(tmp_path / "t.npz", "non-numeric", "v"):
        open_dataset(tmp_path / "t.npz", [InputSpec("v", ("N", 2), np.float32)])


def test_inputs_with_different_numbers_of_samples(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((4, 2)), b=np.zeros((3, 3)))
    specs = [InputSpec("a", ("N", 2), np.float32), InputSpec("b", ("N", 3), np.float32)]
    with raises_naming(tmp_path / "d.npz", "different numbers of samples", "'a'", "'b'"):
        open_dataset(tmp_path / "d.npz", specs)


def test_labels_not_one_per_sample(tmp_path):
    with np.load(MNIST_CALIB) as z:
        np.savez(tmp_path / "l.npz", x=z["x"][:5], y=z["y"][:4])
    with raises_naming(tmp_path / "l.npz", "'y'", "4 labels"):
        open_dataset(tmp_path / "l.npz", [MNIST_SPEC])


def test_image_folder_without_preprocessing(tmp_path):
    (tmp_path / "chelsea.png").write_bytes((IMAGES / "skimage_chelsea.png").read_bytes())
    with raises_naming(tmp_path, "preprocessing"):
        open_dataset(tmp_path, [KWS_SPEC])


def test_image_preprocessing_not_fitting_the_input(tmp_path):
    (tmp_path / "chelsea.png").write_bytes((IMAGES / "skimage_chelsea.png").read_bytes())
    prep = ImagePreprocessing(size=(96, 96), layout="NCHW")
    with raises_naming(tmp_path, "input_1", "[3,96,96]"):
        open_dataset(tmp_path, [InputSpec("input_1", ("N", 96, 96, 3), np.float32)], preprocessing=prep)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with raises_naming(tmp_path / "broken.png", "image"):
        open_dataset(tmp_path, [MNIST_SPEC], preprocessing=ImagePreprocessing(size=(28, 28), channels=1))


def test_npy_folder_file_with_several_samples(tmp_path):
    np.save(tmp_path / "a.npy", np.repeat(np.load(KWS_SAMPLE), 2, axis=0))
    with raises_naming(tmp_path / "a.npy", "input_1", "2 samples"):
        open_dataset(tmp_path, [KWS_SPEC])


def test_npy_folder_later_file_with_a_wrong_shape_fails_when_read(tmp_path):
    kws = np.load(KWS_SAMPLE)
    np.save(tmp_path / "a.npy", kws)
    np.save(tmp_path / "b.npy", kws[:, :48])
    dataset = open_dataset(tmp_path, [KWS_SPEC])
    with raises_naming(tmp_path / "b.npy", "input_1"):
        list(dataset.batches(1))


def test_sample_subfolder_missing_an_input_file(tmp_path):
    specs = [InputSpec("a", ("N", 2), np.float32), InputSpec("b", ("N", 2), np.float32)]
    (tmp_path / "0").mkdir()
    np.save(tmp_path / "0" / "a.npy", np.zeros(2))
    with raises_naming(tmp_path / "0", "'b'"):
        open_dataset(tmp_path, specs)


def test_sample_subfolder_file_matching_no_input(tmp_path):
    (tmp_path / "0").mkdir()
    np.save(tmp_path / "0" / "a.npy", np.zeros(2))
    np.save(tmp_path / "0" / "z.npy", np.zeros(2))
    with raises_naming(tmp_path / "0" / "z.npy", "no model input"):
        open_dataset(tmp_path, [InputSpec("a", ("N", 2), np.float32)])


def test_test_data_set_tensor_matching_no_input(tmp_path):
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    onnx.save_tensor(numpy_helper.from_array(np.zeros((1, 2), np.float32)), str(folder / "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(np.zeros((1, 2), np.float32)), str(folder / "input_1.pb"))
    with raises_naming(folder / "input_1.pb", "no model input"):
        open_dataset(folder, [InputSpec("a", ("N", 2), np.float32)])


def test_test_data_set_with_a_wrong_shape(tmp_path):
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    onnx.save_tensor(numpy_helper.from_array(np.zeros((1, 1, 28, 27), np.float32)), str(folder / "input_0.pb"))
    with raises_naming(folder / "input_0.pb", "Input3"):
        open_dataset(tmp_path, [MNIST_SPEC])


def test_several_input_npy_folder_needs_subfolders(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(2))
    specs = [InputSpec("a", ("N", 2), np.float32), InputSpec("b", ("N", 2), np.float32)]
    with raises_naming(tmp_path, "2 inputs"):
        open_dataset(tmp_path, specs)


# ------------------------------------------------------------------------- npz members, not loaded


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_members_are_read_batch_by_batch_not_loaded_whole(tmp_path, save):
    """A stored member is memory-mapped inside the zip, a compressed one decompressed batch by batch;
    the batches equal the array's slices, pass after pass and in any order."""
    x = np.random.default_rng(1).integers(0, 255, (103, 1, 28, 28)).astype(np.uint8)
    save(tmp_path / "d.npz", x=x, y=np.arange(103))
    dataset = open_dataset(tmp_path / "d.npz", [MNIST_DYNAMIC])
    member = dataset._source.arrays["Input3"]
    assert type(member) is not np.ndarray  # a memmap or a stream, not the whole array in memory
    if save is np.savez:
        assert isinstance(member, np.memmap)
    for batch_size in (1, 10, 32, 500):
        for _ in range(2):
            np.testing.assert_array_equal(collect(dataset, batch_size)["Input3"], x.astype(np.float32))
    np.testing.assert_array_equal(member[50:60], x[50:60])
    np.testing.assert_array_equal(member[5:7], x[5:7])  # backwards: the stream starts over
    np.testing.assert_array_equal(dataset.labels, np.arange(103))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_member_with_a_bad_crc_is_refused_when_opened(tmp_path, save):
    x = np.full((4, 1, 28, 28), 7, np.uint8)
    save(tmp_path / "ok.npz", x=x)
    data = bytearray((tmp_path / "ok.npz").read_bytes())
    start = data.index(b"x.npy") + 200 if save is np.savez else data.index(b"x.npy") + 40
    data[start] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with raises_naming(tmp_path / "bad.npz", "key 'x'", "cannot read array", "CRC"):
        open_dataset(tmp_path / "bad.npz", [MNIST_SPEC])


def test_npz_member_in_fortran_order_is_loaded_whole(tmp_path):
    x = np.asfortranarray(np.arange(6 * 5, dtype=np.float32).reshape(6, 5))
    np.savez(tmp_path / "f.npz", x=x)
    dataset = open_dataset(tmp_path / "f.npz", [InputSpec("v", ("N", 5), np.float32)])
    np.testing.assert_array_equal(collect(dataset, 4)["v"], x)
