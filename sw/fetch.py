"""``yoloq fetch``: download the YOLOv7 checkpoint and COCO val2017, verify them by sha256, lay them out.

Layout under DEST (the same as the data folder the rest of yoloq reads, so ``--data DEST`` works afterwards)::

    yolov7/yolov7.pt
    coco/images/val2017/*.jpg
    coco/annotations/instances_val2017.json
    downloads/val2017.zip, downloads/annotations_trainval2017.zip   (kept so reruns verify and skip them)

Each file downloads to ``FINAL.part`` (resumed with an HTTP Range request), is hashed, and only then is
renamed to its final path, so a final path never holds a partial or unverified-wrong file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from . import __version__
from .errors import DataNotFoundError, YoloqError

CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar


class FetchError(YoloqError):
    """A fetch request or a downloaded file is unusable (unknown name, size or format mismatch)."""


class ChecksumError(FetchError):
    """A downloaded file's sha256 differs from the manifest; the file was moved aside, not installed."""


@dataclass(frozen=True)
class Asset:
    """One file to download: where from, what it must hash to, where it lands and what to unpack from it.

    ``path`` is relative to DEST. ``extract`` lists (member, folder) pairs: zip members equal to ``member``,
    or under it when it ends in '/', are written to DEST/folder/<member name>.
    """

    group: str
    url: str
    size: int | None
    sha256: str | None
    path: str
    extract: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


# Neither the YOLOv7 release nor COCO publishes sha256 files, so the sizes and hashes below are values
# recorded in public repositories; each was found in at least two independent places, named beside it.
MANIFEST: tuple[Asset, ...] = (
    Asset(group="yolov7",
          url="https://github.com/WongKinYiu/yolov7/releases/download/v0.1/yolov7.pt",
          # Git LFS pointer of yolov7.pt in github.com/kayecute/yolo7reco (commit f83650a9, path yolov7.pt):
          # "oid sha256:d1ac3c74... size 75587165" (an LFS oid is the sha256 of the stored file). Another
          # public project's model notes record the same sha256 and size for the file from this exact URL.
          size=75_587_165,
          sha256="d1ac3c74eb96a3eec77949c0f37a06bc272756606ff011d9353f7abff4e0c71d",
          path="yolov7/yolov7.pt"),
    Asset(group="coco-val2017",
          url="http://images.cocodataset.org/zips/val2017.zip",
          # pytorch/vision torchvision/prototype/datasets/_builtin/coco.py (commit 1ec2509e),
          # _IMAGES_CHECKSUMS[("2017", "val")]; also in several dataset-preparation scripts
          # (checksum.sha256sum heredocs) with size 815585330.
          size=815_585_330,
          sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
          path="downloads/val2017.zip",
          extract=(("val2017/", "coco/images"),)),
    Asset(group="coco-val2017",
          url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
          # pytorch/vision torchvision/prototype/datasets/_builtin/coco.py (commit 1ec2509e),
          # _META_CHECKSUMS["2017"]; also the Julia DataDeps registration of this URL, size 252907541.
          size=252_907_541,
          sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
          path="downloads/annotations_trainval2017.zip",
          # Only the detection labels are needed; the zip also holds captions and keypoints.
          extract=(("annotations/instances_val2017.json", "coco"),)),
)

GROUPS = tuple(dict.fromkeys(a.group for a in MANIFEST))


# ---------------------------------------------------------------- small pure helpers

def parse_what(text: str, manifest: tuple[Asset, ...] = MANIFEST) -> tuple[str, ...]:
    """Split a comma-separated ``--what`` value into known group names; raise FetchError naming bad ones."""
    known = tuple(dict.fromkeys(a.group for a in manifest))
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise FetchError(f"unknown --what {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return names


def select(manifest: tuple[Asset, ...], groups: tuple[str, ...] | None) -> tuple[Asset, ...]:
    """The manifest entries in the given groups (all of them for None), in manifest order."""
    return tuple(a for a in manifest if groups is None or a.group in groups)


def rebase_url(url: str, base_url: str | None) -> str:
    """Replace everything before the file name with ``base_url`` (for mirrors and tests); None keeps ``url``."""
    if not base_url:
        return url
    return base_url.rstrip("/") + "/" + PurePosixPath(urllib.parse.urlparse(url).path).name


def part_path(final: Path) -> Path:
    """Where the download of ``final`` accumulates until it is verified."""
    return final.with_name(final.name + ".part")


def bad_path(final: Path) -> Path:
    """Where a file whose sha256 is wrong is moved, so it can be inspected but is never used."""
    return final.with_name(final.name + ".bad")


def parse_content_range(value: str | None) -> tuple[int, int | None]:
    """``'bytes START-END/TOTAL'`` -> (START, TOTAL or None when '*'); raise FetchError if malformed."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        raise FetchError(f"server sent an unreadable Content-Range header {value!r}")
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def member_target(root: Path, name: str) -> Path:
    """The path a zip member is written to under ``root``; refuse names that would escape it."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or ":" in parts[0]:
        raise FetchError(f"refusing zip member with an unsafe path: {name!r}")
    return root.joinpath(*parts)


def member_wanted(name: str, member: str) -> bool:
    """Whether zip member ``name`` is ``member``, or lies under it when ``member`` ends in '/'."""
    return name.startswith(member) if member.endswith("/") else name == member


def unpacked_paths(asset: Asset, dest: Path) -> list[str]:
    """Where ``asset``'s zip members end up, for messages: 'DEST/coco/images/val2017/*' style."""
    return [str(dest / folder / member) + ("/*" if member.endswith("/") else "") for member, folder in asset.extract]


def manual_hint(assets: tuple[Asset, ...], dest: Path) -> str:
    """Tell an offline user where to put each file by hand, and how to use an existing data folder instead."""
    saves = "; ".join(f"save {a.url} as {dest / a.path}" for a in assets)
    unpack = " and unpack" if any(a.extract for a in assets) else ""
    hint = f"To install by hand: {saves}; then rerun `yoloq fetch` to verify{unpack} them."
    unpacked = [p for a in assets for p in unpacked_paths(a, dest)]
    if unpacked:
        hint += f" (Unpacking the zips yourself also works: yoloq reads {' and '.join(unpacked)}.)"
    return hint + " Or point yoloq at an existing data folder with --data DIR or $YOLOQ_DATA."


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- downloader

class Unreachable(DataNotFoundError):
    """The server could not be reached or refused the file; fetch() adds where to put it by hand."""


class ConnectionLost(Unreachable):
    """The connection broke mid-file; the .part keeps what arrived, so a retry resumes."""


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": f"yoloq/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"  # urllib keeps it across GitHub's redirect to its CDN
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(asset: Asset, url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Bring ``part`` up to the whole file: append after a 206, start over after a 200."""
    offset = part.stat().st_size if part.exists() else 0
    if asset.size is not None and offset > asset.size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        offset = 0
    if asset.size is not None and offset == asset.size and offset:
        return  # already complete from an earlier run; verification decides
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return  # nothing past our offset: the part is complete (or wrong, which the hash will say)
        raise Unreachable(f"{url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise Unreachable(f"could not reach {url} ({reason})") from None

    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start, total = parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise FetchError(f"{url} answered a Range request for byte {offset} with byte {start}; "
                                 "the partial file was removed, rerun to download from the start")
            if total is None and length is not None:
                total = offset + int(length)
            mode = "ab"
        else:  # 200: the server ignored the Range header, so the old part is useless
            offset, total, mode = 0, (int(length) if length is not None else None), "wb"
        if asset.size is not None and total is not None and total != asset.size:
            part.unlink(missing_ok=True)
            raise FetchError(f"{url} is {total} bytes, the manifest expects {asset.size}: not the published "
                             f"{asset.filename}; check --base-url or the mirror")
        done = offset
        part.parent.mkdir(parents=True, exist_ok=True)  # only now, so an offline run leaves no empty folders
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=asset.filename, disable=not progress,
                                           leave=False) as bar:
            try:
                while block := resp.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                raise ConnectionLost(f"connection to {url} lost after {done} bytes ({e})") from None
        if total is not None and done < total:
            raise ConnectionLost(f"connection to {url} closed after {done} of {total} bytes")


def _install(asset: Asset, part: Path, final: Path) -> str:
    """Hash ``part``; on a match (or with no published hash) rename it to ``final``. Returns the sha256."""
    digest = sha256_file(part)
    if asset.sha256 is not None and digest != asset.sha256:
        os.replace(part, bad_path(final))
        raise ChecksumError(f"{asset.filename}: sha256 {digest} does not match the published {asset.sha256}; "
                            f"nothing was installed at {final}, the download was moved to {bad_path(final)} "
                            "(delete it and rerun to download again)")
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())  # the rename below must not land before the data does
    os.replace(part, final)
    return digest


def _report_hash(asset: Asset, digest: str, how: str) -> None:
    if asset.sha256 is None:
        print(f"{asset.filename}: {how}; sha256 {digest} could NOT be verified: "
              "no published checksum is known for this file")
    else:
        print(f"{asset.filename}: {how}, sha256 verified")


def download(asset: Asset, dest: Path, *, base_url: str | None = None, progress: bool = True,
             timeout: float = 30.0, retries: int = 2) -> Path:
    """Make DEST/asset.path the verified file: skip it when cached, else download (resuming) and verify.

    A connection broken mid-file is retried ``retries`` times, each resuming where it stopped; a server
    that cannot be reached at all is not retried. Ctrl-C leaves the ``.part`` file for the next run.
    Raises Unreachable (a DataNotFoundError) when offline, ChecksumError when the sha256 is wrong.
    """
    final = dest / asset.path
    if final.exists():
        digest = sha256_file(final)
        if asset.sha256 is None or digest == asset.sha256:
            if asset.sha256 is None:
                _report_hash(asset, digest, "present")
            else:
                print(f"{asset.filename}: ok (cached)")
            return final
        os.replace(final, bad_path(final))  # a wrong file at the final path must never be used
        print(f"{asset.filename}: sha256 of {final} is {digest}, not {asset.sha256}; "
              f"moved it to {bad_path(final)} and downloading again")
    part = part_path(final)
    url = rebase_url(asset.url, base_url)
    print(f"{asset.filename}: {'resuming' if part.exists() else 'downloading'} {url}")
    for attempt in range(retries + 1):
        try:
            _transfer(asset, url, part, progress=progress, timeout=timeout)
            break
        except ConnectionLost as e:
            if attempt == retries:
                raise ConnectionLost(f"{e}; partial download kept at {part}, rerun to resume") from None
            print(f"{asset.filename}: {e}; resuming ({attempt + 1}/{retries})")
        except KeyboardInterrupt:
            print(f"\n{asset.filename}: interrupted; partial download kept at {part}, rerun to resume")
            raise
    _report_hash(asset, _install(asset, part, final), "downloaded")
    return final


def extract(asset: Asset, archive: Path, dest: Path, *, progress: bool = True) -> int:
    """Unpack the members ``asset.extract`` names from ``archive`` under DEST; return how many were written.

    Members already present with the right size are skipped, so an interrupted extraction resumes;
    each file is written beside its target and renamed, so none is ever half-written.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{archive} is not a readable zip ({e}); delete it and rerun") from None
    with zf:
        infos = zf.infolist()
        todo = []
        for member, folder in asset.extract:
            matched = [i for i in infos if member_wanted(i.filename, member) and not i.is_dir()]
            if not matched:
                raise FetchError(f"{archive} has no {member}; it is not the expected {asset.filename}")
            for info in matched:
                target = member_target(dest / folder, info.filename)
                if not (target.is_file() and target.stat().st_size == info.file_size):
                    todo.append((info, target))
        for info, target in tqdm(todo, desc=f"unpack {asset.filename}", unit="file",
                                 disable=not progress or not todo, leave=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            try:
                with zf.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(tmp, target)
            except BaseException:  # Ctrl-C included: leave no stray .tmp beside the images
                tmp.unlink(missing_ok=True)
                raise
    return len(todo)


def fetch(dest: str | os.PathLike = "data", what: tuple[str, ...] | None = None, *,
          manifest: tuple[Asset, ...] = MANIFEST, base_url: str | None = None, progress: bool = True,
          timeout: float = 30.0, retries: int = 2) -> list[Path]:
    """Download, verify and unpack the selected groups of ``manifest`` into ``dest``; return the files.

    ``what`` names groups (e.g. ``("yolov7",)``); None fetches all. ``base_url`` replaces every URL's
    location with a mirror (the file name is kept). Offline, raises DataNotFoundError naming the URL that
    could not be reached and where each file goes when placed by hand.
    """
    dest = Path(dest)
    assets = select(manifest, what)
    files = []
    for asset in assets:
        try:
            path = download(asset, dest, base_url=base_url, progress=progress, timeout=timeout, retries=retries)
        except Unreachable as e:
            raise DataNotFoundError(f"{e}. {manual_hint(assets, dest)}") from None
        if asset.extract:
            n = extract(asset, path, dest, progress=progress)
            done = f"unpacked {n} files" if n else "already unpacked"
            print(f"{asset.filename}: {done} -> {', '.join(unpacked_paths(asset, dest))}")
        files.append(path)
    return files

