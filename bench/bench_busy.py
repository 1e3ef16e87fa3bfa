"""The busy machine: yoloq's quantize and eval beside one other torch process, as a ratio to the idle run.

The other process is what a second yoloq command, pytest-xdist's other worker or a sweep worker looks like
without yoloq's policy: a small matmul/sort loop with torch's default settings (default threads, OpenMP's
default wait policy; started with OMP_WAIT_POLICY and OMP_NUM_THREADS removed from its environment).
Each measurement runs in a fresh process that applies sw.threads' policy first, as every entry point does;
``--unprotected`` adds the same measurements without the policy, to show what it prevents (slow: the issue
measured 25x). Idle and busy runs are measured in the same run, one after the other.

Two reference rows show what the scheduler allows any CPU-bound job, torch or not: the same fixed work (SHA-256
over a buffer; hashlib releases the GIL) in one thread and split over two. The spinner keeps two threads
runnable, and Linux shares CPU time per runnable thread within a session (and per session across sessions, with
autogroup), so a one-thread job gets about 2/3 of a core beside it (ratio near 1.5) and a job that uses both
cores idle gets about one core (ratio near 2). A yoloq job's ratio lies between its serial and parallel parts'.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sw.heap import ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent

SPINNER = """
import torch
a = torch.randn(192, 192)
(a @ a).sort(dim=1)
print("spinning", flush=True)
while True:
    (a @ a).sort(dim=1)
"""


# One measurement, in a fresh interpreter that imports nothing of this folder (bench/common applies the policy).
MEASURE = """
import json, sys, time
sys.path.insert(0, {repo!r})
if {policy}:
    from sw.threads import apply_thread_policy
    from sw.heap import keep_freed_memory
    apply_thread_policy()
    keep_freed_memory()
if {task!r}.startswith("reference"):  # the plain CPU-bound job: no torch
    import hashlib, threading
    threads = int({task!r}[-1])
    buf = bytes(1 << 24)
    def work(n):
        for _ in range(n):
            hashlib.sha256(buf).digest()
    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(48 // threads,)) for _ in range(threads)]
    [t.start() for t in pool]
    [t.join() for t in pool]
else:
    from sw.checkpoint import load_model
    from sw.paths import data_file
    model = load_model(data_file("yolov5n/yolov5n.pt")).model
if {task!r} == "quantize":
    from sw.quant.model import QuantSpec, quantize_model
    t0 = time.perf_counter()
    quantize_model(model, QuantSpec("pwlq", 4, "mix3"), progress=False)
elif {task!r} == "eval":
    from sw.eval.coco import evaluate, load_coco
    coco = load_coco(data_file("coco"), limit={images})
    t0 = time.perf_counter()
    evaluate(model, coco, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def clean_env() -> dict:
    """The environment without any thread or heap setting: torch's and glibc's defaults (this process has the
    policies')."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", *ENVIRONMENT)}


def run_measure(task: str, images: int, policy: bool) -> float:
    """Seconds of ``task`` (quantize: yolov5n to 4-bit PWLQ mix3; eval: yolov5n on ``images`` COCO images;
    reference1/reference2: 768 MiB of SHA-256 in one thread / split over two, no torch)."""
    code = MEASURE.format(repo=str(REPO), policy=policy, task=task, images=images)
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])["seconds"]


def busy(fn):
    """``fn()`` while the default-settings torch loop runs beside it."""
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        # wait until it really runs its loop: importing torch alone can take longer than a fixed sleep on a
        # loaded machine, and the busy figure must not be taken beside a process that is still starting
        if spinner.stdout.readline().strip() != "spinning":
            raise RuntimeError("the competing torch process did not start")
        time.sleep(1.0)  # its OpenMP threads up and spinning
        return fn()
    finally:
        spinner.kill()
        spinner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=32, help="COCO images evaluated (default 32)")
    ap.add_argument("--unprotected", action="store_true", help="also measure without the thread policy (slow)")
    ap.add_argument("--tasks", default="quantize,eval,reference1,reference2",
                    help="comma-separated: quantize, eval, reference1, reference2 (the plain CPU-bound job in one "
                         "or two threads, no torch; default all four)")
    args = ap.parse_args()
    rows = []
    policies = [True, False] if args.unprotected else [True]
    for task in args.tasks.split(","):
        for policy in policies if not task.startswith("reference") else [True]:
            idle = run_measure(task, args.images, policy)
            loaded = busy(lambda task=task, policy=policy: run_measure(task, args.images, policy))
            label = {"eval": f"eval ({args.images} images)", "quantize": "quantize (yolov5n, PWLQ 4-bit mix3)",
                     "reference1": "reference: SHA-256, 1 thread", "reference2": "reference: SHA-256, 2 threads"}[task]
            threads = ("no torch" if task.startswith("reference") else
                       "sw.threads policy" if policy else "torch defaults")
            rows.append([label, threads, round(idle, 2),
                         round(loaded, 2), round(loaded / idle, 2)])
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; the other process: torch matmul/sort loop, default settings")
    print(table(["task", "threads", "idle s (baseline)", "beside one torch process s", "ratio"], rows))


if __name__ == "__main__":
    main()
