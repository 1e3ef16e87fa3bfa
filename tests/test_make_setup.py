"""`make apt` (the system-package half of `make setup`) run against stub dpkg, apt-get, sudo and id on PATH:
as root (no sudo) and as a sudoer, with the packages present and missing. The stubs log each call, so the
test sees exactly which commands the recipe ran and with which environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

STUBS = {
    # dpkg -s PKG: "installed" exactly when $STUB_PRESENT is 1
    "dpkg": 'echo "dpkg $*" >> "$STUB_LOG"; [ "$STUB_PRESENT" = 1 ]',
    "apt-get": 'echo "apt-get DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-unset} uid=$STUB_UID $*" >> "$STUB_LOG"',
    # a sudoer's sudo: runs the command as root
    "sudo": 'echo "sudo $*" >> "$STUB_LOG"; STUB_UID=0 exec "$@"',
    "id": '[ "$1" = -u ] && echo "$STUB_UID"',
}


def run_make_apt(tmp_path: Path, uid: int, present: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "STUB_UID": str(uid),
           "STUB_PRESENT": "1" if present else "0"}
    env.pop("DEBIAN_FRONTEND", None)
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "apt"], env=env, capture_output=True,
                         text=True, timeout=60)
    return out, log.read_text().splitlines()


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.mark.parametrize("uid", [0, 1000])
def test_apt_installs_missing_packages_as_root_and_as_sudoer(tmp_path, uid):
    out, calls = run_make_apt(tmp_path, uid, present=False)
    assert out.returncode == 0, out.stdout + out.stderr
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt == ["apt-get DEBIAN_FRONTEND=noninteractive uid=0 update -qq",
                   "apt-get DEBIAN_FRONTEND=noninteractive uid=0 install -y -qq iverilog ccache g++"]
    sudo = [c for c in calls if c.startswith("sudo")]
    assert len(sudo) == (0 if uid == 0 else 2)  # root runs apt-get itself; a sudoer through sudo


@pytest.mark.parametrize("uid", [0, 1000])
def test_apt_does_nothing_when_the_packages_are_present(tmp_path, uid):
    out, calls = run_make_apt(tmp_path, uid, present=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all present" in out.stdout
    assert calls == ["dpkg -s iverilog", "dpkg -s ccache", "dpkg -s g++"]
