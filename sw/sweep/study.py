"""The whole study in one call: plan, check inputs, run what is not finished, then tables and plots."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..errors import DataNotFoundError
from .analysis import flat_rows
from .layers import cached_layer_sqnr
from .plan import Config
from .plots import write_plots
from .report import read_previous, write_outputs
from .runner import Job, make_executor, run_sweep, sigterm_as_interrupt, threads_per_worker, usable_cpus
from .store import OK, ResultStore, file_sha256, ids_sha256


@dataclass
class StudyResult:
    rows: list[dict]
    reused: int          # configurations already finished before this run
    computed: int        # configurations run now
    wall_seconds: float
    plots: dict[str, str]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != OK]


def sweep_settings(weights: Path, coco, eval_kwargs: dict, limit: int | None, threads: int) -> dict:
    """What the results depend on (the identity a results folder is bound to) plus provenance."""
    root = coco.root.resolve()
    return {"yoloq": __version__, "weights": str(weights), "weights_name": weights.name,
            "weights_sha256": file_sha256(weights), "coco": str(root), "coco_name": root.name,
            "images": len(coco.image_ids), "image_ids_sha256": ids_sha256(coco.image_ids), "limit": limit,
            "eval": dict(eval_kwargs), "threads": threads}


def eval_settings(eval_kwargs: dict | None) -> dict:
    """The evaluation keywords in full (defaults of :func:`sw.eval.coco.detect_many` filled in), so that a sweep
    given the defaults explicitly and one given nothing are recognised as the same sweep. Keywords that do
    not change results (``pipeline``, progress display, the per-batch ``scorers`` evaluate passes) are not
    settings."""
    from ..eval.coco import detect_many

    defaults = {name: p.default for name, p in inspect.signature(detect_many).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in ("stride", "progress", "desc", "pipeline", "scorers")}
    return {**defaults, **(eval_kwargs or {})}


def run_study(configs: list[Config], weights: str | Path, coco_root: str | Path, out: str | Path, *,
              eval_kwargs: dict | None = None, limit: int | None = None, cfg: str | None = None,
              executor: str = "local", workers: int = 1, ray_address: str | None = None,
              gpus_per_config: float | None = None, progress: bool = True, log=print,
              previous: str | Path | None = None) -> StudyResult:
    """Run ``configs`` into the results folder ``out`` (resuming it) and write results, report and plots;
    ``previous``: an earlier results.csv, whose differences the report lists."""
    from ..checkpoint import load_model
    from ..eval.coco import load_coco

    t0 = time.perf_counter()
    weights = Path(weights)
    if not weights.is_file():
        raise DataNotFoundError(f"--weights: checkpoint not found: {weights}")
    earlier = read_previous(previous) if previous is not None else None   # fails early on a bad file
    coco = load_coco(coco_root, limit=limit)           # fails early, naming a missing COCO root
    model = load_model(weights, cfg=cfg).model          # fails early on a bad checkpoint
    threads = threads_per_worker(workers)
    eval_kwargs = eval_settings(eval_kwargs)
    settings = sweep_settings(weights.resolve(), coco, eval_kwargs, limit, threads)
    store = ResultStore(out)
    store.claim(settings)
    keys = [c.key for c in configs]
    reused = len(store.finished(keys))
    pending = len(configs) - reused
    if reused:
        log(f"resuming {out}: {reused} of {len(configs)} configurations already finished")
    job = Job(weights=str(weights.resolve()), coco=str(Path(coco_root).resolve()), limit=limit, eval=eval_kwargs,
              threads=threads, cfg=cfg)
    if pending:
        runner = make_executor(executor, workers, ray_address, gpus_per_config)
        with sigterm_as_interrupt():
            records = run_sweep(configs, job, store, runner, workers, progress=progress)
    else:
        records = {k: store.load(k) for k in keys}
    torch.set_num_threads(threads)
    layer_table = cached_layer_sqnr(out, model)
    rows = flat_rows(configs, records)
    plots = write_plots(out, rows, layer_table)
    wall = time.perf_counter() - t0
    write_outputs(out, rows, records, settings, layer_table, plots, round(wall, 1), earlier)
    return StudyResult(rows, reused, pending, wall, plots)


def default_workers() -> int:
    return usable_cpus()
