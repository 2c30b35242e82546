"""Calibration (representative) data for post-training quantization: load, check, and stream in batches.

:func:`open_dataset` detects the source from its path, checks it against the model inputs
(:class:`InputSpec`) once, and returns a :class:`CalibrationDataset` that yields batches
(``dict[input name -> np.ndarray]``, batch axis first, cast to the model input dtype).

Sources
-------
``file.npz``
    Arrays keyed by model input name; a single-input model may use the key ``x`` instead. Axis 0 is
    the sample axis. Key ``y`` holds optional integer labels, one per sample (never an input, unless
    the model has an input named ``y``). Any other key is an error.
``file.npy``
    One array for a single-input model: axis 0 is the sample axis when the array has the input's
    rank; an array of rank ``rank - 1`` is one sample. Memory-mapped, so only batches are read.
folder of ``.npy`` files (single-input model)
    Each file is one sample, with or without a leading batch axis of length 1. Files are taken in
    sorted name order.
folder of sample subfolders (any number of inputs)
    Each subfolder (sorted by name, e.g. ``0000/``, ``0001/``) is one sample and holds one
    ``<input name>.npy`` per model input, each one sample with or without a leading batch axis of 1.
folder of images (``.png .jpg .jpeg .bmp``, single-input model)
    Needs an :class:`ImagePreprocessing`: the ``preprocessing`` argument, else a
    ``preprocessing.toml`` in the folder. Files are taken in sorted name order; other files are ignored.
ONNX test data sets
    A ``test_data_set_*`` folder, or a folder (e.g. the model's folder) containing several. Each set
    holds ``input_K.pb`` TensorProto files (ONNX backend-test layout). ``input_K.pb`` feeds the input
    whose name equals the tensor's name, else the K-th model input. A tensor with the input's rank is a
    batch (axis 0 = samples); one of rank ``rank - 1`` is one sample.

Checks (each failure raises a one-line :class:`~edgecomp.errors.CalibrationDataError` naming the file,
key or input): the path exists and has a known format; at least one sample; every model input has
data and every key/file matches an input; each sample's shape fits the input shape (static dims equal,
dynamic dims anything); the dtype converts safely (bool/integer/float data into a float input;
bool/integer data into an integer input, values checked against its range; float data into an
integer input is an error, as is non-numeric data); all inputs have the same number of samples.

Memory: nothing is copied as a whole. An ``.npz`` member stored uncompressed (``np.savez``) is
memory-mapped at its offset inside the zip; a compressed one (``np.savez_compressed``) is
decompressed batch by batch as batches are requested (from its start again when an earlier batch is
asked for, e.g. a second pass). Either is checked once when opened (streamed through, so its CRC
and length are verified with one block in memory); a member that cannot be read this way (an object
array, Fortran order, a damaged or unusual member) is loaded whole as before, with the same errors.
Labels (key ``y``) are loaded. Batches are slices cast one batch at a time; files are read as the
batches that contain them are requested.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import pathlib
import re
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgecomp.errors import CalibrationDataError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
"""Samples per batch when the model's batch dimension is dynamic and no batch size is given."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PREPROCESSING_FILE_NAME = "preprocessing.toml"
LABELS_KEY = "y"
SINGLE_INPUT_KEY = "x"
TEST_DATA_SET_PREFIX = "test_data_set_"
_TEST_INPUT_FILE = re.compile(r"^input_(\d+)\.pb$")


# --------------------------------------------------------------------------------------------------
# model inputs


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input that calibration data must feed.

    Attributes:
        name: the ONNX graph input name.
        shape: the ONNX shape, batch axis first; an ``int`` is a static dim, a ``str`` (symbolic,
            e.g. ``'unk__12'``, ``'N'``) or ``None`` (unknown) is a dynamic dim.
        dtype: the model's input element type as a numpy dtype (usually float32).
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def fixed_batch_size(self) -> int | None:
        """The static size of the batch axis (axis 0), or None when it is dynamic."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


def input_specs(model: Any) -> tuple[InputSpec, ...]:
    """The real inputs of a model (graph inputs that are not initializers), in graph order.

    Args:
        model: an ``onnx.ModelProto`` or an ``onnx_ir.Model``.

    Returns:
        one :class:`InputSpec` per input that the caller must feed.
    """
    if hasattr(model, "graph") and hasattr(model.graph, "initializers"):  # onnx_ir.Model
        graph = model.graph
        specs = []
        for value in graph.inputs:
            if value.name in graph.initializers:
                continue
            dims: tuple[int | str | None, ...] = ()
            if value.shape is not None:
                dims = tuple(d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape)
            specs.append(InputSpec(value.name, dims, np.dtype(value.dtype.numpy())))
        return tuple(specs)

    import onnx

    initializer_names = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
        specs.append(InputSpec(value.name, dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))))
    return tuple(specs)


def _one_line(error: BaseException) -> str:
    """An exception's message with newlines folded, for one-line error messages."""
    return " ".join(str(error).split())


def _format_shape(shape: Sequence[int | str | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _check_sample_shape(sample_shape: tuple[int, ...], spec: InputSpec, where: str) -> None:
    """Raise unless one sample's shape (no batch axis) fits ``spec.shape[1:]``."""
    expected = spec.shape[1:]
    fits = len(sample_shape) == len(expected) and all(
        not isinstance(e, int) or e == s for e, s in zip(expected, sample_shape)
    )
    if not fits:
        raise CalibrationDataError(
            f"{where}: sample shape {_format_shape(sample_shape)} does not fit input '{spec.name}' "
            f"of shape {_format_shape(spec.shape)} (batch axis first)"
        )


def _needs_value_check(source: np.dtype, spec: InputSpec, where: str) -> bool:
    """Raise unless ``source`` data may feed ``spec``; True when values must be range-checked per batch."""
    source = np.dtype(source)
    target = spec.dtype
    if source.kind not in "biuf":
        raise CalibrationDataError(f"{where}: non-numeric data ({source}) for input '{spec.name}' ({target})")
    if target.kind == "f":
        return False
    if target.kind in "iu":
        if source.kind == "f":
            raise CalibrationDataError(
                f"{where}: float data ({source}) cannot feed integer input '{spec.name}' ({target}) safely"
            )
        return not np.can_cast(source, target, "safe")
    if target.kind == "b":
        if source.kind != "b":
            raise CalibrationDataError(f"{where}: {source} data cannot feed bool input '{spec.name}'")
        return False
    raise CalibrationDataError(f"{where}: input '{spec.name}' has dtype {target}, which calibration does not support")


def _cast(array: np.ndarray, spec: InputSpec, value_check: bool, where: str) -> np.ndarray:
    """A new array in the input dtype (never a view of the source)."""
    if value_check and array.size:
        info = np.iinfo(spec.dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise CalibrationDataError(
                f"{where}: values {low}..{high} do not fit input '{spec.name}' ({spec.dtype}, {info.min}..{info.max})"
            )
    return np.array(array, dtype=spec.dtype, copy=True)


def _as_one_sample(array_shape: tuple[int, ...], spec: InputSpec, where: str) -> bool:
    """For a file holding one sample: True if it carries a leading batch axis of 1 (to be dropped)."""
    rank = len(spec.shape)
    if len(array_shape) == rank and rank >= 1:
        if array_shape[0] != 1:
            raise CalibrationDataError(
                f"{where}: holds {array_shape[0]} samples (shape {_format_shape(array_shape)}); "
                f"each file must be one sample for input '{spec.name}' {_format_shape(spec.shape)}"
            )
        _check_sample_shape(array_shape[1:], spec, where)
        return True
    _check_sample_shape(array_shape, spec, where)
    return False


# --------------------------------------------------------------------------------------------------
# image preprocessing


_PREPROCESSING_KEYS = ("size", "layout", "channels", "scale", "mean", "std", "dtype")
_FLOAT_DTYPES = ("float16", "float32", "float64")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How image files become one input sample.

    The image is converted to PIL mode ``L`` (channels=1) or ``RGB`` (channels=3), resized to
    ``size`` with PIL bilinear resampling, and normalized per channel as
    ``x = (pixel * scale - mean[c]) / std[c]`` (pixel in 0..255), computed in float32 and stored as
    ``dtype``; the result is laid out ``(C, H, W)`` for NCHW or ``(H, W, C)`` for NHWC (no batch axis).

    Attributes:
        size: (height, width) in pixels.
        layout: ``"NCHW"`` or ``"NHWC"`` (any letter case).
        channels: 1 (grayscale) or 3 (RGB).
        scale: multiplies the 0..255 pixel value (1/255 gives 0..1).
        mean, std: one value for all channels or one per channel (in scaled units); std nonzero.
        dtype: ``float16``, ``float32`` or ``float64``.

    Raises:
        CalibrationDataError: a value is out of range (message names the key).
    """

    size: tuple[int, int]
    layout: str = "NCHW"
    channels: int = 3
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problem = self._normalize()
        if problem:
            raise CalibrationDataError(f"image preprocessing: {problem}")

    def _normalize(self) -> str | None:
        """Coerce sequences to tuples of numbers; return a one-line problem or None."""
        size = self.size
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            return f"key 'size' must be [height, width] of positive integers, got {size!r}"
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if isinstance(self.layout, str):
            object.__setattr__(self, "layout", self.layout.upper())
        if self.layout not in ("NCHW", "NHWC"):
            return f"key 'layout' must be 'NCHW' or 'NHWC', got {self.layout!r}"
        if not isinstance(self.channels, int) or isinstance(self.channels, bool) or self.channels not in (1, 3):
            return f"key 'channels' must be 1 or 3, got {self.channels!r}"
        if not _is_number(self.scale) or self.scale == 0:
            return f"key 'scale' must be a nonzero finite number, got {self.scale!r}"
        for key in ("mean", "std"):
            value = getattr(self, key)
            values = (value,) if _is_number(value) else value
            if (
                not isinstance(values, (tuple, list))
                or len(values) not in (1, self.channels)
                or not all(_is_number(v) for v in values)
            ):
                return f"key '{key}' must be a number or {self.channels} numbers (one per channel), got {value!r}"
            if key == "std" and any(v == 0 for v in values):
                return f"key 'std' must be nonzero, got {value!r}"
            object.__setattr__(self, key, tuple(float(v) for v in values))
        object.__setattr__(self, "scale", float(self.scale))
        if self.dtype not in _FLOAT_DTYPES:
            return f"key 'dtype' must be one of {', '.join(_FLOAT_DTYPES)}, got {self.dtype!r}"
        return None

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> ImagePreprocessing:
        """Read a TOML file whose top-level keys are this class's fields (``size = [96, 96]`` ...).

        Raises:
            CalibrationDataError: the file is missing or not TOML, has an unknown key, lacks ``size``,
                or has a bad value; the message names the file and the key.
        """
        path = pathlib.Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationDataError(f"{path}: preprocessing file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CalibrationDataError(f"{path}: cannot read preprocessing file: {_one_line(error)}") from None
        except tomllib.TOMLDecodeError as error:
            raise CalibrationDataError(f"{path}: not valid TOML: {_one_line(error)}") from None
        for key in table:
            if key not in _PREPROCESSING_KEYS:
                raise CalibrationDataError(
                    f"{path}: unknown key '{key}' (valid keys: {', '.join(_PREPROCESSING_KEYS)})"
                )
        if "size" not in table:
            raise CalibrationDataError(f"{path}: missing key 'size' ([height, width] in pixels)")
        self = object.__new__(cls)
        for field in dataclasses.fields(cls):
            default = field.default
            object.__setattr__(self, field.name, table.get(field.name, default))
        problem = self._normalize()
        if problem:
            raise CalibrationDataError(f"{path}: {problem}")
        return self

    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one preprocessed sample (no batch axis): (C, H, W) or (H, W, C)."""
        height, width = self.size
        if self.layout == "NCHW":
            return (self.channels, height, width)
        return (height, width, self.channels)

    def load(self, path: pathlib.Path) -> np.ndarray:
        """One image file as a preprocessed sample, shape :meth:`sample_shape`, dtype ``self.dtype``.

        Raises:
            CalibrationDataError: the file is not a readable image (names the file).
        """
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                height, width = self.size
                image = image.resize((width, height), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise CalibrationDataError(f"{path}: cannot read image: {_one_line(error)}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        sample = (pixels * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            sample = sample.transpose(2, 0, 1)
        return np.ascontiguousarray(sample, dtype=self.dtype)


# --------------------------------------------------------------------------------------------------
# sources: where samples come from; each reads samples [start, stop) in the source dtype


class _Source(abc.ABC):
    """A checked data source. ``read`` returns raw arrays (source dtype, batch axis first)."""

    description: str
    num_samples: int
    labels: np.ndarray | None = None
    value_checks: dict[str, bool]

    @abc.abstractmethod
    def read(self, start: int, stop: int) -> dict[str, np.ndarray]: ...

    def where(self, name: str) -> str:
        return self.description


class _ArraySource(_Source):
    """Arrays per input (memory-mapped .npy or npz members, streamed compressed npz members, or
    arrays loaded whole); batches are slices."""

    def __init__(self, description: str, arrays: dict[str, np.ndarray], wheres: dict[str, str]) -> None:
        self.description = description
        self.arrays = arrays
        self.wheres = wheres
        counts = {name: len(array) for name, array in arrays.items()}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"'{wheres[name]}' has {count}" for name, count in counts.items())
            raise CalibrationDataError(f"{description}: inputs have different numbers of samples ({detail})")
        self.num_samples = next(iter(counts.values()))

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: array[start:stop] for name, array in self.arrays.items()}

    def where(self, name: str) -> str:
        return self.wheres[name]


_NPZ_BLOCK = 1 << 20
"""Bytes read at a time when an ``.npz`` member is streamed (checked when opened, or skipped over)."""


def _read_exactly(stream, size: int) -> bytes:
    """``size`` bytes from ``stream``; fewer only at its end."""
    parts = []
    while size > 0:
        part = stream.read(min(size, _NPZ_BLOCK))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class _StreamedNpzMember:
    """A compressed ``.npz`` member read row range by row range, as ``array[start:stop]``.

    Only slices along axis 0 with step 1 are supported (what :class:`_ArraySource` asks). Reading
    moves forward through the decompressed stream; a slice that starts before the current position
    opens the member again from its start.
    """

    def __init__(self, path: pathlib.Path, member: str, shape: tuple[int, ...], dtype: np.dtype, header_size: int) -> None:
        self.path, self.member = path, member
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._header_size = header_size
        self._row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        self._zip: zipfile.ZipFile | None = None
        self._stream = None
        self._row = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _rewind(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        self._stream = self._zip.open(self.member)
        _read_exactly(self._stream, self._header_size)
        self._row = 0

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a streamed .npz member supports only array[start:stop]")
        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        rows = (stop - start, *self.shape[1:])
        if self._row_bytes == 0:
            return np.empty(rows, self.dtype)
        if self._stream is None or start < self._row:
            self._rewind()
        skip = (start - self._row) * self._row_bytes
        while skip > 0:
            skipped = len(self._stream.read(min(skip, _NPZ_BLOCK)))
            if skipped == 0:
                break
            skip -= skipped
        size = (stop - start) * self._row_bytes
        data = _read_exactly(self._stream, size)
        if len(data) != size:
            raise CalibrationDataError(f"{self.path} member '{self.member}': ends after {len(data)} of {size} bytes")
        self._row = stop
        return np.frombuffer(data, self.dtype).reshape(rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_stream": None, "_row": 0}


def _lazy_npz_member(path: pathlib.Path, archive: np.lib.npyio.NpzFile, key: str):
    """An ``.npz`` member as a read-only memory map (stored uncompressed) or a :class:`_StreamedNpzMember`
    (compressed), or None when it must be loaded whole (``archive[key]``, which raises the usual errors).

    The member is streamed through once here (one block in memory): zipfile checks its CRC and the
    length must match the ``.npy`` header, as loading it whole would check.
    """
    try:
        zip_file = archive.zip
        member = key + ".npy" if key + ".npy" in zip_file.namelist() else key
        info = zip_file.getinfo(member)
        if info.flag_bits & 0x1:  # encrypted
            return None
        with zip_file.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                return None
            header_size = stream.tell()
            dtype = np.dtype(dtype)
            if dtype.hasobject or (fortran_order and len(shape) > 1) or len(shape) == 0:
                return None
            size = dtype.itemsize * math.prod(shape)
            length = 0
            while block := stream.read(_NPZ_BLOCK):
                length += len(block)
        if length != size or size == 0:
            return None
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            name_length = int.from_bytes(local[26:28], "little")
            extra_length = int.from_bytes(local[28:30], "little")
            offset = info.header_offset + 30 + name_length + extra_length + header_size
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="C")
        return _StreamedNpzMember(path, member, tuple(shape), dtype, header_size)
    except Exception as error:  # noqa: BLE001 - anything unusual: load it whole, which reports the usual error
        log.debug("%s key '%s': not read lazily (%s); loading it whole", path, key, _one_line(error))
        return None


def _open_npz(path: pathlib.Path, specs: Sequence[InputSpec]) -> _Source:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CalibrationDataError(f"{path}: cannot read .npz file: {_one_line(error)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CalibrationDataError(f"{path}: not an .npz archive")
    with archive:
        names = {spec.name: spec for spec in specs}
        keys = list(archive.files)
        key_of: dict[str, str] = {}
        labels_key = None
        for key in keys:
            if key in names:
                key_of[key] = key
            elif key == LABELS_KEY:
                labels_key = key
            elif key == SINGLE_INPUT_KEY and len(specs) == 1 and specs[0].name not in keys:
                key_of[specs[0].name] = key
            else:
                raise CalibrationDataError(
                    f"{path}: key '{key}' matches no model input (inputs: "
                    f"{', '.join(repr(s.name) for s in specs)}; '{LABELS_KEY}' holds labels)"
                )
        for spec in specs:
            if spec.name not in key_of:
                hint = f" or '{SINGLE_INPUT_KEY}'" if len(specs) == 1 else ""
                raise CalibrationDataError(f"{path}: no data for input '{spec.name}' (expected key '{spec.name}'{hint})")
        arrays: dict[str, np.ndarray] = {}
        wheres: dict[str, str] = {}
        checks: dict[str, bool] = {}
        for spec in specs:
            key = key_of[spec.name]
            where = f"{path} key '{key}'"
            try:
                array = _lazy_npz_member(path, archive, key)
                if array is None:
                    array = archive[key]
            except ValueError as error:  # object arrays refused by allow_pickle=False
                raise CalibrationDataError(f"{where}: non-numeric data for input '{spec.name}': {_one_line(error)}") from None
            except (OSError, zipfile.BadZipFile, EOFError) as error:
                raise CalibrationDataError(f"{where}: cannot read array: {_one_line(error)}") from None
            checks[spec.name] = _needs_value_check(array.dtype, spec, where)
            if array.ndim != len(spec.shape) or array.ndim == 0:
                raise CalibrationDataError(
                    f"{where}: array of shape {_format_shape(array.shape)} does not fit input '{spec.name}' "
                    f"of shape {_format_shape(spec.shape)} (axis 0 must be the sample axis)"
                )
            _check_sample_shape(array.shape[1:], spec, where)
            arrays[spec.name] = array
            wheres[spec.name] = where
        labels = None
        if labels_key is not None:
            labels = archive[labels_key]
    source = _ArraySource(str(path), arrays, wheres)
    source.value_checks = checks
    if labels is not None:
        where = f"{path} key '{LABELS_KEY}'"
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise CalibrationDataError(
                f"{where}: labels must be a 1-D integer array, got {labels.dtype} of shape {_format_shape(labels.shape)}"
            )
        if len(labels) != source.num_samples:
            raise CalibrationDataError(f"{where}: {len(labels)} labels for {source.num_samples} samples")
        source.labels = labels.astype(np.int64)
    return source


def _single_spec(specs: Sequence[InputSpec], path: pathlib.Path, what: str) -> InputSpec:
    if len(specs) != 1:
        raise CalibrationDataError(
            f"{path}: {what} feeds a single-input model, but the model has {len(specs)} inputs "
            f"({', '.join(repr(s.name) for s in specs)}); use an .npz keyed by input name or sample subfolders"
        )
    return specs[0]


def _open_npy(path: pathlib.Path, specs: Sequence[InputSpec]) -> _Source:
    spec = _single_spec(specs, path, "an .npy file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise CalibrationDataError(f"{path}: non-numeric data for input '{spec.name}': {_one_line(error)}") from None
    except (OSError, EOFError) as error:
        raise CalibrationDataError(f"{path}: cannot read .npy file: {_one_line(error)}") from None
    check = _needs_value_check(array.dtype, spec, str(path))
    if array.ndim == len(spec.shape) - 1:
        _check_sample_shape(array.shape, spec, str(path))
        array = array[None]
    elif array.ndim == len(spec.shape) and array.ndim >= 1:
        _check_sample_shape(array.shape[1:], spec, str(path))
    else:
        raise CalibrationDataError(
            f"{path}: array of shape {_format_shape(array.shape)} does not fit input '{spec.name}' "
            f"of shape {_format_shape(spec.shape)}"
        )
    source = _ArraySource(str(path), {spec.name: array}, {spec.name: str(path)})
    source.value_checks = {spec.name: check}
    return source


class _FileSource(_Source):
    """One sample per file (or per file group); files are read when a batch needs them."""

    def __init__(self, description: str, specs: Sequence[InputSpec], samples: list[dict[str, pathlib.Path]]) -> None:
        self.description = description
        self.specs = list(specs)
        self.samples = samples
        self.num_samples = len(samples)
        self.value_checks = {}

    def load(self, path: pathlib.Path, spec: InputSpec) -> np.ndarray:
        """One sample from one file, shape-checked, no batch axis."""
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise CalibrationDataError(f"{path}: non-numeric data for input '{spec.name}': {_one_line(error)}") from None
        except (OSError, EOFError) as error:
            raise CalibrationDataError(f"{path}: cannot read .npy file: {_one_line(error)}") from None
        check = _needs_value_check(array.dtype, spec, str(path))
        self.value_checks[spec.name] = self.value_checks.get(spec.name, False) or check
        if _as_one_sample(array.shape, spec, str(path)):
            array = array[0]
        return array

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        batch: dict[str, np.ndarray] = {}
        for spec in self.specs:
            arrays = []
            for sample in self.samples[start:stop]:
                array = self.load(sample[spec.name], spec)
                if arrays and array.shape != arrays[0].shape:
                    raise CalibrationDataError(
                        f"{sample[spec.name]}: sample shape {_format_shape(array.shape)} differs from "
                        f"{_format_shape(arrays[0].shape)} of {self.samples[start][spec.name]} in the same batch"
                    )
                arrays.append(array)
            batch[spec.name] = np.stack(arrays)
        return batch


class _ImageSource(_FileSource):
    def __init__(self, folder: pathlib.Path, spec: InputSpec, files: list[pathlib.Path], preprocessing: ImagePreprocessing) -> None:
        super().__init__(str(folder), [spec], [{spec.name: f} for f in files])
        self.preprocessing = preprocessing
        where = f"{folder} (image preprocessing)"
        self.value_checks = {spec.name: _needs_value_check(np.dtype(preprocessing.dtype), spec, where)}
        _check_sample_shape(preprocessing.sample_shape(), spec, where)

    def load(self, path: pathlib.Path, spec: InputSpec) -> np.ndarray:
        return self.preprocessing.load(path)


class _TestDataSetSource(_Source):
    """ONNX ``test_data_set_*`` folders; each set's tensors are loaded when a batch needs them."""

    def __init__(self, description: str, specs: Sequence[InputSpec], sets: list[pathlib.Path]) -> None:
        import onnx

        self.description = description
        self.specs = list(specs)
        self.value_checks = {spec.name: False for spec in specs}
        self.sets: list[tuple[dict[str, pathlib.Path], bool, int]] = []  # files, has batch axis, count
        names = {spec.name: spec for spec in specs}
        for folder in sets:
            files: dict[str, pathlib.Path] = {}
            counts: dict[str, int] = {}
            batched: dict[str, bool] = {}
            pb_files = sorted(
                (int(m.group(1)), p) for p in folder.iterdir() if (m := _TEST_INPUT_FILE.match(p.name))
            )
            if not pb_files:
                raise CalibrationDataError(f"{folder}: no input_*.pb files in test data set")
            for index, path in pb_files:
                tensor = self._load_tensor(path)
                if tensor.name in names:
                    spec = names[tensor.name]
                elif index < len(specs):
                    spec = specs[index]
                else:
                    raise CalibrationDataError(
                        f"{path}: tensor '{tensor.name}' matches no model input and the model has only "
                        f"{len(specs)} input(s)"
                    )
                if spec.name in files:
                    raise CalibrationDataError(f"{path}: input '{spec.name}' already fed by {files[spec.name]}")
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
                where = str(path)
                self.value_checks[spec.name] |= _needs_value_check(dtype, spec, where)
                dims = tuple(tensor.dims)
                if len(dims) == len(spec.shape) and dims:
                    _check_sample_shape(dims[1:], spec, where)
                    counts[spec.name], batched[spec.name] = dims[0], True
                else:
                    _check_sample_shape(dims, spec, where)
                    counts[spec.name], batched[spec.name] = 1, False
                files[spec.name] = path
            for spec in specs:
                if spec.name not in files:
                    raise CalibrationDataError(f"{folder}: no data for input '{spec.name}'")
            if len(set(counts.values())) > 1:
                detail = ", ".join(f"{files[n].name} has {c}" for n, c in counts.items())
                raise CalibrationDataError(f"{folder}: inputs have different numbers of samples ({detail})")
            count = next(iter(counts.values()))
            self.sets.append((files, batched, count))
        self.offsets = np.concatenate([[0], np.cumsum([count for _, _, count in self.sets])]).astype(int)
        self.num_samples = int(self.offsets[-1])

    @staticmethod
    def _load_tensor(path: pathlib.Path):
        import onnx
        from google.protobuf.message import DecodeError

        try:
            return onnx.load_tensor(str(path))
        except (OSError, DecodeError, ValueError) as error:
            raise CalibrationDataError(f"{path}: cannot read TensorProto: {_one_line(error)}") from None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        from onnx import numpy_helper

        parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in self.specs}
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for set_index in range(first, len(self.sets)):
            set_start = int(self.offsets[set_index])
            if set_start >= stop:
                break
            files, batched, _ = self.sets[set_index]
            low, high = max(start - set_start, 0), stop - set_start
            for spec in self.specs:
                array = numpy_helper.to_array(self._load_tensor(files[spec.name]))
                if not batched[spec.name]:
                    array = array[None]
                parts[spec.name].append(array[low:high])
        return {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}


def _open_folder(
    folder: pathlib.Path, specs: Sequence[InputSpec], preprocessing: ImagePreprocessing | None
) -> tuple[_Source, bool]:
    """Detect the folder layout; returns the source and whether it used ``preprocessing``."""
    if folder.name.startswith(TEST_DATA_SET_PREFIX):
        return _TestDataSetSource(str(folder), specs, [folder]), False
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    subfolders = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()]
    test_sets = [p for p in subfolders if p.name.startswith(TEST_DATA_SET_PREFIX)]
    npy_files = [p for p in files if p.suffix.lower() == ".npy"]
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    sample_folders = [p for p in subfolders if p not in test_sets and any(p.glob("*.npy"))]
    has_pb_inputs = any(_TEST_INPUT_FILE.match(p.name) for p in files)
    kinds = {
        "test_data_set_* folders": test_sets,
        "input_*.pb files": has_pb_inputs,
        ".npy files": npy_files,
        "sample subfolders of .npy files": sample_folders,
        "image files": image_files,
    }
    found = [kind for kind, present in kinds.items() if present]
    if not found:
        raise CalibrationDataError(
            f"{folder}: no data found (0 samples): expected .npy files, sample subfolders of "
            f".npy files, images ({' '.join(IMAGE_SUFFIXES)}) or test_data_set_* folders"
        )
    if len(found) > 1:
        raise CalibrationDataError(f"{folder}: ambiguous data folder, it holds {' and '.join(found)}")
    kind = found[0]
    if kind == "test_data_set_* folders":
        return _TestDataSetSource(str(folder), specs, test_sets), False
    if kind == "input_*.pb files":
        return _TestDataSetSource(str(folder), specs, [folder]), False
    if kind == ".npy files":
        spec = _single_spec(specs, folder, "a folder of .npy files")
        source = _FileSource(str(folder), specs, [{spec.name: p} for p in npy_files])
        source.read(0, 1)  # check the first sample now, so errors come before calibration starts
        return source, False
    if kind == "sample subfolders of .npy files":
        names = {spec.name for spec in specs}
        samples = []
        for sub in sample_folders:
            npys = {p.name[: -len(".npy")]: p for p in sub.iterdir() if p.is_file() and p.name.endswith(".npy")}
            for name, path in npys.items():
                if name not in names:
                    raise CalibrationDataError(
                        f"{path}: file name matches no model input (inputs: {', '.join(repr(n) for n in sorted(names))})"
                    )
            for spec in specs:
                if spec.name not in npys:
                    raise CalibrationDataError(f"{sub}: no data for input '{spec.name}' (expected {spec.name}.npy)")
            samples.append({spec.name: npys[spec.name] for spec in specs})
        source = _FileSource(str(folder), specs, samples)
        source.read(0, 1)
        return source, False
    # images
    spec = _single_spec(specs, folder, "a folder of images")
    if preprocessing is None:
        spec_file = folder / PREPROCESSING_FILE_NAME
        if not spec_file.is_file():
            raise CalibrationDataError(
                f"{folder}: image folder needs image preprocessing: pass one or add {PREPROCESSING_FILE_NAME}"
            )
        preprocessing = ImagePreprocessing.from_file(spec_file)
        used_argument = False
    else:
        used_argument = True
    source = _ImageSource(folder, spec, image_files, preprocessing)
    source.read(0, 1)
    return source, used_argument


# --------------------------------------------------------------------------------------------------
# the dataset


class CalibrationDataset:
    """Calibration samples, streamed as batches ``dict[input name -> np.ndarray]``.

    Each batch array has the batch axis first, the model input's dtype, and a shape that fits the
    input; batches never share memory with the source. Create one with :func:`open_dataset`.

    Attributes:
        inputs: the model inputs fed, in model order.
        num_samples: samples used (after ``limit``).
        labels: int64 ``[num_samples]`` when the source has labels (npz key ``y``), else None.
        fixed_batch_size: the model's static batch size, or None when the batch axis is dynamic.
        source: the path the data came from.
        default_batch_size: batch size used by ``iter(dataset)`` (when the batch axis is dynamic).
    """

    def __init__(self, source: _Source, inputs: Sequence[InputSpec], limit: int | None, default_batch_size: int) -> None:
        self._source = source
        self.inputs = tuple(inputs)
        self.source = source.description
        self.num_samples = source.num_samples if limit is None else min(limit, source.num_samples)
        if self.num_samples == 0:
            raise CalibrationDataError(f"{source.description}: no samples (empty data set)")
        self.labels = None if source.labels is None else source.labels[: self.num_samples]
        fixed = {spec.name: spec.fixed_batch_size for spec in inputs if spec.fixed_batch_size is not None}
        if len(set(fixed.values())) > 1:
            detail = ", ".join(f"'{n}' has {b}" for n, b in fixed.items())
            raise CalibrationDataError(f"{source.description}: model inputs disagree on the batch size ({detail})")
        self.fixed_batch_size = next(iter(fixed.values()), None)
        if self.fixed_batch_size is not None and self.num_samples < self.fixed_batch_size:
            raise CalibrationDataError(
                f"{source.description}: {self.num_samples} samples, fewer than the model's fixed batch size "
                f"{self.fixed_batch_size}"
            )
        self.default_batch_size = default_batch_size

    def effective_batch_size(self, batch_size: int) -> int:
        """``batch_size``, or the model's fixed batch size when its batch axis is static."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self.fixed_batch_size or batch_size

    def num_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """How many batches :meth:`batches` yields for this ``batch_size``."""
        size = self.effective_batch_size(batch_size)
        if self.fixed_batch_size is not None:
            return self.num_samples // size
        return -(-self.num_samples // size)

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches of ``batch_size`` samples (the last may be shorter).

        When the model's batch axis is static (e.g. mnist-8 ``[1,1,28,28]``) every batch has exactly
        that size, whatever ``batch_size`` says, and a final incomplete batch is skipped (logged).
        Only one batch is in memory at a time.

        Raises:
            CalibrationDataError: a file read for this batch is unreadable or does not fit (names the file).
            ValueError: ``batch_size`` < 1.
        """
        size = self.effective_batch_size(batch_size)
        if self.fixed_batch_size is not None:
            stop_all = self.num_samples - self.num_samples % size
            if stop_all < self.num_samples:
                log.warning(
                    "%s: last %d sample(s) skipped: model batch size is fixed at %d",
                    self.source, self.num_samples - stop_all, size,
                )
        else:
            stop_all = self.num_samples
        for start in range(0, stop_all, size):
            stop = min(start + size, stop_all)
            raw = self._source.read(start, stop)
            yield {
                spec.name: _cast(raw[spec.name], spec, self._source.value_checks.get(spec.name, False), self._source.where(spec.name))
                for spec in self.inputs
            }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(self.default_batch_size)

    def __repr__(self) -> str:
        return f"CalibrationDataset({self.source!r}, num_samples={self.num_samples}, inputs={[s.name for s in self.inputs]})"


def open_dataset(
    path: str | pathlib.Path,
    inputs: Sequence[InputSpec],
    *,
    preprocessing: ImagePreprocessing | None = None,
    limit: int | None = None,
    default_batch_size: int = DEFAULT_BATCH_SIZE,
) -> CalibrationDataset:
    """Open calibration data and check it against the model inputs (formats: see the module docstring).

    Args:
        path: an ``.npz`` or ``.npy`` file, or a folder (``.npy`` files, sample subfolders, images,
            ``test_data_set_*``).
        inputs: the model inputs to feed (see :func:`input_specs`), in model order.
        preprocessing: for an image folder; overrides the folder's ``preprocessing.toml``.
        limit: use only the first ``limit`` samples (>= 1), or all when None.
        default_batch_size: batch size of ``iter(dataset)`` for a dynamic batch axis.

    Returns:
        a :class:`CalibrationDataset`; files of folder sources are read only when batches are requested
        (the first sample is read now to report problems early).

    Raises:
        CalibrationDataError: missing path, unknown format, no samples, missing or unknown input data,
            shape or dtype not fitting, different sample counts (one line naming the file/key/input).
        ValueError: ``inputs`` is empty, or ``limit``/``default_batch_size`` < 1.
    """
    if not inputs:
        raise ValueError("open_dataset needs at least one model input")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if default_batch_size < 1:
        raise ValueError(f"default_batch_size must be >= 1, got {default_batch_size}")
    path = pathlib.Path(path)
    if not path.exists():
        raise CalibrationDataError(f"{path}: data not found")
    used_preprocessing = False
    if path.is_dir():
        source, used_preprocessing = _open_folder(path, inputs, preprocessing)
    elif path.suffix.lower() == ".npz":
        source = _open_npz(path, inputs)
    elif path.suffix.lower() == ".npy":
        source = _open_npy(path, inputs)
    else:
        raise CalibrationDataError(
            f"{path}: unknown data format (expected .npz, .npy, or a folder of .npy files, "
            f"images or test_data_set_*)"
        )
    if preprocessing is not None and not used_preprocessing:
        log.warning("%s: not an image folder; the image preprocessing given is ignored", path)
    return CalibrationDataset(source, inputs, limit, default_batch_size)
