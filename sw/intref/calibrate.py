"""Per-tensor activation scales for the integer contract, calibrated on images (coco128 by default).

Every tensor between the layers of the fake-quantized model (the graph of :mod:`sw.intref.graph`) is sampled
over the calibration images, and every quantizer class (the tensors that must share codes: a concat's inputs
and output, a pool's or upsample's input and output) gets ONE quantizer from its members' samples. The codes
span [min, c]: the observed minimum (YOLO's tensors follow SiLU, so it is a small negative number or 0; with
LeakyReLU(0.1) a larger one) and a clipping value c chosen to minimise the mean squared error of A-bit
quantization of the samples, over a grid of fractions of the observed maximum. MSE clipping trades a few
saturated outliers for finer steps everywhere else, which plain max calibration cannot.

The image needs no calibration: its quantizer spans [0, 1] exactly (scale 1/255 at A = 8, so every 8-bit
pixel is its own code and nothing is lost).

Each conv's pre-activation step ``s_pre`` (:mod:`sw.intref.epilogue`) is calibrated on the same pass. The
pre-activation code exists only to index the activation table, so its step is chosen for what the table
outputs: over a grid of fractions of the largest observed |pre-activation|, the step whose table reproduces
the ideal output codes (the consumer's quantizer applied to ``act(pre)``) with least squared code error on
the samples. Plain max calibration would waste the table on SiLU's flat negative side (pre-activations down
to -20 where the output is -0.28 at most) or on rare positive outliers that the consumer's quantizer clips
anyway; MSE on the pre-activation itself would optimise a value nobody consumes.

Each tensor samples with its own generator (seeded by the seed and the tensor's id), so a quantizer does not
depend on which others are calibrated with it: ``stop_after`` (calibrate only as far as some convs, for
co-simulating or building a few) gives those convs exactly the quantizers a whole-network calibration gives
them. The pass then runs until every tensor of every class the convs up to them use has been seen.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import DataNotFoundError
from .contract import ActQuant
from .epilogue import ACTIVATIONS, EpilogueFormat, activation_table
from .graph import INPUT, ConvNode, Graph, lower
from ..eval.images import image_size, prefetch_batches, shape_batches

CLIP_FRACTIONS = torch.linspace(0.05, 1.0, 64, dtype=torch.float64)
SAMPLES_PER_BATCH = 1 << 14
SAMPLES_PER_LAYER = 1 << 16


def calibration_images(folder: str | Path, limit: int) -> tuple[dict[int, Path], dict[int, tuple[int, int]]]:
    """The first ``limit`` JPEGs of ``folder`` (sorted), with their (h, w)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jpg"))[:limit]
    if not files:
        raise DataNotFoundError(f"no calibration images (*.jpg) in {folder}")
    paths, sizes = {}, {}
    for i, f in enumerate(files):
        paths[i], sizes[i] = f, image_size(f)
    return paths, sizes


def mse_clip(samples: torch.Tensor, lo: float, hi: float, bits: int) -> ActQuant:
    """The quantizer over [lo, f * hi] whose f (a clip fraction) minimises the samples' squared error."""
    if hi <= 0:
        return ActQuant.from_range(bits, lo, hi)
    candidates = [ActQuant.from_range(bits, lo, float(f) * hi) for f in CLIP_FRACTIONS]
    x = samples.float().view(1, -1)
    scales = torch.tensor([c.scale for c in candidates], dtype=torch.float32).view(-1, 1)
    zps = torch.tensor([c.zero_point for c in candidates], dtype=torch.float32).view(-1, 1)
    lo_code, hi_code = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.div(x, scales).round_().add_(zps).clamp_(lo_code, hi_code).sub_(zps).mul_(scales)
    errors = q.sub_(x).square_().mean(1)
    return candidates[int(errors.argmin())]


def calibration_batches(model: torch.nn.Module, paths: dict, sizes: dict, img_size: int, batch_size: int,
                        desc: str, progress: bool):
    """The calibration images (from :func:`calibration_images`) as float batches in [0, 1], letterboxed for
    ``model``'s stride, decoded ahead of the model, with a progress bar: the one pass every calibration uses."""
    stride = int(getattr(model, "stride", torch.tensor([32])).max())
    batches = shape_batches(list(sizes.items()), img_size, stride, batch_size)
    for batch, _ in tqdm(prefetch_batches(batches, paths, img_size, stride), total=len(batches),
                         desc=desc, unit="batch", disable=not progress, leave=False):
        yield batch.float() / 255.0


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * (1 << 32) + zlib.crc32(name.encode()))


class _Observer:
    """Per tensor (and per conv pre-activation): observed min, max and random samples."""

    def __init__(self, seed: int):
        self.seed = seed
        self.lows: dict[tuple[str, str], float] = {}
        self.highs: dict[tuple[str, str], float] = {}
        self.samples: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.gens: dict[tuple[str, str], torch.Generator] = {}
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, kind: str, key: str, x: torch.Tensor) -> None:
        if kind == "head":
            return  # dequantized for decoding: no quantizer
        k = (kind, key)
        x = x.detach().flatten()
        if k not in self.gens:
            self.gens[k] = _generator(self.seed, f"{kind}:{key}" if kind == "pre" else key)
            self.lows[k], self.highs[k], self.samples[k] = 0.0, 0.0, []
        self.lows[k] = min(self.lows[k], float(x.min()))
        self.highs[k] = max(self.highs[k], float(x.max()))
        idx = torch.randint(0, x.numel(), (min(SAMPLES_PER_BATCH, x.numel()),), generator=self.gens[k])
        self.samples[k].append(x[idx].clone())
        self.seen.add(k)

    def pool(self, keys: list[tuple[str, str]], gen: torch.Generator) -> torch.Tensor:
        pool = torch.cat([t for k in keys for t in self.samples[k]])
        return pool[torch.randperm(pool.numel(), generator=gen)[:SAMPLES_PER_LAYER]]


def pre_activation_scale(samples: torch.Tensor, activation: str, out: ActQuant, pre_bits: int) -> float:
    """The step of a conv's pre-activation code: least squared error of the table's output codes against the
    ideal ones (``out`` applied to ``act(pre)``) on ``samples``, over fractions of the largest |sample|."""
    top = float(samples.abs().max()) if samples.numel() else 0.0
    if top == 0.0:
        return 1.0
    fmt = EpilogueFormat(2, 1, out.bits, pre_bits)
    lo, hi = fmt.pre_range
    x = samples.double()
    ideal = out.quantize(ACTIVATIONS[activation](x))
    best, best_err = 1.0, float("inf")
    for f in CLIP_FRACTIONS.tolist():
        step = f * top / hi
        codes = torch.round(x / step).clamp_(lo, hi).to(torch.int64)
        err = float((activation_table(activation, step, out, fmt)[codes - lo].double() - ideal).square().mean())
        if err < best_err:
            best, best_err = step, err
    return best


class TensorCalibration:
    """Per tensor its quantizer (``tensors[id]``, shared by its class) and per conv (by name) its
    pre-activation step (``pre_scales``; head convs have none). A partial calibration holds only some."""

    def __init__(self, graph: Graph, tensors: dict[str, ActQuant], pre_scales: dict[str, float]):
        self.graph, self.tensors, self.pre_scales = graph, tensors, pre_scales

    def conv_inputs(self) -> dict[str, ActQuant]:
        """Each conv's input quantizer (the per-conv view the MAC-exact model uses)."""
        return {n: self.tensors[c.src] for n, c in self.graph.convs.items() if c.src in self.tensors}

    def complete(self, conv: ConvNode) -> bool:
        """Whether everything this conv's integer form needs was calibrated."""
        return conv.src in self.tensors and (conv.head is not None or conv.name in self.pre_scales)


def _needed(graph: Graph, stop_after: list[str]) -> set[tuple[str, str]]:
    """What a partial calibration must observe: every tensor of every class used up to the ``stop_after``
    convs, and the pre-activations of the convs up to them."""
    convs = graph.convs
    unknown = set(stop_after) - set(convs)
    if unknown:
        raise KeyError(f"stop_after names layers that are not convs of the model: {sorted(unknown)}")
    last = max(i for i, n in enumerate(graph.nodes) if isinstance(n, ConvNode) and n.name in stop_after)
    tensors = {INPUT}
    pres = set()
    for node in graph.nodes[:last + 1]:
        srcs = node.srcs if hasattr(node, "srcs") else (node.src,)
        tensors.update(srcs)
        if not (isinstance(node, ConvNode) and node.head is not None):
            tensors.add(node.dst)
        if isinstance(node, ConvNode) and node.head is None:
            pres.add(node.name)
    reps = {graph.classes[t] for t in tensors}
    members = {t for t, r in graph.classes.items() if r in reps}
    return {("tensor", t) for t in members - {INPUT}} | {("pre", n) for n in pres}


@torch.no_grad()
def calibrate_tensors(model: torch.nn.Module, folder: str | Path, act_bits: int = 8, images: int = 32,
                      img_size: int = 640, batch_size: int = 8, seed: int = 0, progress: bool = True,
                      stop_after: list[str] | None = None, pre_bits: int = 0,
                      graph: Graph | None = None) -> TensorCalibration:
    """One quantizer per tensor class and one pre-activation step per conv of ``model`` (deploy form), from
    ``images`` calibration images. With ``stop_after`` (conv names), only what the convs up to them need."""
    graph = graph or lower(model)
    paths, sizes = calibration_images(folder, images)
    needed = _needed(graph, stop_after) if stop_after else None
    obs = _Observer(seed)
    for batch in calibration_batches(model, paths, sizes, img_size, batch_size, "calibrate", progress):
        obs.seen.clear()
        graph.run_float(batch, obs, stop=(lambda: needed <= obs.seen) if needed else None)
    tensors = {INPUT: ActQuant.from_range(act_bits, 0.0, 1.0)}
    for rep in dict.fromkeys(graph.classes.values()):
        keys = [("tensor", t) for t in graph.members(rep)]
        if rep == INPUT or any(k not in obs.samples for k in keys):
            continue  # after a partial pass: a class only partly seen would differ from the whole network's
        quant = mse_clip(obs.pool(keys, _generator(seed, rep)), min(obs.lows[k] for k in keys),
                         max(obs.highs[k] for k in keys), act_bits)
        for t in graph.members(rep):
            tensors[t] = quant
    pre_bits = pre_bits or act_bits + 4
    pre_scales = {}
    for name, conv in graph.convs.items():
        key = ("pre", name)
        if conv.head is None and key in obs.samples and conv.dst in tensors:
            pre_scales[name] = pre_activation_scale(obs.pool([key], _generator(seed, f"pre:{name}")),
                                                    conv.activation, tensors[conv.dst], pre_bits)
    return TensorCalibration(graph, tensors, pre_scales)


@torch.no_grad()
def calibrate(model: torch.nn.Module, conv_names: list[str], folder: str | Path, act_bits: int = 8,
              images: int = 32, img_size: int = 640, batch_size: int = 8, seed: int = 0,
              progress: bool = True, stop_after: list[str] | None = None) -> dict[str, ActQuant]:
    """Activation quantizer per conv input (its input tensor's, :func:`calibrate_tensors`), for the convs in
    ``conv_names``. With ``stop_after``, only the convs up to those layers are calibrated and returned."""
    cal = calibrate_tensors(model, folder, act_bits, images, img_size, batch_size, seed, progress, stop_after)
    inputs = cal.conv_inputs()
    return {n: inputs[n] for n in conv_names if n in inputs}
