"""Where the data lives: an explicit flag, then ``$YOLOQ_DATA``, then ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFoundError

ENV_VAR = "YOLOQ_DATA"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(flag: str | os.PathLike | None = None) -> Path:
    """Resolve the data root; raise DataNotFoundError naming every place that was looked at."""
    tried = []
    candidates = []
    if flag:
        candidates.append(("--data", Path(flag)))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    else:
        candidates.append(("default", _REPO_ROOT.parent / "shared" / "data"))
        candidates.append(("default", Path.cwd().parent / "shared" / "data"))
    for origin, path in candidates:
        if path.is_dir():
            return path.resolve()
        tried.append(f"{path} ({origin})")
    raise DataNotFoundError(
        "data folder not found; looked at " + ", ".join(tried)
        + f". Pass --data DIR or set ${ENV_VAR} to the folder holding yolov5n/, coco/ and coco128/"
        " (see README, 'Data'), or run `yoloq fetch`."
    )


def data_file(relative: str, flag: str | os.PathLike | None = None) -> Path:
    """A file or folder inside the data root, with a clear error naming it when absent."""
    root = data_root(flag)
    path = root / relative
    if not path.exists():
        raise DataNotFoundError(f"{relative} is missing from the data folder {root}")
    return path


def require(path: str | os.PathLike, what: str) -> Path:
    """Check a user-given path exists; the error names the flag's meaning and the path."""
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"{what} not found: {p}")
    return p
