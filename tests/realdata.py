"""Paths of the real models and data copied into the repository (see tests/assets/PROVENANCE.md)."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT / "examples" / "mnist"
MNIST_MODEL = MNIST_DIR / "mnist-8.onnx"
MNIST_CALIB = MNIST_DIR / "mnist_calib_1000.npz"
MNIST_EVAL = MNIST_DIR / "mnist_eval_2000.npz"
ASSETS = ROOT / "tests" / "assets"
MLPERF = ASSETS / "mlperf_tiny"
