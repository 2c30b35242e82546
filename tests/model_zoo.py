"""The real models of the test suite with their real data, shared by the backend tests.

Float models and their inputs (naive INT8 cases), the official int8 MLPerf Tiny / TFLM files with
their QDQ twins and int8 inputs, and helpers running a ``.tflite`` in LiteRT and TFLite Micro.
Provenance: tests/assets/PROVENANCE.md, examples/mnist. The AD log-mel data is read from ../shared
only (license unverified); tests needing it are marked ``needs_ad_data``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from canonicalize_support import (
    AD_DATA,
    AD_FLOAT,
    IC_FLOAT,
    KWS_FLOAT,
    VWW_FLOAT,
    image_batch,
    kws_input_float,
    kws_input_int8,
)
from realdata import ASSETS, MLPERF, MNIST_EVAL, MNIST_MODEL

from edgecomp.ir.load import load_model
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.naive import quantize_int8
from edgecomp.targets import get_target

TARGET = get_target("host-x86_64")
HELLO_WORLD = ASSETS / "tflm" / "hello_world" / "hello_world_float.onnx"
MICRO_SPEECH = ASSETS / "tflm" / "micro_speech"
needs_ad_data = pytest.mark.skipif(not AD_DATA.exists(), reason="AD log-mel data is only in the shared store")

#: name -> (QDQ twin, official int8 .tflite)
OFFICIAL = {
    "kws": (MLPERF / "kws" / "kws_ref_model_int8_qdq.onnx", MLPERF / "kws" / "kws_ref_model.tflite"),
    "vww": (MLPERF / "vww" / "vww_96_int8_qdq.onnx", MLPERF / "vww" / "vww_96_int8.tflite"),
    "ic": (MLPERF / "ic" / "pretrainedResnet_quant_qdq.onnx", MLPERF / "ic" / "pretrainedResnet_quant.tflite"),
    "ad": (MLPERF / "ad" / "ad01_int8_qdq.onnx", MLPERF / "ad" / "ad01_int8.tflite"),
    "micro_speech": (MICRO_SPEECH / "micro_speech_quantized_qdq.onnx", MICRO_SPEECH / "micro_speech_quantized.tflite"),
    "sww": (MLPERF / "sww" / "str_ww_ref_model_qdq.onnx", MLPERF / "sww" / "str_ww_ref_model.tflite"),
}
OFFICIAL_PARAMS = [pytest.param(name, marks=needs_ad_data) if name == "ad" else name for name in OFFICIAL]


# ------------------------------------------------------------------------------------------ data


def mnist_digits(count: int, split=MNIST_EVAL) -> np.ndarray:
    return np.load(split)["x"][:count].astype(np.float32)


def ad_windows() -> np.ndarray:
    return np.fromfile(AD_DATA, np.float32).reshape(40, 640)  # 40 windows of 5 frames x 128 mel bins


def int8_inputs(name: str) -> np.ndarray:
    """The real data of each official int8 model, quantized with its input parameters (shared README)."""
    if name == "kws":
        return kws_input_int8()
    if name in ("vww", "ic"):  # vww: q = pixel - 128 (scale 1/255, zp -128); ic: q = pixel - 128 (scale 1, zp -128)
        return (np.round(image_batch(96 if name == "vww" else 32, 1.0)) - 128).astype(np.int8)
    if name == "ad":
        return np.clip(np.round(ad_windows() / 0.3910152316093445) + 89, -128, 127).astype(np.int8)
    if name == "micro_speech":
        return np.stack([np.load(MICRO_SPEECH / f"{word}_1000ms_features_int8.npy").reshape(1960) for word in ("yes", "no", "silence", "noise")])
    if name == "sww":
        specs = np.load(MLPERF / "sww" / "calibration_samples.npz")["specs"]
        return np.clip(np.round(specs / 0.003701042616739869) - 128, -128, 127).astype(np.int8)
    raise KeyError(name)


def float_inputs(name: str) -> tuple:
    """(float model, input name, real input batches) for the naive INT8 cases."""
    if name == "mnist":
        return MNIST_MODEL, "Input3", [digit[None] for digit in mnist_digits(32)]
    if name == "kws":
        return KWS_FLOAT, "input_1", [kws_input_float()]
    if name == "vww":
        return VWW_FLOAT, "input_1", [image_batch(96, 1 / 255)]
    if name == "ic":
        return IC_FLOAT, "input_1", [image_batch(32, 1.0)]
    if name == "ad":
        return AD_FLOAT, "input_1", [ad_windows()]
    if name == "hello_world":
        return HELLO_WORLD, "serving_default_dense_input:0", [np.linspace(0.0, 2 * np.pi, 200, dtype=np.float32).reshape(200, 1)]
    raise KeyError(name)


# ------------------------------------------------------------------------------------------ helpers


def canonical(path, *, fold: bool) -> ir.Model:
    return PassManager(canonicalization_passes(fold_weight_dequantize=fold))(load_model(path)).model


def naive_model(name: str):
    """(QDQ IR quantized by edgecomp's naive INT8 on the real data, input name, batches)."""
    path, input_name, batches = float_inputs(name)
    model = canonical(path, fold=True)
    feeds = [{input_name: batch} for batch in batches]
    quantize_int8(model, feeds, method="minmax")
    return model, input_name, feeds


def litert_rows(data: bytes, x: np.ndarray, resolver: str = "AUTO") -> np.ndarray:
    """LiteRT output 0 for every row of ``x`` (one invoke per row, batch 1)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interpreter.allocate_tensors()
    index_in, index_out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    outputs = []
    for row in x:
        interpreter.set_tensor(index_in, np.ascontiguousarray(row[None]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(index_out).copy())
    return np.concatenate(outputs)


def tflm_rows(data: bytes, x: np.ndarray) -> np.ndarray:
    """TensorFlow Lite Micro's output 0 for every row of ``x`` (it has no dynamic batch)."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(data, arena_size=1 << 21)  # raises when TFLM refuses an op (version)
    outputs = []
    for row in x:
        interpreter.set_input(np.ascontiguousarray(row[None]), 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0).copy())
    return np.concatenate(outputs)


