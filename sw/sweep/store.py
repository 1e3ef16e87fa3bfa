"""A sweep's results folder: one JSON file per configuration, written atomically, so a sweep resumes.

Layout of ``RESULTS/``:

- ``sweep.json``: what the results were measured on (checkpoint hash, image ids, evaluation settings).
  A rerun into the same folder must match it; results of two different sweeps never mix.
- ``runs/<key>.json``: one configuration's outcome, ``status`` "ok" with its metrics or "failed" with its
  error. Written with :func:`sw.atomic.write_json` (temporary file, fsync, rename): a file is there whole or
  not at all, whenever the sweep is stopped.

A configuration counts as finished when its file says "ok"; failed ones are run again by a rerun, since a
failure may be passing (a crashed worker, memory).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import write_json
from ..errors import SweepError
from ..limits import is_finite_number

OK, FAILED = "ok", "failed"
METRICS = ("precision", "recall", "map50", "map50_95")   # numbers an ok record's "metrics" holds
QUANT = ("saving_paper", "saving_storage", "mse")        # numbers an ok record's "quant" holds


def _number(v) -> bool:
    return v is None or is_finite_number(v)


def check_record(record, key: str) -> str | None:
    """Why ``record`` is not a result record of ``key`` (a hand-edited or foreign file), or None."""
    if not isinstance(record, dict) or record.get("key") != key or record.get("status") not in (OK, FAILED):
        return f"not a result record of {key!r} (key, status ok/failed)"
    if record["status"] == OK:
        for part, fields in (("metrics", METRICS), ("quant", QUANT)):
            values = record.get(part)
            if not isinstance(values, dict) or not all(_number(values.get(f, "missing")) for f in fields):
                return f"its {part} lack finite numbers for {', '.join(fields)}"
        if not isinstance(record["quant"].get("granularity_counts", {}), dict):
            return "its quant granularity_counts is not a dict"
    return None
SETTINGS_FILE = "sweep.json"
RUNS_DIR = "runs"
# Settings that decide the numbers. Paths are left out: the same files moved elsewhere are the same sweep.
IDENTITY_FIELDS = ("weights_sha256", "image_ids_sha256", "images", "eval")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ids_sha256(image_ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(image_ids))).encode()).hexdigest()


class ResultStore:
    """Reads and writes one results folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs = self.root / RUNS_DIR

    def run_path(self, key: str) -> Path:
        return self.runs / f"{key}.json"

    def save(self, record: dict) -> Path:
        """Write one configuration's record atomically (it replaces an earlier one of the same key)."""
        path = self.run_path(record["key"])
        write_json(path, record)
        return path

    def load(self, key: str) -> dict | None:
        """The record of ``key``, or None if it has none. Every file here was written whole (atomic rename)."""
        path = self.run_path(key)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # only a hand-edited file can be broken
            raise SweepError(f"{path}: not a result record ({type(e).__name__}); delete it to recompute that "
                             "configuration") from None
        problem = check_record(record, key)
        if problem:
            raise SweepError(f"{path}: {problem}; delete it to recompute that configuration")
        return record

    def finished(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` whose result is already there with status ok."""
        done = set()
        for key in keys:
            record = self.load(key)
            if record is not None and record.get("status") == OK:
                done.add(key)
        return done

    def claim(self, settings: dict) -> None:
        """Bind the folder to ``settings``; refuse if it holds results of a sweep on other data or weights."""
        path = self.root / SETTINGS_FILE
        if path.exists():
            try:
                old = json.loads(path.read_text())
                if not isinstance(old, dict):
                    raise TypeError("not a JSON object")
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, TypeError) as e:
                raise SweepError(f"{path}: not a sweep settings file ({type(e).__name__}); pass another -o "
                                 "folder or delete this one") from None
            differ = [f for f in IDENTITY_FIELDS if old.get(f) != settings.get(f)]
            if differ:
                detail = "; ".join(f"{f}: was {old.get(f)!r}, now {settings.get(f)!r}" for f in differ)
                raise SweepError(f"{self.root} holds results of a different sweep ({detail}); "
                                 "pass another -o folder or delete this one")
        write_json(path, settings)
