"""Every result file qa writes: JSON now (AIMET's names and shapes), the HTML pages build on it."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..errors import QAError

__all__ = ["ResultsDir", "sanitize", "SUMMARY_SCHEMA_VERSION"]

SUMMARY_SCHEMA_VERSION = 1


def sanitize(name: str) -> str:
    """A file-name-safe form of a layer or quantizer name (AIMET: ``re.sub(r'\\W+', '_', name)``).

    Example:
        >>> sanitize("layer1.0/conv..</script>")
        'layer1_0_conv_script_'
    """
    safe = re.sub(r"\W+", "_", str(name), flags=re.ASCII)
    return safe if safe.strip("_") else "_" + str(abs(hash(name)) % 10**8)


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
        if target not in self.written:
            self.written.append(target)


def histogram_record(stats: Any, encoding: Any) -> Dict[str, Any]:
    """The data of one histogram plot: bin edges, counts, the encoding's min/max, the clipped share."""
    def one(counts, lo, width, mn, mx):
        counts = np.asarray(counts)
        edges = lo + width * np.arange(counts.size + 1)
        mids = (edges[:-1] + edges[1:]) / 2
        total = counts.sum()
        clipped = counts[(mids < mn) | (mids > mx)].sum() / total if total else 0.0
        return {"edges": edges, "counts": counts, "encoding_min": mn, "encoding_max": mx,
                "clipped_fraction": clipped}
    if stats.axis is None:
        return one(stats.counts, stats.lo, stats.width, encoding.min, encoding.max)
    return {"channels": [one(stats.counts[c], stats.lo[c], stats.width[c], encoding.min[c], encoding.max[c])
                         for c in range(stats.channels)]}
