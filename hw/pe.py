"""The PWLQ-aware dequantize-and-MAC processing element.

It takes the beats of :mod:`sw.intref.stream` (L lanes of activation code, weight code and region bit, a
parameter address, an end-of-dot-product flag) and returns each dot product's accumulator, bit-exact with
the integer contract of :mod:`sw.intref.contract`. Everything it is sized by comes from ``sw``
(:class:`~hw.config.PEConfig`); nothing here is re-typed.

Datapath (every stage registered; the whole pipeline advances together, and stalls when a result waits):

1. decode: per lane, the value ``u`` (PWLQ tails: the low k-1 bits, sign-extended) and the sign ``sgn``
   (a tail code's top bit); narrow products ``sgn u x`` (k x A bits) and signed activations ``sgn x``.
2. group mode: per region r, lane sums P_r = sum sgn u x and X_r = sum sgn x (a pipelined adder tree);
   lane mode: kept per lane.
3. zero-point: T = P - z X, once per beat and region (group mode) or per lane (lane mode).
4. scale: S T (the F-bit mantissa), once per beat and region, or per lane; then summed.
5. accumulate; on the last beat of a dot product the sum goes out on ``results``.

Applying the zero-point to activation sums and the scale to lane sums keeps the per-lane multipliers narrow
(k x A bits) and the wide scale multipliers few (R per PE in group mode, independent of L). By the
contract, integer associativity makes the result equal to sum_i sgn_i (u_i - z_i) S_i x_i.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import PEConfig


def param_write_signature(cfg: PEConfig) -> wiring.Signature:
    """Write port of the parameter memory, as seen by whoever loads it."""
    return wiring.Signature({"en": Out(1), "addr": Out(unsigned(cfg.addr_bits)), "data": Out(cfg.word_layout)})


class ProcessingElement(wiring.Component):
    """Dot products of quantized weights and activations, L elements per cycle.

    Members: ``elements`` (in stream of beats), ``results`` (out stream of signed accumulators),
    ``params`` (parameter memory write port). ``init`` is the parameter memory contents (one dict per word,
    see :meth:`hw.config.PEConfig.param_init`); without it the memory starts zeroed and is loaded via
    ``params``.
    """

    FAULTS = ("zero_point_off_by_one", "dropped_carry")

    def __init__(self, cfg: PEConfig, init: list | None = None, fault: str | None = None):
        """``fault`` builds a deliberately wrong variant, for checking that a testbench catches it:
        ``zero_point_off_by_one`` uses z + 1; ``dropped_carry`` loses the accumulator's carry out of bit 15."""
        if fault is not None and fault not in self.FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {self.FAULTS}")
        self.cfg = cfg
        self._init = init
        self.fault = fault
        super().__init__({
            "elements": In(stream.Signature(cfg.beat_layout)),
            "results": Out(stream.Signature(signed(cfg.acc_bits))),
            "params": In(param_write_signature(cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.results.valid | self.results.ready), self.elements.ready.eq(advance)]

        m.submodules.params = mem = Memory(shape=cfg.word_layout, depth=cfg.param_words,
                                          init=cfg.param_init(self._init))
        wr = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [wr.en.eq(self.params.en), wr.addr.eq(self.params.addr), wr.data.eq(self.params.data),
                     rd.en.eq(advance), rd.addr.eq(self.elements.payload.addr)]

        def stage(value, name):
            """A pipeline register that moves only when the pipeline advances."""
            reg = Signal.like(value, name=name)
            m.d.sync += reg.eq(Mux(advance, value, reg))
            return reg

        # 0 -> 1: accept a beat (the parameter word arrives alongside from the synchronous read port)
        beat = Signal(cfg.beat_layout, name="beat")
        valid = Signal(name="valid_s1")
        with m.If(advance):
            m.d.sync += [beat.eq(self.elements.payload), valid.eq(self.elements.valid)]
        word = rd.data
        last = beat.last

        # 1 -> 2: decode lanes into narrow signed products and signed activations
        prods, acts, tails = [], [], []
        for lane in range(cfg.lanes):
            code, act = beat.code[lane], beat.act[lane]
            if cfg.fmt.pwlq:
                tail = beat.tail[lane]
                u = Mux(tail, code[:cfg.fmt.weight_bits - 1].as_signed(), code)
                negative = tail & code[cfg.fmt.weight_bits - 1]
                u_signed = Mux(negative, -u, u)
                act_signed = Mux(negative, -act, act)
            else:
                tail, u_signed, act_signed = 0, code, act
            prods.append(stage((u_signed * act).as_signed()[:cfg.prod_bits].as_signed(), f"prod_{lane}"))
            acts.append(stage(act_signed[:cfg.fmt.act_bits + 1].as_signed(), f"sact_{lane}"))
            tails.append(stage(Cat(tail), f"tail_{lane}") if cfg.fmt.pwlq else None)
        word, last, valid = stage(word, "word_s2"), stage(last, "last_s2"), stage(valid, "valid_s2")

        if cfg.mode == "group":
            contrib, delay = self._group_scale(m, stage, prods, acts, tails, word)
        else:
            contrib, delay = self._lane_scale(m, stage, prods, acts, tails, word)
        for i in range(delay):
            last, valid = stage(last, f"last_d{i}"), stage(valid, f"valid_d{i}")

        # accumulate; a finished dot product goes out and the accumulator restarts
        acc = Signal(signed(cfg.acc_bits), name="acc")
        total = Signal(signed(cfg.acc_bits), name="acc_next")
        if self.fault == "dropped_carry":  # the carry from the low 16 bits never reaches the high part
            low = acc[:16] + contrib[:16]
            m.d.comb += total.eq(Cat(low[:16], acc[16:] + contrib[16:]))
        else:
            m.d.comb += total.eq(acc + contrib)
        with m.If(advance):
            m.d.sync += self.results.valid.eq(valid & last)
            with m.If(valid):
                m.d.sync += acc.eq(Mux(last, 0, total))
                with m.If(last):
                    m.d.sync += self.results.payload.eq(total)
        return m

    def _tree(self, m, stage, values, name):
        """Pipelined adder tree: ``cfg.tree_levels`` adder levels per register stage. Returns (sum, stages)."""
        level, stages = 0, 0
        while len(values) > 1:
            pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
            values = pairs + ([values[-1]] if len(values) % 2 else [])
            level += 1
            if level % self.cfg.tree_levels == 0 and len(values) > 1:
                values = [stage(v, f"{name}_l{level}_{i}") for i, v in enumerate(values)]
                stages += 1
        return values[0], stages

    def _zero_point(self, word, region):
        z = self.cfg.zero_point_of(word, region)
        if z is not None and self.fault == "zero_point_off_by_one":
            return z + 1
        return z

    def _group_scale(self, m, stage, prods, acts, tails, word):
        """Group mode: sum lanes per region, then T = P - z X and S T once per beat. Returns (sum, delay)."""
        cfg = self.cfg
        sums, delay = [], 0
        for r in range(cfg.fmt.regions):
            def pick(v, t, r=r):
                return v if t is None else Mux(t[0] if r else ~t[0], v, 0)
            p, delay = self._tree(m, stage, [pick(v, t) for v, t in zip(prods, tails)], f"psum{r}")
            x, _ = self._tree(m, stage, [pick(v, t) for v, t in zip(acts, tails)], f"xsum{r}")
            sums.append((p, x))
        for i in range(delay):  # the trees' register stages
            word = stage(word, f"word_tree{i}")
        word = stage(word, "word_P")
        sums = [(stage(p, f"P{r}"), stage(x, f"X{r}")) for r, (p, x) in enumerate(sums)]
        terms = []
        for r, (p, x) in enumerate(sums):
            z = self._zero_point(word, r)
            terms.append(stage(p - z * x if z is not None else p, f"T{r}"))
        word = stage(word, "word_T")
        scaled = [stage(t * cfg.scale_of(word, r), f"ST{r}") for r, t in enumerate(terms)]
        total = stage(sum(scaled[1:], scaled[0]), "beat_sum")
        return total, delay + 4  # P, T, ST, beat_sum

    def _lane_scale(self, m, stage, prods, acts, tails, word):
        """Lane mode: per lane T = sgn u x - z sgn x and S T with the lane's own group, then a tree."""
        cfg = self.cfg
        terms = []
        for lane, (p, x, t) in enumerate(zip(prods, acts, tails)):
            lane_word = word.lanes[lane]
            if t is None:
                z, s = self._zero_point(lane_word, 0), cfg.scale_of(lane_word, 0)
            else:
                z0, z1 = self._zero_point(lane_word, 0), self._zero_point(lane_word, 1)
                z = None if z0 is None and z1 is None else Mux(t[0], z1 if z1 is not None else 0,
                                                               z0 if z0 is not None else 0)
                s = Mux(t[0], cfg.scale_of(lane_word, 1), cfg.scale_of(lane_word, 0))
            s = stage(s, f"S_{lane}")
            term = stage(p - z * x if z is not None else p, f"T_{lane}")
            terms.append(stage(term * s, f"ST_{lane}"))
        total, depth = self._tree(m, stage, terms, "lsum")
        return stage(total, "beat_sum"), depth + 3
