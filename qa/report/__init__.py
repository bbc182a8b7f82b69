"""Every result file qa writes: the JSON (AIMET's names and shapes) and the HTML pages built from it.

Altair, vl-convert and Jinja2 (the ``report`` extra) are imported only when HTML is built.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import QAError, QAValueError

__all__ = ["ResultsDir", "sanitize", "SUMMARY_SCHEMA_VERSION", "build_html", "try_build_html"]

SUMMARY_SCHEMA_VERSION = 1
_MAX_NAME = 120  # keeps every path component well under the usual 255-byte limit
_TEMP_PREFIX = ".qa-"  # every file is written to .qa-<random>.tmp beside it, then renamed
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows, where the lstat checks alone guard
MAX_READ_BYTES = 256 * 2**20  # no result file of qa comes near this

log = logging.getLogger("qa")


def sanitize(name: str) -> str:
    """A file-name-safe form of a layer or quantizer name, unique per name.

    A name that is already safe (ASCII letters, digits and ``_``, at most 120 characters) is kept
    as it is. Any other name becomes its safe characters (AIMET: ``re.sub(r'\\W+', '_', name)``)
    plus a short stable hash of the full name, so that names differing only in punctuation
    (``a-b``, ``a.b``, ``a_b``) keep different files and every process finds the same file.

    Example:
        >>> sanitize("conv1_weight")
        'conv1_weight'
        >>> sanitize("layer1.0/conv..</script>")
        'layer1_0_conv_script_8281d6b216'
        >>> len({sanitize("a-b"), sanitize("a.b"), sanitize("a_b")})
        3
    """
    name = str(name)
    if len(name) <= _MAX_NAME and re.fullmatch(r"\w+", name, re.ASCII):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    safe = re.sub(r"\W+", "_", name, flags=re.ASCII).strip("_")
    return f"{safe[:_MAX_NAME - 11]}_{digest}" if safe else f"_{digest}"


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, tuples to lists, NaN and inf to null (JSON has
    neither; summary.json's ``nonfinite_scores`` says which scores they were)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _folder(path: Any) -> Path:
    """The absolute folder a results_dir argument names (it need not exist yet)."""
    if not isinstance(path, (str, os.PathLike)):
        raise QAValueError(f"results_dir must be a folder path, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise QAValueError(f"results_dir must be a folder path (str), got {type(text).__name__}")
    if not text:
        raise QAValueError("results_dir is empty: name a folder")
    if "\0" in text:
        raise QAValueError(f"results_dir {text!r} contains a NUL character")
    try:
        root = Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as e:
        raise QAValueError(f"results_dir {text!r} cannot be resolved: {e}") from e
    if os.path.lexists(root) and not root.is_dir():
        what = "a file, not a folder" if root.is_file() else "not a folder"
        raise QAValueError(f"results_dir {str(root)!r} is {what}")
    return root


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _new_temp(folder: Path) -> Tuple[int, Path]:
    """A new, empty file in folder with a unique hidden name, open for writing.

    ``tempfile.mkstemp`` does this (O_CREAT | O_EXCL: never an existing path, so never a planted
    link) but with mode 0o600; results are shared files, so the mode here is what a plain open()
    gives (0o666 less the umask).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(folder))


class ResultsDir:
    """The results folder qa writes to and the report reads from; nothing in it can redirect qa.

    A folder received as a tarball or from git may hold planted links, so every path is checked
    component by component and qa never follows a symbolic link below the folder itself: files
    are written to a new unique temporary name and renamed over the target (a link or hard link
    at the target is replaced, never written through), folders on the way must be real folders,
    and reads take regular files only, up to 256 MiB. File names come from ``sanitize``, so no
    layer name (they come from downloaded models) can point outside.

    Args:
        path: the folder (created when missing, unless ``create`` is False).
        create: False to require an existing folder (``qa report``).

    Raises:
        QAValueError: path is not a folder path (None, a number, NUL in it, an existing file).
        QAError: the folder is missing (create=False) or not writable.

    Example:
        >>> import tempfile
        >>> out = ResultsDir(tempfile.mkdtemp())
        >>> out.write_json({"conv1": float("nan")}, "per_layer_quant_enabled.json").name
        'per_layer_quant_enabled.json'
        >>> out.read_json("per_layer_quant_enabled.json")
        {'conv1': None}
        >>> ResultsDir(None)
        Traceback (most recent call last):
        ...
        qa.errors.QAValueError: results_dir must be a folder path, got NoneType
    """

    def __init__(self, path: Union[str, os.PathLike], *, create: bool = True) -> None:
        self.root = _folder(path)
        if not create and not self.root.is_dir():
            raise QAError(f"no qa results in {self.root}: there is no such folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = _new_temp(self.root)  # writable? (before any work)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise QAError(f"results_dir {str(self.root)!r} is not writable: {e.strerror or e}") from e
        self.written: List[Path] = []
        self._known: set = set()  # the same paths, for O(1) membership

    # -- paths --

    def path(self, *parts: str) -> Path:
        """root/parts..., each part sanitized except the file suffix; never outside root."""
        *dirs, leaf = parts
        stem, dot, suffix = leaf.rpartition(".")
        leaf = sanitize(stem) + dot + re.sub(r"\W+", "", suffix, flags=re.ASCII) if dot else sanitize(leaf)
        return self.root.joinpath(*(sanitize(d) for d in dirs), leaf)

    def _parts(self, rel: Union[str, os.PathLike]) -> Tuple[str, ...]:
        """The components of a path inside the folder (relative, or absolute under root); else QAError."""
        path = Path(rel) if isinstance(rel, Path) else PurePosixPath(os.fspath(rel))
        if path.is_absolute():
            try:
                path = PurePosixPath(Path(path).relative_to(self.root).as_posix())
            except ValueError:
                raise QAError(f"refusing {str(rel)!r}: it is outside the results folder {self.root}") from None
        parts = tuple(path.parts)
        if not parts or any(p in ("", ".", "..") or "\0" in p or "\\" in p for p in parts):
            raise QAError(f"refusing {str(rel)!r}: not a plain path inside the results folder {self.root}")
        return parts

    def _folders(self, parts: Tuple[str, ...], create: bool) -> Optional[Path]:
        """root/parts, checked (or made) one component at a time: real folders only, no links."""
        folder = self.root
        for name in parts:
            folder = folder / name
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(folder)
                except FileExistsError:  # another writer made it meanwhile: check what it is
                    pass
                st = os.lstat(folder)
            if stat.S_ISLNK(st.st_mode):
                raise QAError(f"refusing {folder}: it is a symbolic link, and qa never follows links inside the "
                              f"results folder")
            if not stat.S_ISDIR(st.st_mode):
                raise QAError(f"refusing {folder}: it is not a folder")
        return folder

    # -- writing --

    def write_json(self, data: Any, *parts: str, compact: bool = False) -> Path:
        """Write data as JSON (NaN/inf as null) to ``path(*parts)``; returns the path. Indented for
        reading, or ``compact`` (no whitespace: bulk numbers such as histogram counts)."""
        target = self.path(*parts)
        text = (json.dumps(_plain(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False) if compact
                else json.dumps(_plain(data), indent=4, ensure_ascii=False, allow_nan=False))
        self.write_text(text, target)
        return target

    def write_text(self, text: str, target: Union[str, os.PathLike]) -> None:
        """Write text (UTF-8) to target, a path inside the folder: a new temporary file renamed over it."""
        self.write_bytes(text.encode("utf-8"), target)

    def write_bytes(self, data: bytes, target: Union[str, os.PathLike]) -> None:
        """Write data to target, a path inside the folder: a new temporary file renamed over it.

        Raises QAError("cannot write <path>: <reason>") on any failure, leaving no temporary file.
        """
        parts = self._parts(target)
        path = self.root.joinpath(*parts)
        tmp: Optional[Path] = None
        try:
            folder = self._folders(parts[:-1], create=True)
            assert folder is not None
            fd, tmp = _new_temp(folder)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)  # a link at path is replaced itself, never followed
        except BaseException as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                raise QAError(f"cannot write {path}: {e.strerror or e}") from e
            raise
        if path not in self._known:
            self._known.add(path)
            self.written.append(path)

    def remove(self, rel: Union[str, os.PathLike]) -> bool:
        """Delete one regular file of the folder (a previous run's), and folders it leaves empty.

        Links are never followed or deleted; a missing file is fine. A path that is not a plain
        path inside the folder, or runs through a link, is left alone with a warning (a hand-edited
        ``summary.json`` must not stop a run). Returns whether a file was deleted.
        """
        try:
            parts = self._parts(rel)
            folder = self._folders(parts[:-1], create=False)
        except QAError as e:
            log.warning("not removing %s: %s", rel, e)
            return False
        if folder is None:
            return False
        path = folder / parts[-1]
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                log.warning("not removing %s: it is not a regular file", path)
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise QAError(f"cannot remove {path}: {e.strerror or e}") from e
        self._known.discard(path)
        for up in path.parents:  # folders qa made and this leaves empty (rmdir never removes a link or a full folder)
            if up == self.root or self.root not in up.parents:
                break
            try:
                os.rmdir(up)
            except OSError:
                break
        return True

    # -- reading --

    def exists(self, rel: Union[str, os.PathLike]) -> bool:
        """Whether there is anything at rel (a link counts; it is not followed)."""
        try:
            return os.path.lexists(self.root.joinpath(*self._parts(rel)))
        except (QAError, OSError, ValueError):
            return False

    def read_bytes(self, rel: Union[str, os.PathLike]) -> Optional[bytes]:
        """The bytes of a regular file inside the folder, or None when there is none.

        Raises:
            QAError: rel is a link, not a regular file, outside the folder, or over 256 MiB.
        """
        parts = self._parts(rel)
        name = "/".join(parts)
        folder = self._folders(parts[:-1], create=False)
        if folder is None:
            return None
        path = folder / parts[-1]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise QAError(f"cannot read {name}: {e.strerror or e}") from e
        if stat.S_ISLNK(st.st_mode):
            raise QAError(f"{name} is a symbolic link; qa reads only regular files inside the results folder")
        if not stat.S_ISREG(st.st_mode):
            raise QAError(f"{name} is not a regular file")
        flags = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise QAError(f"{name} is not a regular file")
                if st.st_size > MAX_READ_BYTES:
                    raise QAError(f"{name} is {_size(st.st_size)}; qa reads result files of up to "
                                  f"{_size(MAX_READ_BYTES)}")
                chunks, size = [], 0
                while size <= MAX_READ_BYTES:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            finally:
                os.close(fd)
        except OSError as e:
            raise QAError(f"cannot read {name}: {e.strerror or e}") from e
        if size > MAX_READ_BYTES:
            raise QAError(f"{name} grew past {_size(MAX_READ_BYTES)} while being read")
        return b"".join(chunks)

    def read_json(self, rel: Union[str, os.PathLike]) -> Any:
        """The JSON of a regular file inside the folder, or None when there is none.

        Raises:
            QAError: naming the file, when it is not valid UTF-8 JSON, nested too deeply, a link,
                not a regular file, or too large.
        """
        data = self.read_bytes(rel)
        if data is None:
            return None
        name = "/".join(self._parts(rel))
        try:
            return json.loads(data.decode("utf-8"))
        except RecursionError:
            raise QAError(f"{name}: nested too deeply to be a qa result file") from None
        except UnicodeDecodeError as e:
            raise QAError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except ValueError as e:  # JSONDecodeError, or an integer of over 4300 digits
            raise QAError(f"{name}: not valid JSON ({e})") from None


#: At most this many bins per channel in a per-channel weight's histogram file (neighbouring bins of
#: the 2,048 observed are added up): one file holds every channel of the weight, and a network
#: has thousands of channels. Per-tensor histograms keep every bin.
CHANNEL_BINS = 128


def histogram_record(stats: Any, encoding: Any, channel_bins: int = CHANNEL_BINS) -> Dict[str, Any]:
    """The data of one histogram plot: ``lo`` and ``width`` of the bins, the counts from the first
    to the last non-empty bin (bin i spans ``lo + i*width .. lo + (i+1)*width``), the encoding's
    min/max and the share of values it clips (from the observed bins). Compact: no edge list, no
    empty tails, and per channel at most ``channel_bins`` bins (whole observed bins added up)."""
    def one(counts, lo, width, mn, mx, most=None):
        counts = np.asarray(counts)
        nz = np.flatnonzero(counts)
        first, last = (int(nz[0]), int(nz[-1])) if nz.size else (0, -1)
        mids = lo + width * (np.arange(counts.size) + 0.5)
        total = counts.sum()
        clipped = counts[(mids < mn) | (mids > mx)].sum() / total if total else 0.0
        start, kept = lo + width * first, counts[first:last + 1]
        if most is not None and kept.size > most:  # k whole bins per bin: the edges stay observed edges
            k = -(-kept.size // most)
            kept = np.pad(kept, (0, -kept.size % k)).reshape(-1, k).sum(axis=1)
            width = width * k
        return {"lo": start, "width": width, "counts": kept,
                "encoding_min": mn, "encoding_max": mx, "clipped_fraction": clipped}
    if stats.axis is None:
        return one(stats.counts, stats.lo, stats.width, encoding.min, encoding.max)
    return {"channels": [one(stats.counts[c], stats.lo[c], stats.width[c], encoding.min[c], encoding.max[c],
                             channel_bins) for c in range(stats.channels)]}


def build_html(results_dir: Union[str, os.PathLike], *, png: bool = False, svg: bool = False) -> List[Path]:
    """Build every HTML page of a results folder from its JSON files alone.

    Works on any folder ``analyze`` wrote (also one copied elsewhere), and on AIMET-style folders
    with only some of the JSON files. When ``summary.json`` lists its run's files, only those are
    read. Every file is checked against ``qa/report/schema/summary.schema.json`` first. Pages
    render offline: the Vega JavaScript is written once to ``_static/qa_vega.js`` and every page
    refers to it by a relative path. Pages and images an earlier build wrote (its manifest,
    ``_static/pages.json``) that this build does not write are removed; nothing else is.

    Args:
        results_dir: the results folder (it must exist; nothing is created for a missing one).
        png: also write each chart as a PNG (``charts/<page>_<chart>.png``), for slides.
        svg: the same as SVG.

    Returns:
        Exactly the files written: pages, the shared ``_static/`` files, the exported images.

    Raises:
        QAError: no results in the folder, a result file that is damaged (naming the file and
            field), a link, or over 256 MiB, a file that cannot be written, or altair /
            vl-convert-python / Jinja2 missing (``pip install 'qa-quant[report]'``).

    Example:
        >>> import qa.report, tempfile
        >>> qa.report.build_html(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        qa.errors.QAError: no qa results in ...
    """
    try:
        from . import _html
    except ImportError as e:
        raise QAError(f"the HTML report needs altair, vl-convert-python and Jinja2 ({e}): "
                      "pip install 'qa-quant[report]'") from e
    return _html.build(results_dir, png=png, svg=svg)


def try_build_html(results_dir: Union[str, os.PathLike]) -> List[Path]:
    """``build_html`` that never fails: a missing altair or a failing page is one logged warning
    (the JSON results stay as they are; ``qa report DIR`` retries). Returns the files written."""
    try:
        from . import _html
    except ImportError as e:
        log.warning("no HTML report: it needs altair, vl-convert-python and Jinja2 (missing: %s); the JSON results are "
                    "complete. pip install 'qa-quant[report]', then run: qa report %s", e.name or e, results_dir)
        return []
    try:
        return _html.build(results_dir)
    except Exception as e:  # the JSON is what matters; the pages can be rebuilt from it
        log.warning("the HTML report failed (%s: %s); the JSON results are complete; qa report %s retries",
                    type(e).__name__, e, results_dir, exc_info=log.isEnabledFor(logging.DEBUG))
        return []
