"""What ``qa analyze`` reads from files: a model file with its inputs, and data as batches of numpy arrays.

A model file is named by its suffix: ``.onnx`` (ONNX), ``.keras`` / ``.h5`` (Keras 3, read with
``keras.saving.load_model``) or ``.pt2`` (a ``torch.export`` ExportedProgram saved with
``torch.export.save``; qa analyses ``torch.export.load(path).module()``). :func:`check_model_path`
says whether a path can be read without loading anything; :func:`load_model_file` loads it and
describes its inputs (:class:`InputSpec`: name, dims with symbolic ones named, dtype), and runs
what the analysis callbacks receive on numpy arrays.

Data is an image folder (:func:`list_images`, :func:`load_images`, read with Pillow), a ``.npy`` /
``.npz`` file (:func:`load_arrays`) or random arrays (:func:`random_batch`); :func:`make_batches`
cuts samples into batches. Everything is float32 (or the model's dtype) numpy.

``import qa.data`` needs numpy only: Pillow is imported when an image is read, and a model file is
read by the adapter of its framework (each adapter module's ``load_file``, through
:func:`qa.adapters.load_file`), which imports the framework at that moment: no framework is
called from outside ``qa.adapters``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import logging
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .adapters import FILE_SUFFIXES
from .errors import QAError, QAValueError

__all__ = ["MODEL_SUFFIXES", "IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "Dim", "InputSpec", "ModelFile",
           "ImageOptions", "check_model_path", "load_model_file", "parse_shape", "list_images", "read_label_csv",
           "read_label_array", "labels_for", "image_geometry", "normalization", "load_images", "array_file_keys", "load_arrays", "random_batch",
           "make_batches"]

log = logging.getLogger("qa")

#: model file suffix -> framework (the adapters' table: each adapter reads its own files)
MODEL_SUFFIXES: Dict[str, str] = FILE_SUFFIXES
_FRAMEWORK_NAMES = {"onnx": "ONNX", "keras": "Keras", "torch": "PyTorch (torch.export)"}
_NEEDS = {"onnx": ("onnx", "onnxruntime"), "keras": ("keras",), "torch": ("torch",)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Dim = Union[int, str]  # a static size, or the name of a symbolic one ("?" when it has none)


def _import(module: str, what: str, extra: str) -> Any:
    """Import a framework (or Pillow) now; a missing one is a QAError naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise QAError(f"{what} needs {module} ({e}); pip install 'qa-quant[{extra}]'") from e


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, dims (an int each, or a str naming a symbolic dim) and dtype.

    ``dims`` is None when the model does not say the rank.

    Example:
        >>> spec = InputSpec("x", ("batch", 3, 224, 224), np.dtype("float32"))
        >>> spec.text(), spec.symbolic()
        ('[batch, 3, 224, 224]', [0])
        >>> spec.with_shape((8, 3, 224, 224)).text()
        '[8, 3, 224, 224]'
    """

    name: str
    dims: Optional[Tuple[Dim, ...]]
    dtype: np.dtype

    def text(self) -> str:
        """The dims as a user reads them: ``[batch, 3, 224, 224]`` (``any shape`` when unknown)."""
        return "any shape" if self.dims is None else "[" + ", ".join(str(d) for d in self.dims) + "]"

    def symbolic(self) -> List[int]:
        """Positions of the dims that are not fixed numbers."""
        return [i for i, d in enumerate(self.dims or ()) if not isinstance(d, int)]

    def static(self) -> bool:
        """Every dim is a fixed number."""
        return self.dims is not None and not self.symbolic()

    def with_shape(self, shape: Sequence[int], source: str = "--shape") -> "InputSpec":
        """This input with every dim fixed to ``shape``; fixed dims of the model must agree."""
        shape = tuple(int(d) for d in shape)
        if self.dims is not None:
            if len(shape) != len(self.dims):
                raise QAValueError(f"{source} {self.name}={_dims_text(shape)}: the model's input '{self.name}' has "
                                   f"{len(self.dims)} dims {self.text()}, not {len(shape)}")
            for i, (want, got) in enumerate(zip(self.dims, shape)):
                if isinstance(want, int) and want != got:
                    raise QAValueError(f"{source} {self.name}={_dims_text(shape)}: dim {i} of the model's input "
                                       f"'{self.name}' {self.text()} is {want}, not {got}")
        return replace(self, dims=shape)


def _dims_text(shape: Sequence[Any]) -> str:
    return ",".join(str(d) for d in shape)


def parse_shape(text: str) -> Tuple[Optional[str], Tuple[int, ...]]:
    """``name=1,3,224,224`` (or ``1,3,224,224`` for a one-input model) as (name or None, dims).

    Example:
        >>> parse_shape("input=1,3,224,224")
        ('input', (1, 3, 224, 224))
        >>> parse_shape("8x3x32x32")
        (None, (8, 3, 32, 32))
    """
    name, sep, dims = text.rpartition("=")
    name = name.strip() if sep else None
    if sep and not name:
        raise QAValueError(f"--shape {text!r}: the input name before '=' is empty")
    parts = [p.strip() for p in dims.replace("x", ",").split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise QAValueError(f"--shape {text!r}: expected NAME=D0,D1,... with whole numbers, "
                           f"e.g. input=1,3,224,224") from None
    if not values or any(v < 1 for v in values):
        raise QAValueError(f"--shape {text!r}: every dim must be at least 1")
    return name, values


# -- model files --

def check_model_path(path: Union[str, os.PathLike]) -> str:
    """The framework that reads ``path`` (``onnx``, ``keras``, ``torch``), checked without loading it.

    Raises:
        QAValueError: the file is missing, a folder, or of a suffix qa cannot read.
        QAError: its framework is not installed.

    Example:
        >>> check_model_path("model.tflite")
        Traceback (most recent call last):
        ...
        qa.errors.QAValueError: model.tflite: no such file
    """
    p = Path(path)
    if not p.exists():
        raise QAValueError(f"{path}: no such file")
    if p.is_dir():
        raise QAValueError(f"{path} is a folder; qa analyze takes a model file (.onnx, .keras, .h5 or .pt2)")
    framework = MODEL_SUFFIXES.get(p.suffix.lower())
    if framework is None:
        raise QAValueError(f"{path}: unknown model file suffix '{p.suffix}'; qa analyze reads .onnx (ONNX), "
                           f".keras and .h5 (Keras 3) and .pt2 (torch.export.save)")
    for module in _NEEDS[framework]:
        if importlib.util.find_spec(module) is None:
            raise QAError(f"reading {p.suffix} models needs {module}; pip install 'qa-quant[{framework}]'")
    return framework


@dataclass
class ModelFile:
    """A loaded model file: what QuantAnalyzer takes, its inputs, and how to run it on arrays.

    ``run(model, arrays)`` runs ``model`` (this file's model, or the copy the analysis callbacks
    receive: a torch module, a Keras model, an ONNX session) on one batch, one array per input in
    ``inputs`` order, and returns every output as a numpy array. ``dummy_input(arrays)`` is one
    batch in the form QuantAnalyzer's ``dummy_input`` takes for this framework.
    """

    path: Path
    framework: str
    model: Any
    inputs: List[InputSpec]
    run: Callable[[Any, Sequence[np.ndarray]], List[np.ndarray]]
    dummy_input: Callable[[Sequence[np.ndarray]], Any]

    @property
    def kind(self) -> str:
        """The framework as a user reads it (``ONNX``, ``Keras``, ``PyTorch (torch.export)``)."""
        return _FRAMEWORK_NAMES[self.framework]


def load_model_file(path: Union[str, os.PathLike]) -> ModelFile:
    """Load a model file (the framework is imported now) and describe its inputs.

    Raises:
        QAValueError: the file cannot be read as a model of its suffix (the error says why).

    Example:
        >>> mf = load_model_file("cnn.onnx")                      # doctest: +SKIP
        >>> [(s.name, s.text()) for s in mf.inputs]               # doctest: +SKIP
        [('input', '[batch, 3, 32, 32]')]
    """
    framework = check_model_path(path)
    from .adapters import load_file  # the adapter of the file's framework reads it

    try:
        loaded = load_file(Path(path))
    except QAError:
        raise
    except Exception as e:  # a damaged or foreign file: the framework's own words, on one line
        raise QAValueError(f"{path}: cannot be read as a {_FRAMEWORK_NAMES[framework]} model "
                           f"({type(e).__name__}: {e})") from e
    log.info("%s: %s model, inputs %s", path, loaded.kind,
             ", ".join(f"{s.name} {s.text()} {s.dtype}" for s in loaded.inputs))
    return loaded


def flatten_outputs(out: Any) -> List[Any]:
    """The tensors of a model's outputs in order: a tensor, a list/tuple, a dict (its values), nested."""
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return [out] if hasattr(out, "shape") else []


# -- image folders --

@dataclass(frozen=True)
class ImageOptions:
    """How images become model inputs.

    ``size`` (height, width) when the model's input does not fix them; ``resize`` is ``crop``
    (scale to cover the target, keeping the aspect ratio, then cut the center) or ``stretch``
    (plain resize to the target); ``layout`` ``nchw`` / ``nhwc`` when the model's shape leaves it
    open; ``mean`` / ``std`` per channel (or one value for all) applied to pixels scaled to [0, 1]
    (None: ImageNet's for 3 channels, 0 and 1 otherwise).
    """

    size: Optional[Tuple[int, int]] = None
    resize: str = "crop"
    layout: Optional[str] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """The image files under ``folder`` (by suffix, subfolders too, hidden ones skipped), sorted by path.

    Raises:
        QAValueError: the folder holds no image file.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.PNG", "a.jpg", "notes.txt", ".hidden.png"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in list_images(folder)]
        ['a.jpg', 'b.PNG']
    """
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise QAValueError(f"--data {folder}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)}, "
                           f"subfolders too)")
    return files


def read_label_csv(path: Union[str, os.PathLike]) -> Dict[str, int]:
    """``file name,class index`` per line (a header line, blank lines and ``#`` comments skipped).

    A file name is the image's path relative to the data folder (``cat/1.png``) or its base name.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "labels.csv")
        >>> _ = open(f, "w").write("file,label\\na.png,3\\nsub/b.png, 0\\n")
        >>> read_label_csv(f)
        {'a.png': 3, 'sub/b.png': 0}
    """
    labels: Dict[str, int] = {}
    header = True  # the first non-blank line may name the columns
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise QAValueError(f"--labels {path}: cannot be read ({e})") from None
    for line, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2:
            raise QAValueError(f"--labels {path} line {line}: expected 'file name,class index', got {','.join(row)!r}")
        first, header = header, False
        try:
            index = int(cells[1])
        except ValueError:
            if first:
                continue
            raise QAValueError(f"--labels {path} line {line}: the class index {cells[1]!r} is not a whole number") \
                from None
        if index < 0:
            raise QAValueError(f"--labels {path} line {line}: the class index {index} is negative")
        labels[cells[0].replace("\\", "/")] = index
    if not labels:
        raise QAValueError(f"--labels {path}: no 'file name,class index' lines in it")
    return labels


def read_label_array(path: Union[str, os.PathLike]) -> np.ndarray:
    """Class indices from a ``.npy`` file (one whole number per sample), or a text file with one per line."""
    try:
        if str(path).lower().endswith(".npy"):
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.loadtxt(path, dtype=np.float64, ndmin=1, comments="#", delimiter=",")
    except (OSError, ValueError) as e:
        raise QAValueError(f"--labels {path}: for .npy/.npz data, expected a .npy file or a text file with one class "
                           f"index per line ({e})") from None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise QAValueError(f"--labels {path}: expected one class index per sample (a 1-D array), got shape "
                           f"{list(labels.shape)}")
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu" or labels.min() < 0:
        raise QAValueError(f"--labels {path}: class indices must be whole numbers >= 0")
    return labels.astype(np.int64)


def labels_for(files: Sequence[Path], folder: Union[str, os.PathLike], labels: Dict[str, int],
               source: str) -> np.ndarray:
    """The class index of each image, looked up by its path relative to ``folder``, then its base name."""
    root = Path(folder)
    by_base: Dict[str, List[int]] = {}
    for key, value in labels.items():
        by_base.setdefault(key.rsplit("/", 1)[-1], []).append(value)
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel in labels:
            out.append(labels[rel])
        elif len(by_base.get(f.name, ())) == 1:
            out.append(by_base[f.name][0])
        else:
            raise QAValueError(f"--labels {source}: no label for image '{rel}'")
    return np.asarray(out, dtype=np.int64)


def image_geometry(spec: InputSpec, options: ImageOptions) -> Tuple[str, int, Tuple[int, int]]:
    """(layout, channels, (height, width)) of the images ``spec`` takes.

    The layout is ``options.layout``, or read from the shape when only one of dim 1 and the last
    dim is a channel count (1, 3 or 4); the size is the model's when fixed (``options.size`` must
    then agree), else ``options.size``.

    Example:
        >>> image_geometry(InputSpec("x", ("N", 3, 224, 224), np.dtype("float32")), ImageOptions())
        ('nchw', 3, (224, 224))
        >>> image_geometry(InputSpec("x", (None, "h", "w", 1), np.dtype("float32")), ImageOptions(size=(28, 28)))
        ('nhwc', 1, (28, 28))
    """
    dims = spec.dims
    if dims is None or len(dims) != 4:
        raise QAValueError(f"an image folder feeds a 4-D image input ([N, C, H, W] or [N, H, W, C]); the model's "
                           f"input '{spec.name}' is {spec.text()}; pass --shape {spec.name}=... or use .npy/.npz data")

    def channel_like(d: Any) -> bool:
        return isinstance(d, int) and d in (1, 3, 4)

    layout = options.layout
    if layout is None:
        first, last = channel_like(dims[1]), channel_like(dims[3])
        if first == last:
            raise QAValueError(f"cannot tell where the channels of the model's input '{spec.name}' {spec.text()} are; "
                               f"pass --layout nchw or --layout nhwc")
        layout = "nchw" if first else "nhwc"
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if not channel_like(c):
        raise QAValueError(f"the model's input '{spec.name}' {spec.text()} has {c} channels in layout {layout}; "
                           f"images give 1 (grayscale), 3 (RGB) or 4 (RGBA)")
    size = options.size
    fixed = (h if isinstance(h, int) else None, w if isinstance(w, int) else None)
    if size is None:
        if None in fixed:
            raise QAValueError(f"the model's input '{spec.name}' {spec.text()} does not fix the image size; pass "
                               f"--size H,W (or --size S for S x S)")
        size = (int(h), int(w))
    elif any(f is not None and f != s for f, s in zip(fixed, size)):
        raise QAValueError(f"--size {size[0]},{size[1]} does not fit the model's input '{spec.name}' {spec.text()}")
    return layout, int(c), (int(size[0]), int(size[1]))


def normalization(channels: int, options: ImageOptions) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, shape [channels]) from the options or the defaults.

    Example:
        >>> normalization(3, ImageOptions())[0]
        array([0.485, 0.456, 0.406], dtype=float32)
        >>> normalization(1, ImageOptions(std=(0.5,)))
        (array([0.], dtype=float32), array([0.5], dtype=float32))
    """
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,), (1.0,))
    out = []
    for flag, values, default in (("--mean", options.mean, default_mean), ("--std", options.std, default_std)):
        values = default if values is None else values
        if len(values) not in (1, channels):
            raise QAValueError(f"{flag} has {len(values)} values; the model's images have {channels} channel(s): give "
                               f"{channels} (or 1 for all)")
        out.append(np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy())
    return out[0], out[1]


def load_images(files: Sequence[Path], spec: InputSpec, options: ImageOptions,
                progress: Optional[bool] = None) -> np.ndarray:
    """The images as one array [N, C, H, W] or [N, H, W, C] of ``spec``'s dtype, normalized.

    Each image is converted to the channel count the model takes (grayscale ``L``, ``RGB``,
    ``RGBA``: Pillow's conversions, so RGBA loses its alpha for an RGB model and RGB becomes
    luma for a grayscale one), resized (``options.resize``), scaled to [0, 1], then
    ``(x - mean) / std`` per channel.
    """
    pil = _import("PIL.Image", "reading images", "images")
    layout, channels, (height, width) = image_geometry(spec, options)
    mean, std = normalization(channels, options)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    dtype = spec.dtype if spec.dtype.kind == "f" else np.dtype(np.float32)
    out = np.empty((len(files), channels, height, width) if layout == "nchw" else (len(files), height, width, channels),
                   dtype=dtype)
    log.info("reading %d images as %s %s (%.1f MiB), resize %s, mean %s, std %s", len(files), layout,
             list(out.shape[1:]), out.nbytes / 2**20, options.resize, [round(float(v), 4) for v in mean],
             [round(float(v), 4) for v in std])
    from ._progress import Progress

    with Progress(len(files), "reading images", progress) as bar:
        for i, f in enumerate(files):
            try:
                with pil.open(f) as img:
                    img = _resized(img.convert(mode), (width, height), options.resize, pil)
                    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
            except (OSError, ValueError, pil.DecompressionBombError) as e:
                raise QAValueError(f"--data: cannot read image {f} ({type(e).__name__}: {e})") from None
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            pixels = (pixels - mean) / std
            out[i] = pixels.transpose(2, 0, 1) if layout == "nchw" else pixels
            bar.update(note=f.name)
    return out


def _resized(img: Any, size: Tuple[int, int], how: str, pil: Any) -> Any:
    """``img`` at ``size`` (width, height): ``stretch`` resizes; ``crop`` scales to cover, then cuts the center."""
    width, height = size
    if img.size == (width, height):
        return img
    bilinear = pil.Resampling.BILINEAR
    if how == "stretch":
        return img.resize((width, height), bilinear)
    scale = max(width / img.width, height / img.height)
    w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    img = img.resize((w, h), bilinear)
    left, top = (w - width) // 2, (h - height) // 2
    return img.crop((left, top, left + width, top + height))


# -- .npy / .npz files --

def array_file_keys(path: Union[str, os.PathLike]) -> List[str]:
    """The array names in a ``.npz`` file (``[]`` for a ``.npy``), checked without reading the arrays.

    Raises:
        QAValueError: the file is missing, not a numpy file, or an empty ``.npz``.
    """
    p = Path(path)
    if not p.is_file():
        raise QAValueError(f"--data {path}: no such file")
    try:
        if p.suffix.lower() == ".npy":
            np.load(p, mmap_mode="r", allow_pickle=False)
            return []
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise QAValueError(f"--data {path}: not a readable numpy file ({e})") from None
    if not keys:
        raise QAValueError(f"--data {path}: the .npz file holds no arrays")
    return keys


def load_arrays(path: Union[str, os.PathLike], inputs: Sequence[InputSpec]) -> Tuple[List[np.ndarray], List[str]]:
    """One array per model input (samples along the first axis), and the .npz arrays left unused.

    A ``.npz`` array feeds the input of its name; a one-input model also takes a file with one
    array whatever its name (and a ``.npy``). Each array must match the input's rank and fixed
    dims after the first (the batch); floats become the input's float dtype, integers feed
    integer inputs.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(f, x=np.zeros((10, 3, 8, 8)))
        >>> arrays, unused = load_arrays(f, [InputSpec("input", ("N", 3, 8, 8), np.dtype("float32"))])
        >>> arrays[0].shape, arrays[0].dtype, unused
        ((10, 3, 8, 8), dtype('float32'), [])
        >>> load_arrays(f, [InputSpec("input", ("N", 3, 16, 16), np.dtype("float32"))])
        Traceback (most recent call last):
        ...
        qa.errors.QAValueError: --data ...d.npz: array 'x' has samples of shape [3, 8, 8]; the model's input 'input' takes [N, 3, 16, 16]
    """
    keys = array_file_keys(path)
    names = [s.name for s in inputs]
    try:
        if not keys:
            if len(inputs) != 1:
                raise QAValueError(f"--data {path}: a .npy file feeds a one-input model; this one has inputs {names}: "
                                   f"use a .npz file with one array per input, named after it")
            found = {inputs[0].name: ("the array", np.load(path, allow_pickle=False))}
            unused: List[str] = []
        else:
            with np.load(path, allow_pickle=False) as z:
                if len(inputs) == 1 and len(keys) == 1:
                    pick = {inputs[0].name: keys[0]}
                else:
                    missing = [n for n in names if n not in keys]
                    if missing:
                        raise QAValueError(f"--data {path}: no array named '{missing[0]}' for the model's input of "
                                           f"that name; the file holds {keys}, the model's inputs are {names}")
                    pick = {n: n for n in names}
                found = {n: (f"array '{k}'", z[k]) for n, k in pick.items()}
                unused = [k for k in keys if k not in pick.values()]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, QAValueError):
            raise
        raise QAValueError(f"--data {path}: cannot be read ({e})") from None
    arrays = [_checked(path, spec, *found[spec.name]) for spec in inputs]
    counts = {len(a) for a in arrays}
    if len(counts) > 1:
        raise QAValueError(f"--data {path}: the arrays hold different numbers of samples "
                           f"({', '.join(str(len(a)) for a in arrays)})")
    return arrays, unused


def _checked(path: Any, spec: InputSpec, what: str, array: np.ndarray) -> np.ndarray:
    """``array`` as samples for ``spec``: rank, fixed dims after the batch, dtype."""
    if array.ndim == 0 or len(array) == 0:
        raise QAValueError(f"--data {path}: {what} holds no samples (shape {list(array.shape)})")
    if spec.dims is not None:
        wrong = array.ndim != len(spec.dims) or any(
            isinstance(d, int) and d != s for d, s in zip(spec.dims[1:], array.shape[1:]))
        if wrong:
            raise QAValueError(f"--data {path}: {what} has samples of shape {list(array.shape[1:])}; the model's input "
                               f"'{spec.name}' takes {spec.text()}")
    kind = spec.dtype.kind
    if array.dtype.kind in "fc" and kind in "iub":
        raise QAValueError(f"--data {path}: {what} holds {array.dtype} values; the model's input '{spec.name}' takes "
                           f"{spec.dtype}")
    if array.dtype.kind not in "fiub":
        raise QAValueError(f"--data {path}: {what} holds {array.dtype} values, not numbers")
    return np.ascontiguousarray(array, dtype=spec.dtype)


# -- random data and batches --

def random_batch(specs: Sequence[InputSpec], rng: np.random.Generator) -> List[np.ndarray]:
    """One batch of random arrays for inputs whose dims are all fixed: standard normal floats,
    integers 0 or 1 (safe as token ids and masks), random booleans.

    Example:
        >>> batch = random_batch([InputSpec("x", (2, 3), np.dtype("float32"))], np.random.default_rng(0))
        >>> batch[0].shape, batch[0].dtype
        ((2, 3), dtype('float32'))
    """
    out = []
    for spec in specs:
        if spec.dims is None:
            raise QAValueError(f"--random: the model does not say the shape of its input '{spec.name}'; give it with "
                               f"--shape {spec.name}=D0,D1,...")
        if spec.symbolic():
            unknown = ", ".join(f"dim {i} ({spec.dims[i]})" for i in spec.symbolic())
            example = ",".join(str(d) if isinstance(d, int) else "N" for d in spec.dims)
            raise QAValueError(f"--random: the model's input '{spec.name}' {spec.text()} has symbolic {unknown}; give "
                               f"its shape with --shape {spec.name}={example} (N: a number)")
        shape = tuple(int(d) for d in spec.dims)  # type: ignore[union-attr]
        if spec.dtype.kind == "b":
            out.append(rng.random(shape) < 0.5)
        elif spec.dtype.kind in "iu":
            out.append(rng.integers(0, 2, shape).astype(spec.dtype))
        else:
            out.append(rng.standard_normal(shape).astype(spec.dtype))
    return out


def make_batches(arrays: Sequence[np.ndarray], batch_size: int, exact: bool = False) -> List[List[np.ndarray]]:
    """Cut samples (one array per input, samples along axis 0) into batches of ``batch_size``.

    The last batch may be smaller, unless ``exact`` (a model with a fixed batch size): then the
    samples left over are dropped.

    Example:
        >>> [len(b[0]) for b in make_batches([np.zeros((10, 2))], 4)]
        [4, 4, 2]
        >>> [len(b[0]) for b in make_batches([np.zeros((10, 2))], 4, exact=True)]
        [4, 4]
    """
    n = len(arrays[0])
    stop = n - n % batch_size if exact else n
    return [[a[i:i + batch_size] for a in arrays] for i in range(0, stop, batch_size)]
