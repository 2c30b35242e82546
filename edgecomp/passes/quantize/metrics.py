"""Accuracy metrics comparing a compiled model's outputs with the FP32 reference.

All functions take arrays of the same shape, batch axis first; outputs are plain Python floats so
the compile report can be written as JSON.
"""

from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 * log10(sum(ref^2) / sum((ref - approx)^2))``.

    The standard definition (e.g. Krishnamoorthi, "Quantizing deep convolutional networks for
    efficient inference", 2018, section 3). Returns ``inf`` when the two are identical.
    """
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(approximation, dtype=np.float64)) ** 2)
    signal = np.sum(reference**2)
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def max_abs_error(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Largest absolute element-wise difference (units of the output)."""
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(approximation, np.float64))))


def top1_agreement(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Fraction (0..1) of samples whose argmax over the last axis is the same in both."""
    ref = np.asarray(reference).reshape(len(reference), -1)
    app = np.asarray(approximation).reshape(len(approximation), -1)
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(app, axis=1)))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction (0..1) of samples whose argmax over the flattened per-sample output equals the label."""
    flat = np.asarray(outputs).reshape(len(outputs), -1)
    return float(np.mean(np.argmax(flat, axis=1) == np.asarray(labels).reshape(-1)))
