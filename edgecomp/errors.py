"""The edgecomp error tree.

Every error the user can cause is an :class:`EdgecompError` subclass with a documented process exit
code. Messages are one line and name the file, node or key at fault; the CLI prints
``edgecomp: error: <message>`` on stderr and exits with :attr:`EdgecompError.exit_code`, no traceback.

Exit codes (also listed in the README):

====  ==========================  =====================================================================
code  class                       meaning
====  ==========================  =====================================================================
0     -                           success
1     EdgecompError               unexpected internal failure (a bug: please report it)
2     UsageError                  bad command-line usage: unknown option, missing argument, options
                                  that contradict each other (click's own usage errors exit 2 too)
3     ModelError                  the model file is missing, not ONNX, truncated or invalid
4     CalibrationDataError        calibration/eval data missing, empty, or not fitting the model
5     TargetError                 unknown target, or a target TOML with a bad key or value
6     PluginError                 unknown backend, or a plugin that fails to load or breaks the contract
7     UnsupportedError            the model uses ops/dtypes the chosen backend or target cannot run
8     BudgetError                 an artifact does not fit the target's flash or RAM budget
9     VerificationError           the produced artifact disagrees with the reference beyond tolerance
10    OutputError                 the output path cannot be used (an existing file, not writable)
11    PlanError                   a quantization plan file names unknown nodes or impossible settings
====  ==========================  =====================================================================
"""

from __future__ import annotations


class EdgecompError(Exception):
    """Base class of every error edgecomp reports to the user.

    Attributes:
        exit_code: the process exit code the CLI returns for this error (int, 1..255).
    """

    exit_code: int = 1


class UsageError(EdgecompError):
    """Options that do not go together (e.g. a selective goal with ``--quantize naive``)."""

    exit_code = 2


class ModelError(EdgecompError):
    """The model file is missing, unreadable, not ONNX, truncated, or fails validation."""

    exit_code = 3


class CalibrationDataError(EdgecompError):
    """Calibration or evaluation data is missing, empty, or does not fit the model's inputs."""

    exit_code = 4


class TargetError(EdgecompError):
    """Unknown target name, or a target TOML file with a missing/invalid key."""

    exit_code = 5


class PluginError(EdgecompError):
    """Unknown backend name, or a plugin that fails to load or violates the plugin contract."""

    exit_code = 6


class UnsupportedError(EdgecompError):
    """The model needs an operator, dtype or quantization the backend/target does not support."""

    exit_code = 7


class BudgetError(EdgecompError):
    """An artifact is larger than the target's flash or RAM budget."""

    exit_code = 8


class VerificationError(EdgecompError):
    """The lowered artifact's outputs disagree with the reference beyond the stated tolerance."""

    exit_code = 9


class OutputError(EdgecompError):
    """The output location cannot be used (it is an existing file, or not writable)."""

    exit_code = 10


class PlanError(EdgecompError):
    """A quantization plan names unknown nodes/tensors or an impossible combination of settings."""

    exit_code = 11
