"""Stimulus for the co-simulation testbench: layers, their beats, and memory files, packed with numpy.

A :class:`LayerCase` is one quantized conv to push through the RTL: its integer contract, the activation
codes of the dot products to compute (im2col rows at sampled output positions) and the accumulators ``sw``
expects for them. Whatever made the case (a real network on a COCO image, or an edge case built by hand),
the testbench treats them alike.

The memories the testbench preloads with ``$readmemh`` hold, per layer, exactly the bits of
:meth:`sw.intref.stream.StreamFormat.pack`, split by where each field comes from so that each is stored
once (:meth:`~sw.intref.stream.StreamLayout.weight_fields`, :meth:`~sw.intref.stream.StreamLayout.act_fields`,
packed by :mod:`sw.intref.packing`):

- weight words: the beat's WEIGHTS fields (code[L], tail[L], addr, last), per output channel and beat: the
  same content as ``hw/build``'s ``weights.hex``;
- activation words: its ACTS fields (act[L]), per sampled position and beat.

The testbench's driver reassembles a beat from the two words field by field (:mod:`sim.wrapper`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sw.intref.contract import LayerContract
from sw.intref.epilogue import LayerEpilogue


@dataclass
class LayerCase:
    """One layer's dot products to verify: ``columns`` [P, N] activation codes, ``expected`` [P, o] int64
    accumulators.

    For the layer unit (PE + epilogue) also its ``epilogue`` and ``outputs`` [P, o] int64, what the unit must
    produce: the output codes (``compare="code"``), or ``t = acc + K_c`` for a conv whose output is not
    requantized (``compare="sum"``: a Detect conv).
    """

    contract: LayerContract
    columns: np.ndarray
    expected: np.ndarray
    positions: list = field(default_factory=list)  # a label per row of ``columns`` for reports, e.g. (image, y, x)
    epilogue: LayerEpilogue | None = None
    outputs: np.ndarray | None = None
    compare: str = "code"

    def __post_init__(self):
        p, n = self.columns.shape
        if n != self.contract.fmt.fan_in or self.expected.shape != (p, self.contract.shape[0]):
            raise ValueError(f"{self.contract.name}: columns {self.columns.shape} and expected "
                             f"{self.expected.shape} do not fit the layer {self.contract.shape}")
        if self.compare not in ("code", "sum"):
            raise ValueError(f"{self.contract.name}: compare must be 'code' or 'sum', got {self.compare!r}")
        if (self.epilogue is None) != (self.outputs is None) or \
                (self.outputs is not None and self.outputs.shape != self.expected.shape):
            raise ValueError(f"{self.contract.name}: a layer-unit case needs an epilogue and outputs of "
                             f"shape {self.expected.shape}")
        lo, hi = self.contract.fmt.act_range
        if self.columns.size and (self.columns.min() < lo or self.columns.max() > hi):
            raise ValueError(f"{self.contract.name}: activation codes outside [{lo}, {hi}]")
        if not self.positions:
            self.positions = list(range(p))

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def macs(self) -> int:
        """Multiply-accumulates the RTL performs for this case (idle lanes not counted)."""
        return int(self.expected.size) * self.contract.fmt.fan_in


def reference_accumulators(contract: LayerContract, columns: np.ndarray) -> np.ndarray:
    """sum_i W_i x_i for every row of ``columns``: [P, o] int64 (exact: the contract bounds every sum)."""
    w = contract.weight_int().reshape(contract.shape[0], -1).numpy()
    return np.asarray(columns, dtype=np.int64) @ w.T
