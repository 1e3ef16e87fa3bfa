"""``yoloq sweep``: plans and --bits, the result store, resume after a kill, failures, Ray against local,
the report and the plots.

The runs are tiny (2-3 images, 3-5 configurations) so the file stays within a few CPU minutes; the full
study is ``make paper``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sw.cli import main
from sw.errors import DataNotFoundError, SweepError
from sw.sweep import analysis, paper, report
from sw.sweep.plan import BASELINE, Config, parse_bits, plan
from sw.sweep.store import FAILED, OK, ResultStore
from sw.sweep.study import run_study

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL = dict(img_size=640, conf_thres=0.001, iou_thres=0.65, max_det=300, batch_size=8)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # a sweep in this process sets its own count; give the other tests theirs back


# ---------------------------------------------------------------- plan and --bits

@pytest.mark.parametrize("text, widths", [("2-8", (2, 3, 4, 5, 6, 7, 8)), ("4,6,8", (4, 6, 8)), ("5", (5,)),
                                          ("2-4,8", (2, 3, 4, 8)), (" 6 , 4-5 ", (4, 5, 6)), ("3,3-4", (3, 4))])
def test_parse_bits(text, widths):
    assert parse_bits(text) == widths


@pytest.mark.parametrize("text", ["9", "x", "8-2", "", "1-3", "4,,5", "2-", "4.5", "2-9"])
def test_parse_bits_rejects_bad_input_naming_it(text):
    with pytest.raises(SweepError, match=r"--bits"):
        parse_bits(text)


def test_presets():
    t1 = plan("table1")
    assert t1[0] == BASELINE and len(t1) == 1 + 9
    assert [c.key for c in t1[1:5]] == ["affine-4b-filter", "affine-4b-fshape", "affine-4b-cshape", "affine-4b-channel"]
    assert t1[-1].key == "affine-8b-filter"
    assert {c.key for c in plan("table2")[1:]} == {"affine-4b-mix3", "affine-4b-mix4", "pwlq-4b-mix3", "pwlq-4b-mix4"}
    assert [c.key for c in plan("fig4", "3-4")] == ["baseline", "pwlq-3b-mix3", "pwlq-4b-mix3", "affine-3b-mix3",
                                                    "affine-4b-mix3"]
    everything = plan("all")
    keys = [c.key for c in everything]
    assert len(keys) == len(set(keys)) == 1 + 9 + 4 + 14 - 2  # table2's 4-bit mix3 rows are also fig4's
    assert set(keys) == {c.key for name in ("table1", "table2", "fig4") for c in plan(name)}
    with pytest.raises(SweepError, match="'table3'"):
        plan("table3")
    beyond = plan("beyond")
    assert [c.key for c in beyond] == ["baseline", "pwlq-4b-mix3", "pwlq-4b-mix3-bc", "pwlq-4b-mix3-gptq",
                                       "pwlq-4b-mix3-gptq-bc", "affine-4b-mix3", "affine-4b-mix3-bc",
                                       "affine-4b-mix3-gptq", "affine-4b-mix3-gptq-bc"]
    assert beyond[4].spec().rounding == "gptq" and beyond[4].spec().bias_correction
    assert all(Config.from_dict(c.as_dict()) == c for c in beyond)
    assert Config.from_dict({"method": "pwlq", "bits": 4, "granularity": "mix3"}) == beyond[1]  # older records


def test_config_keys_are_stable():
    c = Config("pwlq", 4, "mix3")
    assert c.key == "pwlq-4b-mix3" and Config.from_dict(c.as_dict()) == c
    assert BASELINE.key == "baseline" and Config.from_dict(BASELINE.as_dict()) == BASELINE
    with pytest.raises(SweepError, match="pwlq-4b-mix5"):
        Config("pwlq", 4, "mix5").validate()


# ---------------------------------------------------------------- store

def _config(key: str) -> Config:
    if key == "baseline":
        return BASELINE
    method, bits, granularity = key.split("-")
    return Config(method, int(bits.rstrip("b")), granularity)


def _record(key, status=OK, map50=0.5):
    rec = {**_config(key).as_dict(), "status": status}
    if status == OK:
        rec.update(metrics={"precision": 0.6, "recall": 0.4, "map50": map50, "map50_95": map50 / 2, "images": 3},
                   quant={"saving_paper": 3.9, "saving_storage": 3.1, "mse": 1e-6, "granularity_counts": {}})
    else:
        rec["error"] = "RuntimeError: boom"
    return rec


def test_store_writes_whole_files_and_knows_what_is_finished(tmp_path):
    store = ResultStore(tmp_path)
    store.save(_record("pwlq-4b-mix3"))
    store.save(_record("affine-4b-mix3", FAILED))
    assert store.load("pwlq-4b-mix3")["metrics"]["map50"] == 0.5
    assert store.load("affine-8b-filter") is None
    assert store.finished(["pwlq-4b-mix3", "affine-4b-mix3", "affine-8b-filter"]) == {"pwlq-4b-mix3"}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["affine-4b-mix3.json", "pwlq-4b-mix3.json"]


def test_store_refuses_results_of_another_sweep(tmp_path):
    settings = {"weights_sha256": "a" * 64, "image_ids_sha256": "b", "images": 3, "eval": EVAL, "weights": "/x/y.pt"}
    store = ResultStore(tmp_path)
    store.claim(settings)
    store.claim({**settings, "weights": "/moved/y.pt"})  # same files elsewhere: same sweep
    with pytest.raises(SweepError, match="images: was 3, now 5"):
        store.claim({**settings, "images": 5})


# ---------------------------------------------------------------- analysis and report (synthetic rows)

def _rows():
    configs = plan("all", "3-5")
    records = {"baseline": _record("baseline", map50=0.70)}
    for i, c in enumerate(configs[1:]):
        records[c.key] = _record(c.key, map50=0.70 - 0.01 * (i % 7))
    records["pwlq-4b-mix4"] = _record("pwlq-4b-mix4", FAILED)
    return analysis.flat_rows(configs, records), records


def test_loss_merit_and_pairs():
    assert analysis.loss_pp(0.65, 0.70) == pytest.approx(5.0)
    assert analysis.merit(4.0, 3.0) == 1.0
    assert analysis.merit(4.0, -2.0) == 4.0  # scoring above the baseline counts as no loss
    rows, _ = _rows()
    pairs = analysis.equal_storage_pairs(rows)
    assert [(q["granularity"], q["bits"]) for q in pairs] == [("mix3", 3), ("mix3", 4)]
    assert all(q["affine"]["bits"] == q["bits"] + 1 for q in pairs)
    front = analysis.pareto_front([{"status": OK, "saving_paper": s, "map50": m, "key": k}
                                   for k, s, m in (("a", 1, 0.7), ("b", 4, 0.6), ("c", 3, 0.5), ("d", 5, 0.1))])
    assert [r["key"] for r in front] == ["a", "b", "d"]


def test_csv_is_rounded_metrics_only():
    rows, _ = _rows()
    text = report.format_csv(rows)
    lines = text.splitlines()
    assert lines[0].split(",") == list(report.CSV_FIELDS)
    assert lines[1].startswith("baseline,baseline,,,nearest,False,ok,0.600000,0.400000,0.700000,0.350000,0.000000,")
    assert "seconds" not in text and "timing" not in text
    assert "pwlq,4,mix4,nearest,False,failed,,,,,,,,,RuntimeError: boom" in text


def test_report_sets_the_papers_figures_beside_ours():
    rows, _ = _rows()
    settings = {"weights_name": "m.pt", "weights_sha256": "f" * 64, "images": 3, "coco_name": "coco", "eval": EVAL}
    md = report.report_markdown(rows, settings)
    for heading in ("## Table I", "## Table II", "## Fig. 4", "## Equal storage", "## Failed configurations"):
        assert heading in md
    assert "paper mAP@.5" in md and "paper saving" in md and "YOLOv7" in md and "only trends compare" in md
    # every published figure comes from paper-figures.json (P, R, mAP@.5 and saving of each row)
    figures = json.loads(paper.reference_file().read_text())
    for row in figures["table1"] + figures["table2"]:
        pub = paper.published(row["method"], row["bits"], row["granularity"])
        assert pub == {"precision": row["P"], "recall": row["R"], "map50": row["map50"], "saving": row["saving"]}
    pub = paper.published("pwlq", 4, "cshape")
    c_shape = next(line for line in md.splitlines() if line.startswith("| PWLQ | C-shape | 4 |"))
    assert c_shape.endswith(f"| {pub['precision']:.3f} | {pub['recall']:.3f} | {pub['map50']:.3f} | {pub['saving']:.2f}× |")
    assert paper.published("pwlq", 3, "cshape") == {}  # not in the paper: reports show a dash
    assert "`pwlq-4b-mix4` | failed | RuntimeError: boom" in md
    assert "## Beyond the paper" not in md  # the paper's plan has nothing beyond it


def test_beyond_rows_stay_out_of_the_papers_tables_and_get_their_own():
    configs = plan("beyond")
    records = {}
    for i, c in enumerate(configs):
        rec = _record("baseline" if c.is_baseline else "pwlq-4b-mix3", map50=0.70 - 0.05 * (i % 4 == 1))
        records[c.key] = {**rec, **c.as_dict()}
    rows = analysis.flat_rows(configs, records)
    assert analysis.find(rows, "pwlq", 4, "mix3")["key"] == "pwlq-4b-mix3"
    assert analysis.find(rows, "affine", 4, "mix3")["key"] == "affine-4b-mix3"
    assert [p["bits"] for p in analysis.kbit_series(rows, "pwlq")] == [4]  # the nearest row only
    settings = {"weights_name": "m.pt", "weights_sha256": "f" * 64, "images": 3, "coco_name": "coco", "eval": EVAL}
    md = report.report_markdown(rows, settings)
    section = md.split("## Beyond the paper")[1].split("\n## ")[0]
    assert "| PWLQ | gptq | yes | 0.700 |" in section
    assert "| PWLQ | nearest | no | 0.650 | 0.325 | 5.00 | +0.00 |" in section
    assert "| PWLQ | nearest | yes | 0.700 | 0.350 | 0.00 | +5.00 |" in section


def test_report_lists_the_changes_against_a_previous_results_csv(tmp_path):
    rows, _ = _rows()
    previous = tmp_path / "results.csv"
    old = [dict(r) for r in rows if r["key"] != "affine-4b-filter"]   # not run before: listed as new
    for r in old:
        if r["key"] == "pwlq-4b-cshape":
            r["map50"], r["mse"] = r["map50"] - 0.012, 2.5e-5
    old.append({**old[-1], "key": "pwlq-9b-retired"})                 # not in these results
    previous.write_text(report.format_csv(old))
    settings = {"weights_name": "m.pt", "weights_sha256": "f" * 64, "images": 3, "coco_name": "coco", "eval": EVAL}
    md = report.report_markdown(rows, settings, previous=report.read_previous(previous))
    section = md.split("## Changes since the previous results")[1].split("\n## ")[0]
    now = analysis.find(rows, "pwlq", 4, "cshape")
    line = next(x for x in section.splitlines() if x.startswith("| pwlq-4b-cshape |"))
    assert line.startswith(f"| pwlq-4b-cshape | {now['map50'] - 0.012:.3f} | {now['map50']:.3f} | +0.012 |")
    assert "| 2.5e-05 |" in line
    assert "New configurations: affine-4b-filter." in section and "Not in these results: pwlq-9b-retired." in section
    assert "## Changes since" not in report.report_markdown(rows, settings)  # only when asked
    with pytest.raises(DataNotFoundError, match="--previous: file not found"):
        report.read_previous(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SweepError, match="not a results.csv"):
        report.read_previous(tmp_path / "bad.csv")


# ---------------------------------------------------------------- real sweeps (yolov5n, a few COCO images)

def _cli(*args):
    return [sys.executable, "-m", "sw.cli", "sweep", *args, "--quiet"]


def _sweep_args(yolov5n_path, coco_root, out, preset="fig4", bits="3-4", limit=2, workers=2):
    return ["--weights", str(yolov5n_path), "--coco", str(coco_root), "--preset", preset, "--bits", bits,
            "--limit", str(limit), "--workers", str(workers), "-o", str(out)]


@pytest.mark.slow
def test_failed_config_is_recorded_and_rerun_recomputes_only_it(yolov5n_path, coco_root, tmp_path, monkeypatch,
                                                                restore_threads):
    import sw.quant.model as qmodel
    import sw.sweep.runner as runner

    configs = [BASELINE, Config("affine", 4, "filter"), Config("pwlq", 4, "filter")]
    real_quantize = qmodel.quantize_model

    def flaky(model, spec, **kw):
        if spec.method == "affine":
            raise RuntimeError("injected failure")
        return real_quantize(model, spec, **kw)

    monkeypatch.setattr(qmodel, "quantize_model", flaky)
    first = run_study(configs, yolov5n_path, coco_root, tmp_path, eval_kwargs=EVAL, limit=2, workers=1, progress=False)
    status = {r["key"]: r["status"] for r in first.rows}
    assert status == {"baseline": OK, "affine-4b-filter": FAILED, "pwlq-4b-filter": OK}
    failed = json.loads((tmp_path / "runs" / "affine-4b-filter.json").read_text())
    assert failed["error"] == "RuntimeError: injected failure" and "flaky" in failed["traceback"]
    assert "affine-4b-filter" in (tmp_path / "report.md").read_text().split("## Failed configurations")[1]
    finished_mtimes = {k: (tmp_path / "runs" / f"{k}.json").stat().st_mtime_ns for k in ("baseline", "pwlq-4b-filter")}

    monkeypatch.setattr(qmodel, "quantize_model", real_quantize)
    calls = []
    real_run_config = runner.run_config
    monkeypatch.setattr(runner, "run_config", lambda c, job: calls.append(c.key) or real_run_config(c, job))
    second = run_study(configs, yolov5n_path, coco_root, tmp_path, eval_kwargs=EVAL, limit=2, workers=1, progress=False)
    assert calls == ["affine-4b-filter"]  # finished ones are not recomputed; the failed one is retried
    assert (second.reused, second.computed) == (2, 1) and not second.failed
    assert all((tmp_path / "runs" / f"{k}.json").stat().st_mtime_ns == t for k, t in finished_mtimes.items())


# The sweeps below must give the same results.csv, byte for byte, however they ran: an uninterrupted sweep on Ray
# and a local sweep (a process pool) killed mid-run and resumed. One uninterrupted sweep serves as the reference
# for both claims: the resumed local sweep equal to the uninterrupted Ray one shows that resuming changes nothing
# and that Ray computes what local workers compute (a fault in either makes them differ). It is the Ray sweep,
# run once; `make test` runs the tests of one xdist group on one worker (--dist loadgroup), so it stays once.
SWEEP_GROUP = pytest.mark.xdist_group("fig4_sweep")


@pytest.fixture(scope="module")
def fig4_ray(yolov5n_path, coco_root, tmp_path_factory):
    """``--preset fig4 --bits 3-4`` on 2 images with 2 Ray workers, uninterrupted: five configurations, enough
    for every plot of the report. Returns the study's result and its folder."""
    assert importlib.util.find_spec("ray"), "Ray is in the test extra: pip install -e '.[test]'"  # fail, never skip
    out = tmp_path_factory.mktemp("sweep") / "ray"
    threads, sigterm = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        # the same configurations, images, evaluation settings and worker count as the local sweep below
        result = run_study(plan("fig4", "3-4"), yolov5n_path, coco_root, out, executor="ray", eval_kwargs=EVAL,
                           limit=2, workers=2, progress=False)
    finally:
        torch.set_num_threads(threads)  # a sweep in this process sets its own count; give the other tests theirs back
    # Ray's own SIGTERM handler (sys.exit) must not outlive the sweep in the caller's process
    assert signal.getsignal(signal.SIGTERM) is sigterm
    return result, out


@pytest.mark.slow
@SWEEP_GROUP
def test_ray_sweep_runs_every_configuration_with_its_share_of_the_cpus(fig4_ray):
    remote, out = fig4_ray
    assert not remote.failed and remote.computed == 5
    threads = {json.loads(p.read_text())["threads"] for p in (out / "runs").glob("*.json")}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}


@pytest.mark.slow
@SWEEP_GROUP
def test_killed_and_resumed_local_sweep_gives_the_uninterrupted_ray_sweeps_results(yolov5n_path, coco_root,
                                                                                    tmp_path, fig4_ray):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_cli(*_sweep_args(yolov5n_path, coco_root, resumed)), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = resumed / "runs"
    deadline = time.monotonic() + 240
    while not (runs.is_dir() and any(p.suffix == ".json" for p in runs.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no result file appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # handled like Ctrl-C: finished results kept, workers stopped
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "leaked" not in err.decode(), err.decode()  # stopped workers leave nothing behind
    kept = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert 1 <= len(kept) < 5, "the sweep was not interrupted mid-run"
    assert not list(runs.glob(".*.tmp")), "a half-written result file was left behind"
    assert not (resumed / "results.csv").exists()

    done = subprocess.run(_cli(*_sweep_args(yolov5n_path, coco_root, resumed)), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} reused" in done.stdout
    assert {n: (runs / n).stat().st_mtime_ns for n in kept} == kept  # finished rows were not recomputed
    _, uninterrupted = fig4_ray
    assert (resumed / "results.csv").read_bytes() == (uninterrupted / "results.csv").read_bytes()

    md = (resumed / "report.md").read_text()
    for png in ("fig4.png", "equal_storage.png", "pareto.png", "layer_sqnr.png"):
        assert (resumed / png).read_bytes()[:8] == PNG_MAGIC and f"]({png})" in md
    assert "paper mAP@.5" in md and "2 COCO images" in md


def test_cli_errors_name_the_bad_input(yolov5n_path, coco_root, tmp_path, capsys):
    base = ["sweep", "--preset", "fig4", "-o", str(tmp_path / "r"), "--quiet"]
    assert main([*base, "--weights", str(tmp_path / "nope.pt"), "--coco", str(coco_root)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main([*base, "--weights", str(yolov5n_path), "--coco", str(tmp_path / "nococo")]) == 2
    assert "nococo" in capsys.readouterr().err
    assert main([*base, "--weights", str(yolov5n_path), "--coco", str(coco_root), "--bits", "9"]) == 2
    assert "--bits '9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--preset", "table9", "--weights", "w", "-o", "r"])


def test_ray_cluster_workers_get_the_thread_and_heap_policies(monkeypatch):
    """A cluster's workers do not inherit this process's environment: ray.init's runtime_env must carry the
    passive OpenMP wait and the malloc settings (sw.threads, sw.heap), as a local instance's workers inherit them."""
    import types

    from sw.heap import ENVIRONMENT
    from sw.sweep.runner import RayExecutor

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw),
                                 cluster_resources=lambda: {}, remote=lambda **kw: (lambda f: f))
    monkeypatch.setitem(sys.modules, "ray", fake)
    for k, v in ENVIRONMENT.items():
        monkeypatch.setenv(k, v)
    RayExecutor(2, address="ray://head:10001")
    env_vars = calls[0]["runtime_env"]["env_vars"]
    assert env_vars["OMP_WAIT_POLICY"] == os.environ["OMP_WAIT_POLICY"]
    assert {k: env_vars.get(k) for k in ENVIRONMENT} == ENVIRONMENT
