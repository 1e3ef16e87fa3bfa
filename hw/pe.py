"""The PWLQ-aware dequantize-and-MAC processing element.

It takes the beats of :mod:`sw.intref.stream` (L lanes of activation code, weight code and region bit, a
parameter address, an end-of-dot-product flag) and returns each dot product's accumulator, bit-exact with
the integer contract of :mod:`sw.intref.contract`. Everything it is sized by comes from ``sw``
(:class:`~hw.config.PEConfig`); nothing here is re-typed.

Datapath, fully pipelined, and never stalled: back-pressure is absorbed by a result FIFO, and a beat is
accepted only while the FIFO has room for every result already in flight (credits). The pipeline registers
therefore need no clock enable, and no ready signal fans out across the datapath, which is what limits
the clock of a stall-based pipeline.

1. decode: per lane, the value ``u`` (PWLQ tails: j, the low k-1 bits, unsigned) and the sign ``sgn``
   (a tail code's top bit); then the narrow product ``sgn u x`` (k x A bits) and ``sgn x``.
2. group mode: per region r, lane sums P_r = sum sgn u x and X_r = sum sgn x (pipelined adder trees);
   lane mode: kept per lane.
3. zero-point: T = P - z X, once per beat and region (group mode) or per lane (lane mode); PWLQ tails
   instead compute the breakpoint term B X here (B = round(p 2^E), the tails' offset), added to S_t T in
   one extra stage after the scale.
4. scale: S T with the F-bit mantissa, once per beat and region (group mode) or per lane, then summed.
5. accumulate; on the last beat of a dot product the sum goes out on ``results``.

Applying the zero-point to activation sums and the scale to lane sums keeps the per-lane multipliers narrow
(k x A bits) and the wide scale multipliers few (R per PE in group mode, whatever L). Integer associativity
makes the result equal to sum_i sgn_i (u_i - z_i) S_i x_i, which is the contract. Multipliers are pipelined
shift-add trees (:mod:`hw.arith`), so timing does not depend on how a tool maps DSP blocks.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.intref.stream import Mode

from .arith import add_tree, multiply
from .config import PEConfig
from .param_memory import READ_LATENCY, ECP5ParamMemory, ParamMemory
from .result_queue import LATENCY as QUEUE_LATENCY
from .result_queue import CreditedQueue


def param_write_signature(cfg: PEConfig) -> wiring.Signature:
    """Write port of the parameter memory, as seen by whoever loads it."""
    return wiring.Signature({"en": Out(1), "addr": Out(unsigned(cfg.addr_bits)), "data": Out(cfg.word_layout)})


def pe_signature(cfg: PEConfig) -> wiring.Signature:
    """``elements`` (in stream of beats), ``results`` (out stream of signed accumulators), ``params``."""
    return wiring.Signature({
        "elements": In(stream.Signature(cfg.beat_layout)),
        "results": Out(stream.Signature(signed(cfg.acc_bits))),
        "params": In(param_write_signature(cfg)),
    })


def port_name(path: tuple[str, ...]) -> str:
    """The Verilog port of a signature member, as ``amaranth.back.verilog`` names it (``elements__valid``)."""
    return "__".join(path)


def verilog_ports(signature: wiring.Signature) -> list[dict]:
    """The ports of a component's Verilog (clock and reset first): name, direction, width; read from its
    signature, the same source ``amaranth.back.verilog`` names them from."""
    ports = [{"name": "clk", "dir": "input", "width": 1}, {"name": "rst", "dir": "input", "width": 1}]
    for path, member in signature.members.flatten():
        if member.is_port:
            ports.append({"name": port_name(path), "dir": "input" if member.flow == wiring.In else "output",
                          "width": Shape.cast(member.shape).width})
    return ports


class ProcessingElement(wiring.Component):
    """Dot products of quantized weights and activations, L elements per cycle.

    Members: ``elements`` (in stream of beats), ``results`` (out stream of signed accumulators),
    ``params`` (parameter memory write port). ``init`` is the parameter memory contents (packed words,
    :meth:`hw.config.PEConfig.param_init`); without it the memory starts zeroed and is loaded through
    ``params``. ``memory="ecp5"`` builds the parameter memory from ECP5 block RAMs with output registers.
    """

    def __init__(self, cfg: PEConfig, init: list[int] | None = None, memory: str = "generic"):
        if memory not in ("generic", "ecp5") or (memory == "ecp5" and init):
            raise ValueError("memory must be 'generic' or 'ecp5' (ECP5 block RAMs start empty: no init)")
        self.cfg, self._init, self.memory = cfg, init, memory
        super().__init__(pe_signature(cfg))

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()

        def reg(value, name):
            """A pipeline register."""
            r = Signal.like(value, name=name)
            m.d.sync += r.eq(value)
            return r

        def delay(value, cycles, name):
            for i in range(cycles):
                value = reg(value, f"{name}_d{i}")
            return value

        # parameter memory: read at the beat's address, the word arrives READ_LATENCY cycles later
        word_bits = cfg.word_layout.size
        if self.memory == "ecp5":
            mem = ECP5ParamMemory(word_bits, cfg.param_words)
        else:
            if self._init is not None and len(self._init) > cfg.param_words:
                raise ValueError(f"{len(self._init)} parameter words for a memory of {cfg.param_words}")
            mem = ParamMemory(word_bits, cfg.param_words, self._init)
        m.submodules.params = mem
        m.d.comb += [mem.write_en.eq(self.params.en), mem.write_addr.eq(self.params.addr),
                     mem.write_data.eq(self.params.data.as_value()),
                     mem.read_en.eq(1), mem.read_addr.eq(self.elements.payload.addr)]
        word = data.View(cfg.word_layout, mem.read_data)

        # results wait in a queue; a dot product is admitted only with a slot reserved for its result (credits)
        m.submodules.results = queue = CreditedQueue(cfg.acc_bits, cfg.result_fifo_depth)
        wiring.connect(m, wiring.flipped(self.results), queue.output)
        m.d.comb += self.elements.ready.eq(queue.can_admit)
        accepted = self.elements.valid & self.elements.ready
        m.d.comb += queue.admit.eq(accepted & self.elements.payload.last)

        # stage 1: the accepted beat
        beat = Signal(cfg.beat_layout, name="beat")
        valid = Signal(name="valid_s1")
        m.d.sync += [beat.eq(self.elements.payload), valid.eq(accepted)]
        side = {"valid": valid, "last": beat.last}  # travels with the data, stage by stage
        stage = 1

        # stage 2: decode each lane into sgn u, x and sgn x (the word arrives here too)
        lanes = []
        for lane in range(cfg.lanes):
            code, act = beat.code[lane], beat.act[lane]
            if cfg.fmt.pwlq:
                tail = beat.tail[lane]
                u = Mux(tail, code[:cfg.fmt.weight_bits - 1].as_unsigned(), code)  # tails: j, unsigned
                negative = tail & code[cfg.fmt.weight_bits - 1]
                lanes.append({"u": reg(Mux(negative, -u, u)[:cfg.fmt.weight_bits].as_signed(), f"u_{lane}"),
                              "x": reg(act, f"x_{lane}"),
                              "sx": reg(Mux(negative, -act, act)[:cfg.fmt.act_bits + 1].as_signed(), f"sx_{lane}"),
                              "tail": reg(Cat(tail), f"tail_{lane}")})
            else:
                x = reg(act, f"x_{lane}")
                lanes.append({"u": reg(code, f"u_{lane}"), "x": x, "sx": x, "tail": None})
        side = {k: reg(v, f"{k}_s2") for k, v in side.items()}
        stage = 2
        assert stage == READ_LATENCY, "the parameter word must meet the decoded beat"

        # narrow products sgn u x (u: k bits sets the partial products), sgn x delayed alongside
        for i, ln in enumerate(lanes):
            p, n = multiply(reg, ln["x"], ln["u"], f"prod_{i}", cfg.levels)
            ln["p"] = reg(p[:cfg.prod_bits].as_signed(), f"p_{i}")
            ln["sx"] = delay(ln["sx"], n + 1, f"sx_{i}")
            ln["tail"] = delay(ln["tail"], n + 1, f"tail_{i}") if ln["tail"] is not None else None
        stage += cfg.product_stages

        scale = self._group_scale if cfg.mode == Mode.GROUP else self._lane_scale
        contrib, stage = scale(reg, delay, lanes, word, stage)  # contrib is valid at ``stage``
        side = {k: delay(v, stage - 2, f"{k}_dp") for k, v in side.items()}

        # accumulate: a running sum that is never cleared (two's complement wraps modulo 2^acc_bits); a dot
        # product's result is the running sum at its last beat minus the one at the previous dot product's
        # last beat. Exact, since every true result fits acc_bits (the contract's bound), and it leaves the
        # loop a bare adder while the subtraction is pipelined outside it.
        running = Signal(signed(cfg.acc_bits), name="running_sum")
        total = Signal(signed(cfg.acc_bits), name="running_next")
        m.d.comb += total.eq(self._accumulate(running, contrib))
        previous_end = Signal(signed(cfg.acc_bits), name="previous_end")
        end, begin = Signal.like(total, name="end"), Signal.like(total, name="begin")
        ended, done = Signal(name="ended"), Signal(name="done")
        with m.If(side["valid"]):
            m.d.sync += running.eq(total)
        # snapshots come from the running-sum register a cycle later, so the adder drives nothing else
        m.d.sync += [ended.eq(side["valid"] & side["last"]), done.eq(ended)]
        with m.If(ended):
            m.d.sync += [end.eq(running), begin.eq(previous_end), previous_end.eq(running)]
        result = reg((end - begin)[:cfg.acc_bits].as_signed(), "result")
        finished = reg(done, "finished")
        m.d.comb += [queue.write_en.eq(finished), queue.write_data.eq(result)]
        assert stage + 3 + QUEUE_LATENCY == cfg.latency, f"pipeline depth {stage} + 3 + queue != {cfg.latency}"
        return m

    # Two steps of the datapath are methods so that sim.faults can build deliberately wrong variants of them.
    def _accumulate(self, running, contrib):
        """The running sum's next value."""
        return running + contrib

    def _zero_point(self, word, region):
        """The zero-point a region's terms use (None: fixed at 0)."""
        return self.cfg.zero_point_of(word, region)

    def _breakpoint(self, word, region):
        """PWLQ's tail offset B of a region (None: no offset)."""
        return self.cfg.breakpoint_of(word, region)

    def _offset(self, reg, b, x, name):
        """B X, registered; the partial products are selected as :attr:`PEConfig.offset_selector_bits` says."""
        a, sel = (x, b) if self.cfg.mode == "group" else (b, x)
        bx, stages = multiply(reg, a, sel, name, self.cfg.levels)
        assert stages + 1 == self.cfg.zero_point_stages, "B X must fill the zero-point slot exactly"
        return reg(bx, name)

    def _add_offset(self, reg, delay, st, bx, name):
        """PWLQ's extra stage: S_t P + B X for the tails, S P delayed alongside elsewhere."""
        if not self.cfg.offset_stages:
            return st
        if bx is None:
            return delay(st, 1, f"{name}_d")
        return reg(st + delay(bx, self.cfg.scale_stages, f"{name}_bx"), name)

    def _group_scale(self, reg, delay, lanes, word, stage):
        """Group mode: per region sum the lanes, then T = P - z X and S T once per beat (PWLQ tails: S_t P + B X)."""
        cfg = self.cfg
        lv = cfg.levels
        terms = []
        for r in range(cfg.fmt.regions):
            def pick(ln, key, r=r):
                t = ln["tail"]
                return ln[key] if t is None else Mux(t[0] if r else ~t[0], ln[key], 0)
            p, _ = add_tree(reg, [pick(ln, "p") for ln in lanes], f"P{r}", lv)
            x, _ = add_tree(reg, [pick(ln, "sx") for ln in lanes], f"X{r}", lv)
            terms.append((reg(p, f"P{r}"), reg(x, f"X{r}")))
        stage += cfg.lane_sum_stages
        word = delay(word, stage - 2, "word_z")
        zeroed, offsets = [], []
        for r, (p, x) in enumerate(terms):
            z, b = self._zero_point(word, r), self._breakpoint(word, r)
            offsets.append(None if b is None else self._offset(reg, b, x, f"BX{r}"))
            if z is None:
                zeroed.append(delay(p, cfg.zero_point_stages, f"T{r}"))
                continue
            zx, _ = multiply(reg, x, z, f"zX{r}", lv)
            zx = reg(zx, f"zX{r}")
            zeroed.append(reg(delay(p, cfg.zero_point_stages - 1, f"Pz{r}") - zx, f"T{r}"))
        stage += cfg.zero_point_stages
        word = delay(word, cfg.zero_point_stages, "word_s")
        scaled = []
        for r, t in enumerate(zeroed):
            st, _ = multiply(reg, t, cfg.scale_of(word, r), f"ST{r}", lv)
            scaled.append(self._add_offset(reg, delay, reg(st, f"ST{r}"), offsets[r], f"STB{r}"))
        stage += cfg.scale_stages + cfg.offset_stages
        return reg(sum(scaled[1:], scaled[0]), "beat_sum"), stage + 1

    def _lane_scale(self, reg, delay, lanes, word, stage):
        """Lane mode: per lane T = sgn u x - z sgn x and S T with the lane's own group (PWLQ tails:
        S_t sgn j x + B sgn x), then a tree."""
        cfg = self.cfg
        lv = cfg.levels
        word = delay(word, stage - 2, "word_z")
        scaled = []
        for i, ln in enumerate(lanes):
            lane_word = word.lanes[i]
            t = ln["tail"]
            b = None
            if t is None:
                z, s = self._zero_point(lane_word, 0), cfg.scale_of(lane_word, 0)
            else:
                zs = [self._zero_point(lane_word, r) for r in range(2)]
                z = None if all(v is None for v in zs) else Mux(t[0], zs[1] if zs[1] is not None else 0,
                                                                zs[0] if zs[0] is not None else 0)
                s = Mux(t[0], cfg.scale_of(lane_word, 1), cfg.scale_of(lane_word, 0))
                tail_b = self._breakpoint(lane_word, 1)
                b = None if tail_b is None else Mux(t[0], tail_b, 0)
            s = delay(s, cfg.zero_point_stages, f"S_{i}")
            bx = None if b is None else self._offset(reg, b, ln["sx"], f"BX_{i}")
            if z is None:
                term = delay(ln["p"], cfg.zero_point_stages, f"T_{i}")
            else:
                zx, _ = multiply(reg, ln["sx"], z, f"zX_{i}", lv)
                zx = reg(zx, f"zX_{i}")
                term = reg(delay(ln["p"], cfg.zero_point_stages - 1, f"Pz_{i}") - zx, f"T_{i}")
            st, _ = multiply(reg, term, s, f"ST_{i}", lv)
            scaled.append(self._add_offset(reg, delay, reg(st, f"ST_{i}"), bx, f"STB_{i}"))
        stage += cfg.zero_point_stages + cfg.scale_stages + cfg.offset_stages
        total, _ = add_tree(reg, scaled, "lane_sum", lv)
        return reg(total, "beat_sum"), stage + cfg.lane_sum_stages
