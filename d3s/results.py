"""Result files of the scoring commands (`d3s benchmark`, `d3s bgchallenge`): one JSON (and CSV) per model under
``RESULTS/models/``, named by a slug of the model name that round-trips, written atomically, and read back
(one model's result, or every result made on the same data). Both commands use these by their public names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Sequence

MODELS_DIR = "models"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def model_slug(name: str) -> str:
    """A file stem for a model name, different for every name.

    Names made only of ``A-Z a-z 0-9 . _ -`` are their own stem (``resnet50.tv_in1k``); any other name gets
    its unsafe characters replaced by ``_`` and a digest of the full name after a ``+`` (which no kept name
    has), so ``clip:ViT-B-32/openai`` and ``hf-hub:org/name`` each get their own files. The name itself is
    stored in the result (``model``), so it round-trips unchanged.
    """
    if _SAFE_NAME.fullmatch(name) and not name.startswith("."):
        return name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:120]
    return f"{readable}+{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def result_paths(out: str | Path, name: str) -> tuple[Path, Path]:
    """``models/<slug>.json`` and ``models/<slug>.csv`` (suffixes appended: a ``.tag`` is part of the stem)."""
    base = Path(out) / MODELS_DIR / model_slug(name)
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")


def legacy_result_path(out: str | Path, name: str) -> Path:
    """Where results were written before every name had its own file (``with_suffix`` took the ``.tag``)."""
    return (Path(out) / MODELS_DIR / re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")).with_suffix(".json")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """CSV of ``rows`` with these columns (others ignored), floats to 6 decimals."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def load_result(out: str | Path, name: str) -> dict | None:
    """The stored result of model ``name`` (also from a file written by an older d3s, if it is this model's)."""
    for path in (result_paths(out, name)[0], legacy_result_path(out, name)):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("model") == name:
            return result
    return None


def collect_results(out: str | Path, data: dict) -> list[dict]:
    """Every stored result in ``out`` for this data (models from earlier runs included), one per model.

    A model found in two files (an older d3s's file and its own) counts once, from its own file.
    """
    results: dict[str, dict] = {}
    for p in sorted((Path(out) / MODELS_DIR).glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        name = r.get("model")
        if r.get("data") == data and (name not in results or p == result_paths(out, name)[0]):
            results[name] = r
    return [results[k] for k in sorted(results)]


def left_out_results(out: str | Path, data: dict, what: dict[str, str] | None = None) -> list[dict]:
    """The results in ``out`` that :func:`collect_results` leaves out for this data: ``{"model", "why"}`` each, the
    why naming the parts of the data that differ (``what`` maps a data key to its words, e.g. ``{"imagenet": "the
    ImageNet reference"}``), so a summary can say what it does not show instead of dropping it silently."""
    what = what or {}
    kept = {r["model"] for r in collect_results(out, data)}
    left: dict[str, str] = {}
    for p in sorted((Path(out) / MODELS_DIR).glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        name, theirs = r.get("model"), r.get("data") or {}
        if name is None or name in kept or name in left:
            continue
        differ = [what.get(k, k) for k in sorted(set(data) | set(theirs)) if data.get(k) != theirs.get(k)]
        left[name] = "made on other data: " + ", ".join(differ or ["unrecorded"])
    return [{"model": m, "why": w} for m, w in sorted(left.items())]
