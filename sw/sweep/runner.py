"""Run a sweep: the unit of work (:func:`run_config`), three executors with one interface, and the driver.

Every executor runs the same :func:`run_config` with the same :class:`Job`, so a configuration's numbers do
not depend on where it ran: each call sets ``torch.set_num_threads(job.threads)``, where the driver fixed
``threads`` from its own CPU count and the worker count, identically for every executor.

- ``serial``: in this process (``--workers 1``);
- ``local``: a process pool (spawned processes; forking a process that already ran torch can deadlock);
- ``ray``: Ray tasks, on a local instance or an existing cluster.

The driver keeps at most ``workers`` configurations in flight and writes each result the moment it
arrives, so stopping it (Ctrl-C, SIGTERM) loses only the configurations still running.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..errors import SweepError
from ..heap import heap_policy
from ..threads import export_wait_policy, usable_cpus
from .plan import EXECUTORS, Config
from .store import FAILED, OK, ResultStore



@dataclass(frozen=True)
class Job:
    """What every configuration of a sweep shares: the model, the images, the evaluation settings."""

    weights: str
    coco: str
    limit: int | None = None
    eval: dict = field(default_factory=dict)     # keyword arguments of sw.eval.coco.evaluate
    threads: int = 1
    cfg: str | None = None                       # architecture of a plain state_dict


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Torch threads for each of ``workers`` concurrent configurations: the CPUs shared out, at least 1."""
    return max(1, (cpus or usable_cpus()) // max(1, workers))


# ---------------------------------------------------------------- the unit of work (runs in a worker)

_INPUTS: dict[tuple, tuple] = {}  # per worker process: (model, coco subset), loaded once and reused


def _inputs(job: Job):
    from ..checkpoint import load_model
    from ..eval.coco import load_coco

    key = (job.weights, job.cfg, job.coco, job.limit)
    if key not in _INPUTS:
        _INPUTS.clear()  # one sweep per process at a time; do not hold two models
        _INPUTS[key] = (load_model(job.weights, cfg=job.cfg).model, load_coco(job.coco, limit=job.limit))
    return _INPUTS[key]


def _finite(x: float) -> float | None:
    """JSON has no infinity: an exact layer (e.g. FP16 weights kept as they are) has SQNR None."""
    return x if x == x and abs(x) != float("inf") else None


def quant_summary(qm) -> dict:
    """Totals, chosen granularities and per-layer error of a QuantizedModel, as plain JSON data."""
    totals = qm.totals()
    return {"saving_paper": totals["saving_paper"], "saving_storage": totals["saving_storage"],
            "mse": totals["mse"], "weights": totals["weights"], "baseline_bits": totals["baseline_bits"],
            "paper_bits": totals["paper_bits"], "storage_bits": totals["storage_bits"],
            "granularity_counts": dict(Counter(r.granularity for r in qm.layers.values()).most_common()),
            "layers": [{"name": r.name, "granularity": r.granularity, "bits": r.bits, "mse": r.mse,
                        "sqnr_db": _finite(r.sqnr_db)} for r in qm.layers.values()]}


# The checkpoint as loaded is the reference every saving is measured against (FP16 for official files).
BASELINE_QUANT = {"saving_paper": 1.0, "saving_storage": 1.0, "mse": 0.0, "granularity_counts": {}, "layers": []}


def predictor(net):
    """``net`` as the evaluator's predict callable, on the GPU when there is one; and the device's name."""
    if torch.cuda.is_available():
        net = net.cuda()
        return (lambda x: net(x.cuda()).cpu()), "cuda"
    return net, "cpu"


def measure(config: Config, job: Job) -> dict:
    """Quantize (unless baseline) and evaluate one configuration; raises whatever goes wrong."""
    from ..eval.coco import evaluate
    from ..quant.model import prepare, quantize_model

    torch.set_num_threads(job.threads)
    model, coco = _inputs(job)
    t0 = time.perf_counter()
    if config.is_baseline:
        net, quant = prepare(model, fold_bn=False), dict(BASELINE_QUANT)
    else:
        qm = quantize_model(model, config.spec(), progress=False)
        net, quant = qm.model, quant_summary(qm)
    t1 = time.perf_counter()
    predict, device = predictor(net)
    metrics = evaluate(predict, coco, stride=int(model.stride.max()), progress=False, **job.eval)
    t2 = time.perf_counter()
    return {"metrics": {k: metrics[k] for k in ("precision", "recall", "map50", "map50_95", "images")},
            "quant": quant, "device": device,
            "timing": {"quantize_s": round(t1 - t0, 3), "eval_s": round(t2 - t1, 3)}}


def failure(config: Config, error: BaseException, trace: str = "") -> dict:
    return {**config.as_dict(), "status": FAILED, "error": f"{type(error).__name__}: {error}", "traceback": trace}


def run_config(config: Config, job: Job) -> dict:
    """The unit of work: one configuration's record, status ok or failed (an error never escapes).

    KeyboardInterrupt and other BaseExceptions do escape: a stopped sweep must stop, not record a failure.
    """
    t0 = time.perf_counter()
    try:
        record = {**config.as_dict(), "status": OK, **measure(config, job)}
    except Exception as e:  # noqa: BLE001 - any error of one configuration is recorded and the sweep goes on
        record = failure(config, e, traceback.format_exc())
    record["threads"] = job.threads
    record.setdefault("timing", {})["total_s"] = round(time.perf_counter() - t0, 3)
    return record


# ---------------------------------------------------------------- executors

class SerialExecutor:
    """Runs each configuration in this process when submitted (one worker: no process to start)."""

    name = "serial"

    def submit(self, config: Config, job: Job) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(run_config(config, job))
        return future

    def close(self, cancel: bool = False) -> None:
        pass


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; only the driver acts on it (it stops the workers itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore; a worker stopped mid-task would leave it for the
    # resource tracker to warn about. Workers draw no bars, so a thread lock is all they need.
    tqdm.set_lock(threading.RLock())


class LocalExecutor:
    """A pool of ``workers`` spawned processes; a pool broken by a dead worker is replaced."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        export_wait_policy()  # spawned workers import torch at once; the policy must be in their environment
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker)

    def submit(self, config: Config, job: Job) -> cf.Future:
        try:
            return self.pool.submit(run_config, config, job)
        except cf.process.BrokenProcessPool:  # a worker died (e.g. killed for memory); its config is failed
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(run_config, config, job)

    def close(self, cancel: bool = False) -> None:
        if not cancel:
            self.pool.shutdown(wait=True)
            return
        if hasattr(self.pool, "terminate_workers"):  # Python >= 3.14
            self.pool.terminate_workers()
            return
        # Before 3.14 a pool cannot stop a running task; its processes are terminated directly.
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(timeout=10)


class RayExecutor:
    """Ray tasks: a local instance of ``workers`` CPUs, or the cluster at ``address``.

    On a cluster every node needs yoloq installed and the weights and COCO root at the same paths.
    A task asks for ``gpus`` GPUs (default: 1 where the cluster has GPUs, else 0).
    """

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, gpus: float | None = None):
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray needs the ray package: pip install 'yoloq[ray]'") from None
        self.ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would otherwise report usage over the network
        self.owns_instance = not ray.is_initialized()
        if self.owns_instance:
            common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            export_wait_policy()  # a local instance's workers inherit this environment
            # ray.init installs a SIGTERM handler (sys.exit) in this process that outlives the sweep: a later
            # SIGTERM would become SystemExit inside whatever runs then, and during the sweep it would bypass
            # sigterm_as_interrupt's orderly stop. Keep the process's own.
            sigterm = signal.getsignal(signal.SIGTERM)
            if address:  # a cluster's workers do not: pass the policy along (set before a worker imports torch)
                ray.init(address=address, runtime_env={"env_vars": {**export_wait_policy(), **heap_policy()}}, **common)
            else:  # a private instance bound to loopback only
                ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", **common)
            if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
                with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set here
                    signal.signal(signal.SIGTERM, sigterm)
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        # A configuration that fails is recorded as failed; retrying it inside Ray would only hide that.
        self.task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(run_config)
        self.refs: dict[cf.Future, object] = {}

    def submit(self, config: Config, job: Job) -> cf.Future:
        ref = self.task.remote(config, job)
        future = ref.future()
        self.refs[future] = ref
        future.add_done_callback(lambda f: self.refs.pop(f, None))
        return future

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self.refs.values()):
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
        if self.owns_instance:
            self.ray.shutdown()


def make_executor(kind: str, workers: int, ray_address: str | None = None, gpus: float | None = None):
    if kind not in EXECUTORS:
        raise SweepError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise SweepError(f"--workers must be at least 1, got {workers}")
    if kind == "ray":
        return RayExecutor(workers, ray_address, gpus)
    return SerialExecutor() if workers == 1 else LocalExecutor(workers)


# ---------------------------------------------------------------- the driver

@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM stops the sweep like Ctrl-C does (results kept, workers stopped)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _outcome(future: cf.Future, config: Config) -> dict:
    """The record a finished future carries; a worker that died yields a failed record naming why."""
    try:
        return future.result()
    except Exception as e:  # noqa: BLE001 - e.g. BrokenProcessPool, a Ray worker crash
        return failure(config, e, traceback.format_exc())


def run_sweep(configs: list[Config], job: Job, store: ResultStore, executor, workers: int,
              progress: bool = True) -> dict[str, dict]:
    """Run every configuration of ``configs`` that has no finished result in ``store``; write each result
    as it completes. Returns the records of all ``configs`` by key (finished earlier or now).

    On an interrupt, work in flight is cancelled, the executor stopped, and the interrupt re-raised.
    """
    keys = [c.key for c in configs]
    done = store.finished(keys)
    queue = deque(c for c in configs if c.key not in done)
    bar = tqdm(total=len(configs), initial=len(done), desc="sweep", unit="config", disable=not progress)
    in_flight: dict[cf.Future, Config] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                config = queue.popleft()
                in_flight[executor.submit(config, job)] = config
            finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                record = _outcome(future, in_flight.pop(future))
                store.save(record)
                bar.update(1)
                bar.set_postfix_str(_postfix(record))
    except BaseException:
        bar.close()
        executor.close(cancel=True)
        raise
    bar.close()
    executor.close()
    return {k: store.load(k) for k in keys}


def _postfix(record: dict) -> str:
    if record["status"] == OK:
        return f"{record['key']} mAP@.5 {record['metrics']['map50']:.3f}"
    return f"{record['key']} FAILED"
