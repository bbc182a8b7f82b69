"""Every result file qa writes: the JSON (AIMET's names and shapes) and the HTML pages built from it.

Altair, vl-convert and Jinja2 (the ``report`` extra) are imported only when HTML is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..errors import QAError

__all__ = ["ResultsDir", "sanitize", "SUMMARY_SCHEMA_VERSION", "build_html", "try_build_html"]

SUMMARY_SCHEMA_VERSION = 1
_MAX_NAME = 120  # keeps every path component well under the usual 255-byte limit

log = logging.getLogger("qa")


def sanitize(name: str) -> str:
    """A file-name-safe form of a layer or quantizer name (AIMET: ``re.sub(r'\\W+', '_', name)``).

    Only ASCII letters, digits and ``_`` remain. Names that would lose more than punctuation
    (non-ASCII letters, nothing left, very long) get a short stable hash of the full name, so
    that different names keep different files and every process finds the same file.

    Example:
        >>> sanitize("layer1.0/conv..</script>")
        'layer1_0_conv_script_'
        >>> sanitize("卷积1") == sanitize("卷积1") != sanitize("池化1")
        True
    """
    name = str(name)
    safe = re.sub(r"\W+", "_", name, flags=re.ASCII)
    if safe.strip("_") and len(safe) <= _MAX_NAME and safe == re.sub(r"\W+", "_", name):
        return safe
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe.strip('_')[:_MAX_NAME - 11]}_{digest}" if safe.strip("_") else f"_{digest}"


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, tuples to lists, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf; keep them readable
    if isinstance(value, Path):
        return str(value)
    return value


class ResultsDir:
    """The results folder: created and checked for writing up front, files written atomically,
    and no name (layer names come from downloaded models) can point outside it."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.root = Path(path).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".qa-write-check-"):
                pass
        except OSError as e:
            raise QAError(f"results_dir {str(self.root)!r} is not writable: {e.strerror or e}") from e
        self.written: List[Path] = []
        self._known: set = set()  # the same paths, for O(1) membership

    def path(self, *parts: str) -> Path:
        """root/parts..., each part sanitized except the file suffix; never outside root."""
        *dirs, leaf = parts
        stem, dot, suffix = leaf.rpartition(".")
        leaf = sanitize(stem) + dot + re.sub(r"\W+", "", suffix) if dot else sanitize(leaf)
        target = self.root.joinpath(*(sanitize(d) for d in dirs), leaf).resolve()
        if self.root != target and self.root not in target.parents:
            raise QAError(f"refusing to write {target} outside results_dir {self.root}")
        return target

    def write_json(self, data: Any, *parts: str) -> Path:
        target = self.path(*parts)
        self.write_text(json.dumps(_plain(data), indent=4, ensure_ascii=False), target)
        return target

    def write_text(self, text: str, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except OSError as e:
            raise QAError(f"cannot write {target}: {e.strerror or e}") from e
        if target not in self._known:
            self._known.add(target)
            self.written.append(target)


def histogram_record(stats: Any, encoding: Any) -> Dict[str, Any]:
    """The data of one histogram plot: ``lo`` and ``width`` of the bins, the counts from the first
    to the last non-empty bin (bin i spans ``lo + i*width .. lo + (i+1)*width``), the encoding's
    min/max and the share of values it clips. Compact: no edge list, no empty tails."""
    def one(counts, lo, width, mn, mx):
        counts = np.asarray(counts)
        nz = np.flatnonzero(counts)
        first, last = (int(nz[0]), int(nz[-1])) if nz.size else (0, -1)
        mids = lo + width * (np.arange(counts.size) + 0.5)
        total = counts.sum()
        clipped = counts[(mids < mn) | (mids > mx)].sum() / total if total else 0.0
        return {"lo": lo + width * first, "width": width, "counts": counts[first:last + 1],
                "encoding_min": mn, "encoding_max": mx, "clipped_fraction": clipped}
    if stats.axis is None:
        return one(stats.counts, stats.lo, stats.width, encoding.min, encoding.max)
    return {"channels": [one(stats.counts[c], stats.lo[c], stats.width[c], encoding.min[c], encoding.max[c])
                         for c in range(stats.channels)]}


def build_html(results_dir: Union[str, os.PathLike], *, png: bool = False, svg: bool = False) -> List[Path]:
    """Build every HTML page of a results folder from its JSON files alone.

    Works on any folder ``analyze`` wrote (also one copied elsewhere), and on AIMET-style folders
    with only some of the JSON files. Pages render offline: the Vega JavaScript is written once to
    ``_static/qa_vega.js`` and every page refers to it by a relative path.

    Args:
        results_dir: the results folder.
        png: also write each chart as a PNG (``charts/<page>_<chart>.png``), for slides.
        svg: the same as SVG.

    Returns:
        The files written: pages, the shared ``_static/`` files, the exported images.

    Raises:
        QAError: no results in the folder, a file cannot be written, or altair / vl-convert-python /
            Jinja2 are missing (``pip install 'qa-quant[report]'``).

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
