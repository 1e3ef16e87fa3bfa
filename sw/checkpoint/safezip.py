"""Read members of an untrusted zip (checkpoints, artifacts) with every size checked before it is read.

A member's size is taken from the zip's directory and checked against the caller's limit, the file's
compression ratio (:data:`~sw.limits.MAX_EXPANSION`) and a running total before a byte is decompressed;
``zipfile`` then stops decompressing at that declared size, so a lying header cannot make the read larger.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from .. import limits
from ..errors import CheckpointError

_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def check_input_file(path: str | os.PathLike, what: str) -> int:
    """The size of ``path``, which must be an existing regular file under the file limit."""
    source = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{source}: {what} not found") from None
    except OSError as e:
        raise CheckpointError(f"{source}: cannot read {what} ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{source}: is a folder, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{source}: is not a regular file (a FIFO, socket or device), expected a {what}")
    if st.st_size > limits.MAX_FILE_BYTES:
        raise CheckpointError(f"{source}: {st.st_size} bytes, more than the {limits.MAX_FILE_BYTES // limits.MiB} "
                              f"MiB a {what} may have")
    return st.st_size


def _check_directory(path, source: str) -> None:
    """The zip's entry count and directory size, from its end record, before ``zipfile`` parses every entry
    (a directory of millions of entries costs minutes and gigabytes)."""
    with open(path, "rb") as fh:
        end = zipfile._EndRecData(fh)  # noqa: SLF001 - the end record parser zipfile itself uses
    if end is None:
        raise CheckpointError(f"{source}: corrupt or truncated zip (no end of central directory)")
    count, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # noqa: SLF001
    if count > limits.MAX_MEMBERS or size > limits.MAX_MEMBERS * 1024:
        raise CheckpointError(f"{source}: {count} zip entries in a {size}-byte directory, more than the "
                              f"{limits.MAX_MEMBERS} entries accepted")


class SafeZip:
    """An open zip whose reads are bounded; ``total`` counts the bytes decompressed so far."""

    def __init__(self, path: str | Path, source: str, budget: int = limits.MAX_TENSOR_BYTES):
        self.source, self.total = source, 0
        try:
            # a small file cannot make yoloq read much more than it holds, whatever its members claim
            self.budget = min(budget, limits.MAX_TOTAL_EXPANSION * os.path.getsize(path) + limits.MiB)
            _check_directory(path, source)
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"{source}: corrupt or truncated zip ({e})") from None
        self.infos = {i.filename: i for i in self.zf.infolist()}
        self.names = set(self.infos)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zf.close()

    def size(self, name: str) -> int:
        return self.infos[name].file_size

    def read(self, name: str, limit: int, what: str | None = None) -> bytes:
        """The bytes of member ``name``, refused if its declared size exceeds ``limit`` or the budget."""
        what = what or name
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.source}: {what} is missing")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.source}: {what} is encrypted")
        if info.compress_type not in _METHODS:
            raise CheckpointError(f"{self.source}: {what} uses zip compression method {info.compress_type} "
                                  f"(only {' and '.join(_METHODS.values())} are read)")
        if info.file_size > limit:
            raise CheckpointError(f"{self.source}: {what} is {info.file_size} bytes, more than the "
                                  f"{limit} accepted")
        if info.file_size > limits.MAX_EXPANSION * info.compress_size + 4096:
            raise CheckpointError(f"{self.source}: {what} expands {info.compress_size} bytes to "
                                  f"{info.file_size} (a zip bomb? at most {limits.MAX_EXPANSION}x is read)")
        if self.total + info.file_size > self.budget:
            raise CheckpointError(f"{self.source}: more than {self.budget} bytes of data in all (at most "
                                  f"{limits.MAX_TOTAL_EXPANSION}x the file's size, {limits.MAX_TENSOR_BYTES // limits.MiB}"
                                  " MiB at most)")
        self.total += info.file_size
        try:
            with self.zf.open(info) as fh:
                data = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(f"{self.source}: {what} is corrupt ({e})") from None
        if len(data) != info.file_size:
            raise CheckpointError(f"{self.source}: {what} is truncated")
        return data
