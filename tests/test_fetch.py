"""``yoloq fetch`` against a real HTTP server on 127.0.0.1 serving small generated stand-ins for the files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socket
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sw import fetch as F
from sw.errors import DataNotFoundError, YoloqError

IMAGE_NAMES = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _make_files() -> dict[str, bytes]:
    rng = random.Random(0)
    instances = json.dumps({"images": [], "annotations": [], "categories": []}).encode()
    return {
        "yolov7.pt": rng.randbytes(300_000),  # a stand-in checkpoint: random bytes, a few hundred KB
        # Laid out like the real zips: a top-level val2017/ folder, and annotations/ holding several json.
        "val2017.zip": _zip({"val2017/": b"", **{f"val2017/{n}": rng.randbytes(2000) for n in IMAGE_NAMES}}),
        "annotations_trainval2017.zip": _zip({"annotations/instances_val2017.json": instances,
                                              "annotations/captions_val2017.json": b"{}",
                                              "annotations/instances_train2017.json": b"{}"}),
    }


FILES = _make_files()


def _manifest(files: dict[str, bytes] = FILES) -> tuple[F.Asset, ...]:
    """The real manifest with each entry's size and sha256 swapped for those of the generated stand-in."""
    out = []
    for a in F.MANIFEST:
        data = files[a.filename]
        out.append(replace(a, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return tuple(out)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with ``Range: bytes=N-`` support; ``server.drop_after[name] = k`` makes the
    next response for that file announce the full length but close the connection after k body bytes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        if name.startswith("moved/"):  # like GitHub's release URLs, which redirect to a CDN
            self.send_response(302)
            self.send_header("Location", "/" + name.removeprefix("moved/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and self.server.honour_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = self.server.drop_after.pop(name, None)
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # keep test output clean


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.drop_after, srv.honour_range = dict(FILES), [], {}, True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield srv
    srv.shutdown()
    srv.server_close()


def _fetch(dest, srv, what=None, **kw):
    kw.setdefault("manifest", _manifest())
    return F.fetch(dest, what, base_url=srv.base_url, progress=False, timeout=5, **kw)


def test_full_download_verifies_and_lays_out_coco(tmp_path, server, capsys):
    files = _fetch(tmp_path, server)
    assert files == [tmp_path / "yolov7/yolov7.pt", tmp_path / "downloads/val2017.zip",
                     tmp_path / "downloads/annotations_trainval2017.zip"]
    assert (tmp_path / "yolov7/yolov7.pt").read_bytes() == FILES["yolov7.pt"]
    images = sorted(p.name for p in (tmp_path / "coco/images/val2017").iterdir())
    assert images == IMAGE_NAMES
    assert json.loads((tmp_path / "coco/annotations/instances_val2017.json").read_text())["images"] == []
    # Only the detection labels are kept from the annotations zip.
    assert sorted(p.name for p in (tmp_path / "coco/annotations").iterdir()) == ["instances_val2017.json"]
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp"))
    out = capsys.readouterr().out
    assert out.count("sha256 verified") == 3 and "NOT" not in out
    assert [r for r in server.requests if r[1]] == []  # fresh download: no Range requests


def test_resume_after_dropped_connection_sends_range(tmp_path, server):
    data = FILES["yolov7.pt"]
    server.drop_after["yolov7.pt"] = 120_000
    with pytest.raises(DataNotFoundError, match=r"closed after 120000 of 300000 bytes.*rerun to resume"):
        _fetch(tmp_path, server, ("yolov7",), retries=0)
    final = tmp_path / "yolov7/yolov7.pt"
    assert not final.exists()
    assert F.part_path(final).read_bytes() == data[:120_000]

    _fetch(tmp_path, server, ("yolov7",), retries=0)
    assert server.requests[-1] == ("yolov7.pt", "bytes=120000-")
    assert final.read_bytes() == data
    assert not F.part_path(final).exists()


def test_range_survives_a_redirect(tmp_path, server):
    final = tmp_path / "yolov7/yolov7.pt"
    final.parent.mkdir(parents=True)
    F.part_path(final).write_bytes(FILES["yolov7.pt"][:1000])
    F.fetch(tmp_path, ("yolov7",), manifest=_manifest(), base_url=server.base_url + "moved/", progress=False)
    assert server.requests == [("moved/yolov7.pt", "bytes=1000-"), ("yolov7.pt", "bytes=1000-")]
    assert final.read_bytes() == FILES["yolov7.pt"]


def test_dropped_connection_is_retried_within_one_run(tmp_path, server, capsys):
    server.drop_after["yolov7.pt"] = 50_000
    _fetch(tmp_path, server, ("yolov7",), retries=1)
    assert server.requests == [("yolov7.pt", None), ("yolov7.pt", "bytes=50000-")]
    assert (tmp_path / "yolov7/yolov7.pt").read_bytes() == FILES["yolov7.pt"]
    assert "resuming (1/1)" in capsys.readouterr().out


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    final = tmp_path / "yolov7/yolov7.pt"
    final.parent.mkdir(parents=True)
    F.part_path(final).write_bytes(b"stale bytes from some other file")
    server.honour_range = False  # answers 200 with the whole file
    _fetch(tmp_path, server, ("yolov7",))
    assert server.requests == [("yolov7.pt", "bytes=32-")]
    assert final.read_bytes() == FILES["yolov7.pt"]


def test_complete_part_is_verified_without_downloading_again(tmp_path, server):
    final = tmp_path / "yolov7/yolov7.pt"
    final.parent.mkdir(parents=True)
    F.part_path(final).write_bytes(FILES["yolov7.pt"])
    _fetch(tmp_path, server, ("yolov7",))
    assert server.requests == []  # the manifest size says the part is whole
    assert final.read_bytes() == FILES["yolov7.pt"]


def test_wrong_sha256_fails_and_installs_nothing(tmp_path, server):
    manifest = tuple(replace(a, sha256="0" * 64) if a.group == "yolov7" else a for a in _manifest())
    with pytest.raises(F.ChecksumError, match=r"yolov7\.pt: sha256 [0-9a-f]{64} does not match the published 0{64}"):
        _fetch(tmp_path, server, ("yolov7",), manifest=manifest)
    final = tmp_path / "yolov7/yolov7.pt"
    assert not final.exists() and not F.part_path(final).exists()
    assert F.bad_path(final).read_bytes() == FILES["yolov7.pt"]  # quarantined for inspection


def test_cached_files_are_skipped(tmp_path, server, capsys):
    _fetch(tmp_path, server)
    server.requests.clear()
    capsys.readouterr()
    _fetch(tmp_path, server)
    assert server.requests == []
    out = capsys.readouterr().out
    assert out.count("ok (cached)") == 3 and out.count("already unpacked") == 2


def test_wrong_file_at_final_path_is_replaced(tmp_path, server):
    final = tmp_path / "yolov7/yolov7.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"not the checkpoint")
    _fetch(tmp_path, server, ("yolov7",))
    assert final.read_bytes() == FILES["yolov7.pt"]
    assert F.bad_path(final).read_bytes() == b"not the checkpoint"


def test_missing_published_hash_is_reported_not_claimed(tmp_path, server, capsys):
    manifest = tuple(replace(a, sha256=None) if a.group == "yolov7" else a for a in _manifest())
    _fetch(tmp_path, server, ("yolov7",), manifest=manifest)
    digest = hashlib.sha256(FILES["yolov7.pt"]).hexdigest()
    out = capsys.readouterr().out
    assert f"sha256 {digest} could NOT be verified" in out and "sha256 verified" not in out


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_offline_names_url_and_where_to_put_files(tmp_path):
    base = _closed_port_url()
    with pytest.raises(DataNotFoundError) as exc:
        F.fetch(tmp_path, manifest=_manifest(), base_url=base, progress=False, timeout=5)
    msg = str(exc.value)
    assert f"could not reach {base}yolov7.pt" in msg
    assert str(tmp_path / "yolov7/yolov7.pt") in msg
    assert str(tmp_path / "downloads/val2017.zip") in msg
    assert str(tmp_path / "coco/annotations/instances_val2017.json") in msg
    assert "--data DIR" in msg and "$YOLOQ_DATA" in msg
    assert not list(tmp_path.rglob("*.pt"))


def test_http_error_is_a_clear_data_error(tmp_path, server):
    del server.files["yolov7.pt"]
    with pytest.raises(DataNotFoundError, match=r"yolov7\.pt answered HTTP 404.*To install by hand"):
        _fetch(tmp_path, server, ("yolov7",))


def test_size_mismatch_stops_early(tmp_path, server):
    manifest = tuple(replace(a, size=a.size + 1) if a.group == "yolov7" else a for a in _manifest())
    with pytest.raises(F.FetchError, match=r"is 300000 bytes, the manifest expects 300001"):
        _fetch(tmp_path, server, ("yolov7",), manifest=manifest)
    assert not list(tmp_path.rglob("*"))  # nothing written: the size was checked before any byte


def test_cli_offline_prints_one_line_error(tmp_path, capsys):
    from sw.cli import main

    rc = main(["fetch", "--dest", str(tmp_path), "--what", "yolov7", "--quiet", "--base-url", _closed_port_url()])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("yoloq fetch: error: could not reach http://127.0.0.1:") and err.count("\n") == 1
    assert str(tmp_path / "yolov7" / "yolov7.pt") in err


def test_cli_help_lists_options():
    from sw.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["fetch", "--help"])
    assert exc.value.code == 0


def test_real_manifest_is_complete():
    assert F.GROUPS == ("yolov7", "coco-val2017")
    for a in F.MANIFEST:
        assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256)
    assert [F.rebase_url(a.url, "http://127.0.0.1:8/") for a in F.MANIFEST] == [
        "http://127.0.0.1:8/yolov7.pt", "http://127.0.0.1:8/val2017.zip",
        "http://127.0.0.1:8/annotations_trainval2017.zip"]


def test_small_helpers():
    assert F.rebase_url("http://images.cocodataset.org/zips/val2017.zip", None).endswith("/zips/val2017.zip")
    assert F.rebase_url("https://x/a/b/yolov7.pt", "http://m/mirror") == "http://m/mirror/yolov7.pt"
    assert F.parse_what(" coco-val2017 , yolov7,yolov7") == ("coco-val2017", "yolov7")
    with pytest.raises(YoloqError, match="unknown --what yolov9"):
        F.parse_what("yolov7,yolov9")
    with pytest.raises(YoloqError):
        F.parse_what(" , ")
    assert F.parse_content_range("bytes 10-99/100") == (10, 100)
    assert F.parse_content_range("bytes 10-99/*") == (10, None)
    with pytest.raises(YoloqError):
        F.parse_content_range(None)
    root = Path("/r")
    assert F.member_target(root, "val2017/a.jpg") == root / "val2017" / "a.jpg"
    for bad in ("../evil", "/etc/passwd", "val2017/../../x", "C:/x"):
        with pytest.raises(YoloqError, match="unsafe"):
            F.member_target(root, bad)
    assert F.member_wanted("val2017/a.jpg", "val2017/") and not F.member_wanted("val2017x/a", "val2017/")
    assert F.member_wanted("annotations/instances_val2017.json", "annotations/instances_val2017.json")
    assert F.part_path(Path("d/f.zip")) == Path("d/f.zip.part")
    assert os.fspath(F.bad_path(Path("d/f.zip"))) == os.fspath(Path("d/f.zip.bad"))
