"""Shared fixtures over the real models and data copied into the repository."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from realdata import MNIST_CALIB, MNIST_EVAL


@pytest.fixture(scope="session")
def mnist_eval() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [2000,1,28,28] raw 0..255, y int64 [2000]) of the real MNIST evaluation split."""
    data = np.load(MNIST_EVAL)
    return data["x"].astype(np.float32), data["y"]


@pytest.fixture
def mnist_small_calib(tmp_path) -> pathlib.Path:
    """The first 200 real calibration digits as an npz keyed by the model input name (fast tests)."""
    data = np.load(MNIST_CALIB)
    path = tmp_path / "calib200.npz"
    np.savez(path, Input3=data["x"][:200])
    return path
