"""Output targets and the CLI boundary: only regular files are ever replaced (a FIFO or a device node is
refused and left as it was), flags are validated before an output folder is claimed, and every exception
leaves ``main()`` as one line."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from hostile_harness import run_cli
from sw.atomic import write_json
from sw.cli.boundary import run_command
from sw.errors import YoloqError


# The tests that read this module's expensive fixture (a subprocess that imports torch and runs the CLI case after
# case: tens of seconds) are one xdist group: `make test` (--dist loadgroup) runs them on one worker, which makes
# the fixture once instead of once on each worker.
ONE_WORKER = pytest.mark.xdist_group("hostile_outputs")


def _char_device(path):
    """A character device node (same numbers as /dev/null), made here, so no real device is touched."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


@pytest.fixture(scope="module")
def outcomes(yolov5n_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("targets")
    cwd = tmp_path_factory.mktemp("cwd")
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    dev = _char_device(tmp / "null")
    w = ["--weights", yolov5n_path, "--quiet"]
    cases = {
        "eval --json onto a FIFO": (["eval", *w, "--json", fifo], fifo, r"--json .*is not a regular file"),
        "eval --json onto a device node": (["eval", *w, "--json", dev], dev, r"--json .*is not a regular file"),
        "quantize -o onto a device node": (["quantize", *w, "-o", dev], dev, r"-o .*is not a regular file"),
        "quantize --json onto a FIFO": (["quantize", *w, "-o", tmp / "q.yqa", "--json", fifo], fifo,
                                        r"--json .*is not a regular file"),
        "sweep --workers 0": (["sweep", *w, "--preset", "table1", "-o", tmp / "sweep", "--workers", "0"],
                              "--workers", r"argument --workers: must be from 1 to 1024, got 0"),
        "sweep --gpus-per-config nan": (["sweep", *w, "--preset", "table1", "-o", tmp / "sweep",
                                         "--gpus-per-config", "nan"], "--gpus-per-config", r"must be from 0.0 to 64.0"),
    }
    results = run_cli([(argv, cwd) for argv, _, _ in cases.values()])
    assert not list(cwd.iterdir())
    return {name: (target, pattern, r) for (name, (_, target, pattern)), r in zip(cases.items(), results)}, tmp


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval --json onto a FIFO", "eval --json onto a device node",
                                  "quantize -o onto a device node", "quantize --json onto a FIFO"])
@ONE_WORKER
def test_special_files_are_refused_and_left_alone(outcomes, name):
    results, tmp = outcomes
    target, pattern, outcome = results[name]
    outcome.assert_refused(pattern, names=str(target))
    mode = os.stat(target).st_mode
    assert stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and os.stat(target).st_rdev == os.makedev(1, 3))
    assert not (tmp / "q.yqa").exists()


@ONE_WORKER
@pytest.mark.slow
@pytest.mark.parametrize("name", ["sweep --workers 0", "sweep --gpus-per-config nan"])
def test_flags_are_checked_before_the_folder_is_claimed(outcomes, name):
    results, tmp = outcomes
    flag, pattern, outcome = results[name]
    assert outcome.rc == 2 and "Traceback" not in outcome.stderr
    assert flag in outcome.lines[-1] and pattern.split(":")[0] in outcome.lines[-1]
    assert not (tmp / "sweep").exists(), "the results folder was claimed before the flags were checked"


def test_atomic_writes_never_replace_a_special_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dev = _char_device(tmp_path / "null")
    for target in (fifo, dev, tmp_path):
        with pytest.raises(YoloqError, match="refusing to replace it"):
            write_json(target, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat(dev).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]  # no temporary left behind


def _raising(exc):
    def run(args):
        raise exc
    return argparse.Namespace(run=run)


@pytest.mark.parametrize("exc, status, pattern", [
    (YoloqError("x.pt: bad\nsecond line"), 2, r"^yoloq demo: error: x.pt: bad second line$"),
    (OSError(28, "No space left on device", "out.json"), 2, r"^yoloq demo: error: .*No space left.*out.json"),
    (MemoryError(), 2, r"^yoloq demo: error: the input is too large or too deeply nested \(MemoryError\)$"),
    (RecursionError(), 2, r"too deeply nested \(RecursionError\)"),
    (TypeError("unsupported operand"), 3, r"^yoloq demo: internal error: TypeError: unsupported operand \(this is "
                                          r"a bug in yoloq; please report it .*--debug\)$"),
])
def test_boundary_gives_one_line(capsys, exc, status, pattern):
    import re

    assert run_command(_raising(exc), "demo") == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(pattern, err.strip()), err


def test_debug_adds_the_traceback(capsys):
    assert run_command(_raising(TypeError("boom")), "demo", debug=True) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("yoloq demo: internal error")


def test_interrupt_is_130(capsys):
    assert run_command(_raising(KeyboardInterrupt()), "demo") == 130


@pytest.mark.parametrize("text, pattern", [
    ('{"key": "other", "status": "ok"}', r"not a result record of 'affine-4b-filter'"),
    ('{"key": "affine-4b-filter", "status": "ok", "metrics": {}}', r"its metrics lack finite numbers"),
    ('{"key": "affine-4b-filter", "status": "ok", "metrics": {"precision": 1, "recall": 1, "map50": NaN, '
     '"map50_95": 1}, "quant": {}}', r"its metrics lack finite numbers"),
    ("[" * 100_000, r"not a result record \((RecursionError|JSONDecodeError)\)"),
    ("\xff", r"not a result record"),
])
def test_hand_edited_result_records_are_named(tmp_path, text, pattern):
    """A reused sweep folder is input too: a record that is not what the sweep wrote is refused by name."""
    from sw.errors import SweepError
    from sw.sweep.store import ResultStore

    store = ResultStore(tmp_path)
    store.runs.mkdir(parents=True, exist_ok=True)
    store.run_path("affine-4b-filter").write_text(text)
    with pytest.raises(SweepError, match=pattern) as info:
        store.load("affine-4b-filter")
    assert str(store.run_path("affine-4b-filter")) in str(info.value)


def test_foreign_settings_file_is_named(tmp_path):
    from sw.errors import SweepError
    from sw.sweep.store import SETTINGS_FILE, ResultStore

    (tmp_path / SETTINGS_FILE).write_text("[1, 2]")
    with pytest.raises(SweepError, match="not a sweep settings file"):
        ResultStore(tmp_path).claim({"weights_sha256": "x"})
