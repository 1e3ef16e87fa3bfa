"""Verilog of the co-simulation testbench: the processing element plus a driver that streams from memories.

Driving a PE from Python one cycle at a time costs a Python call (and a simulator round trip) per beat;
a whole model is ~10^5-10^6 beats. So the testbench is mostly HDL: :func:`wrapper_verilog` writes a top
module, ``yoloq_cosim_tb``, that

1. preloads its stimulus memories with ``$readmemh`` from the run folder (``weights.hex``, ``acts.hex``,
   ``params.hex``, ``program.hex``; see :mod:`sim.stimulus` and :mod:`sim.cosim`);
2. runs a *program*: one entry per layer, each first writing the layer's parameter words into the PE
   through its ``params`` write port, then streaming every (position, output channel, beat) as
   beats on ``elements``, each assembled field by field from a weight word and an activation word, and waiting until all the layer's results are out;
3. inserts pseudo-random idle cycles on ``elements.valid`` and back-pressure on ``results.ready`` from a
   xorshift32 generator (seed and rates are plusargs, so one build serves every seed);
4. writes each result as ``<layer> <signed accumulator>`` to ``results.txt`` and raises ``done``; a
   watchdog raises ``timed_out`` too if nothing moves (no beat, result or parameter write) for
   ``+watchdog=`` cycles (default 2^16: far beyond the PE's latency and the longest idle run), i.e. a hung PE.

The valid/ready source follows the stream rules (valid is not withdrawn before a transfer, the payload is
stable while valid). The clock and reset come from cocotb (:mod:`sim.tb_pe`), which then waits for ``done``.

Memory depths are rounded up to powers of two so that one compiled model serves runs of similar size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from hw.build import generator_digest
from hw.config import PEConfig
from hw.pe import ProcessingElement, pe_signature, port_name
from sw.intref.stream import ACTS, WEIGHTS, StreamFormat

TOP = "yoloq_cosim_tb"
PROGRAM_FIELDS = ("param_base", "param_count", "weight_base", "beats", "outs", "act_base", "positions")
PROGRAM_FIELD_BITS = 32
WATCHDOG_CYCLES = 1 << 16  # default of +watchdog=: cycles without any transfer or parameter write


# The testbench net on each PE port, by signature member; a port the PE gains without a net here is an error.
PE_NETS = {("elements", "valid"): "el_valid", ("elements", "ready"): "el_ready", ("elements", "payload"): "beat",
           ("results", "valid"): "res_valid", ("results", "ready"): "res_ready",
           ("results", "payload"): "res_payload",
           ("params", "en"): "p_en", ("params", "addr"): "p_addr", ("params", "data"): "p_data"}
SOURCE_WORDS = {WEIGHTS: "w_word", ACTS: "a_word"}  # the memory word each beat field is read from


def pe_ports(cfg: PEConfig) -> dict[tuple[str, ...], str]:
    """Verilog port name of every PE signature member the testbench connects."""
    paths = [path for path, member in pe_signature(cfg).members.flatten() if member.is_port]
    unknown = set(paths) - set(PE_NETS)
    if unknown:
        raise ValueError(f"PE ports without a testbench net: {sorted(map(port_name, unknown))}")
    return {path: port_name(path) for path in paths}


def beat_assembly(stream: StreamFormat) -> str:
    """Verilog concatenation of a beat from the weight and activation words, field by field in
    :attr:`StreamFormat.fields` order (each source word packs its fields in that order too)."""
    offset = dict.fromkeys(SOURCE_WORDS, 0)
    parts = []
    for f in stream.fields:
        lo = offset[f.source]
        parts.append(f"{SOURCE_WORDS[f.source]}[{lo + f.width - 1}:{lo}]")
        offset[f.source] += f.width
    return "{" + ", ".join(reversed(parts)) + "}"


def depth_for(n: int, minimum: int = 1024) -> int:
    """Memory depth for ``n`` words: a power of two, so similar runs share a build."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


@dataclass(frozen=True)
class MemoryDepths:
    weights: int
    acts: int
    params: int
    program: int

    @classmethod
    def for_sizes(cls, weights: int, acts: int, params: int, layers: int) -> "MemoryDepths":
        return cls(depth_for(weights), depth_for(acts), depth_for(params), depth_for(layers + 1, 16))


def pe_module_name(cfg: PEConfig, fault: str | None) -> str:
    """A name for the PE module that says what it is (the Verilator waivers match ``*yoloq_pe_*``)."""
    f = cfg.fmt
    name = (f"yoloq_pe_cosim_{cfg.mode}_l{cfg.lanes}_k{f.weight_bits}{'p' if f.pwlq else 'u'}_a{f.act_bits}"
            f"_f{f.scale_bits}_z{f.zero_point_bits}_b{f.breakpoint_bits}_acc{f.acc_bits}_w{cfg.param_words}")
    return name + (f"_{fault}" if fault else "")


def pe_verilog(cfg: PEConfig, fault: str | None = None, cache: Path | None = None) -> tuple[str, str]:
    """(module name, Verilog) of the PE with an empty parameter memory (the testbench loads it).

    Elaborating a wide PE takes Amaranth 10-60 s, so with ``cache`` the Verilog is kept, keyed by the
    config, the fault and :func:`hw.build.generator_digest` (any change to the generator makes a new entry).
    """
    name = pe_module_name(cfg, fault)
    path = None
    if cache is not None:
        key = hashlib.sha256(repr((cfg, fault, generator_digest())).encode()).hexdigest()[:20]
        path = Path(cache) / "pe-verilog" / f"{name}-{key}.v"
        if path.exists():
            return name, path.read_text()
    source = verilog.convert(ProcessingElement(cfg, None, fault=fault), name=name, emit_src=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    return name, source


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def wrapper_verilog(cfg: PEConfig, pe_name: str, depths: MemoryDepths) -> str:
    """The ``yoloq_cosim_tb`` top module for a PE of ``cfg`` named ``pe_name``."""
    act_w = sum(f.width for f in cfg.stream.part(ACTS))
    wgt_w = sum(f.width for f in cfg.stream.part(WEIGHTS))
    connections = ",\n        ".join(f".{name}({PE_NETS[path]})" for path, name in pe_ports(cfg).items())
    word_w = cfg.word_layout.size
    prog_w = PROGRAM_FIELD_BITS * len(PROGRAM_FIELDS)
    field = {name: f"entry[{(i + 1) * PROGRAM_FIELD_BITS - 1}:{i * PROGRAM_FIELD_BITS}]"
             for i, name in enumerate(PROGRAM_FIELDS)}
    wa, aa, pa, la = (_bits(d) for d in (depths.weights, depths.acts, depths.params, depths.program))
    return f"""`timescale 1ns/1ps
// Co-simulation testbench top, generated by sim/wrapper.py: the PE {pe_name} fed from preloaded memories.
module {TOP} (
    input  wire        clk,
    input  wire        rst,
    output reg         done,
    output reg         timed_out,
    output reg  [63:0] cycles,
    output reg  [63:0] beats_sent,
    output reg  [63:0] results_seen,
    output reg  [31:0] layer
);
    localparam integer ACT_W = {act_w};      // a beat's fields from the activation memory
    localparam integer WGT_W = {wgt_w};      // a beat's fields from the weight memory
    localparam integer WORD_W = {word_w};    // one parameter word
    localparam integer ADDR_W = {cfg.addr_bits};
    localparam integer ACC_W = {cfg.acc_bits};

    reg [WGT_W-1:0] wmem [0:{depths.weights - 1}];
    reg [ACT_W-1:0] amem [0:{depths.acts - 1}];
    reg [WORD_W-1:0] pmem [0:{depths.params - 1}];
    reg [{prog_w - 1}:0] prog [0:{depths.program - 1}];

    integer fd, idle_level, stall_level, seed, watchdog, n_weights, n_acts, n_params, n_layers;
    initial begin
        // the files hold fewer words than the memories (depths are rounded up): read just those
        if (!$value$plusargs("weights_words=%d", n_weights)) n_weights = {depths.weights};
        if (!$value$plusargs("acts_words=%d", n_acts)) n_acts = {depths.acts};
        if (!$value$plusargs("params_words=%d", n_params)) n_params = {depths.params};
        if (!$value$plusargs("program_words=%d", n_layers)) n_layers = {depths.program};
        $readmemh("weights.hex", wmem, 0, n_weights - 1);
        $readmemh("acts.hex", amem, 0, n_acts - 1);
        $readmemh("params.hex", pmem, 0, n_params - 1);
        $readmemh("program.hex", prog, 0, n_layers - 1);
        if (!$value$plusargs("idle=%d", idle_level)) idle_level = 32;    // P(idle cycle) = idle / 256
        if (!$value$plusargs("stall=%d", stall_level)) stall_level = 32; // P(results.ready low) = stall / 256
        if (!$value$plusargs("tb_seed=%d", seed)) seed = 1;
        if (!$value$plusargs("watchdog=%d", watchdog)) watchdog = {WATCHDOG_CYCLES};
        fd = $fopen("results.txt", "w");
    end

    // ---- the layer being run: one program entry (outs == 0 ends the program) ----
    wire [{prog_w - 1}:0] entry = prog[layer[{la - 1}:0]];
    wire [31:0] e_pbase = {field["param_base"]};
    wire [31:0] e_pcount = {field["param_count"]};
    wire [31:0] e_wbase = {field["weight_base"]};
    wire [31:0] e_beats = {field["beats"]};
    wire [31:0] e_outs = {field["outs"]};
    wire [31:0] e_abase = {field["act_base"]};
    wire [31:0] e_pos = {field["positions"]};

    // ---- the PE ----
    reg               el_valid = 1'b0;  // (initial values too: no X reaches the PE before the reset)
    reg  [31:0]       wp = 0, ap = 0, row = 0;      // weight word, activation word, first activation word of the position
    wire [WGT_W-1:0]  w_word = wmem[wp[{wa - 1}:0]];
    wire [ACT_W-1:0]  a_word = amem[ap[{aa - 1}:0]];
    wire [ACT_W+WGT_W-1:0] beat = {beat_assembly(cfg.stream)};
    wire              el_ready;
    wire              res_valid;
    wire [ACC_W-1:0]  res_payload;
    wire signed [ACC_W-1:0] res_value = res_payload;
    reg  [31:0]       rng;              // xorshift32: idle and stall decisions
    wire [31:0]       rng_a = rng ^ (rng << 13);
    wire [31:0]       rng_b = rng_a ^ (rng_a >> 17);
    wire [31:0]       rng_next = rng_b ^ (rng_b << 5);
    wire              idle_now = {{24'd0, rng[7:0]}} < idle_level;
    wire              stall_now = {{24'd0, rng[15:8]}} < stall_level;
    wire              res_ready = ~stall_now;
    reg               p_en = 1'b0;
    reg  [ADDR_W-1:0] p_addr;
    reg  [WORD_W-1:0] p_data;

    {pe_name} pe (
        .clk(clk), .rst(rst),
        {connections}
    );

    // ---- driver ----
    localparam [2:0] S_FETCH = 3'd0, S_LOAD = 3'd1, S_STREAM = 3'd2, S_DRAIN = 3'd3, S_DONE = 3'd4;
    reg  [2:0]  state;
    reg  [31:0] pi, b, o, p;
    reg  [63:0] got;                    // results of the current layer
    reg  [31:0] quiet;                  // cycles since anything moved (watchdog)
    wire        take = el_valid & el_ready;
    wire        give = res_valid & res_ready;
    wire        end_of_dot = b == e_beats - 1;
    wire        end_of_position = end_of_dot && o == e_outs - 1;
    wire        end_of_layer = end_of_position && p == e_pos - 1;
    wire [63:0] layer_results = e_outs * e_pos;
    wire [{pa - 1}:0] p_index = e_pbase[{pa - 1}:0] + pi[{pa - 1}:0];

    always @(posedge clk) begin
        if (rst) begin
            state <= S_FETCH;
            layer <= 0;
            done <= 1'b0;
            timed_out <= 1'b0;
            el_valid <= 1'b0;
            p_en <= 1'b0;
            p_addr <= 0;
            p_data <= 0;
            cycles <= 0;
            beats_sent <= 0;
            results_seen <= 0;
            got <= 0;
            quiet <= 0;
            pi <= 0; b <= 0; o <= 0; p <= 0; wp <= 0; ap <= 0; row <= 0;
            rng <= (seed == 0) ? 32'h2545f491 : seed;
        end else begin
            cycles <= cycles + 1;
            rng <= rng_next;
            p_en <= 1'b0;
            quiet <= (take | give | p_en) ? 0 : quiet + 1;
            if (give) begin
                $fwrite(fd, "%0d %0d\\n", layer, res_value);
                got <= got + 1;
                results_seen <= results_seen + 1;
            end
            if (quiet == watchdog && state != S_DONE) begin
                $display("yoloq_cosim_tb: nothing moved for %0d cycles in layer %0d", watchdog, layer);
                timed_out <= 1'b1;
                done <= 1'b1;
                el_valid <= 1'b0;
                state <= S_DONE;
                $fclose(fd);
            end else case (state)
                S_FETCH: if (e_outs == 0) begin
                    state <= S_DONE;
                    done <= 1'b1;
                    $fclose(fd);
                end else begin
                    pi <= 0; b <= 0; o <= 0; p <= 0; got <= 0;
                    wp <= e_wbase; ap <= e_abase; row <= e_abase;
                    state <= (e_pcount == 0) ? S_STREAM : S_LOAD;
                end
                S_LOAD: begin                   // one parameter word per cycle through the write port
                    p_en <= 1'b1;
                    p_addr <= pi[ADDR_W-1:0];
                    p_data <= pmem[p_index];
                    pi <= pi + 1;
                    if (pi == e_pcount - 1) state <= S_STREAM;
                end
                S_STREAM: if (take) begin
                    beats_sent <= beats_sent + 1;
                    if (end_of_layer) begin
                        el_valid <= 1'b0;
                        state <= S_DRAIN;
                    end else begin
                        el_valid <= ~idle_now;
                        if (!end_of_dot) begin          // next beat of this dot product
                            b <= b + 1; wp <= wp + 1; ap <= ap + 1;
                        end else if (!end_of_position) begin  // next output channel, same position
                            b <= 0; o <= o + 1; wp <= wp + 1; ap <= row;
                        end else begin                  // next position, output channel 0
                            b <= 0; o <= 0; p <= p + 1; wp <= e_wbase; ap <= row + e_beats; row <= row + e_beats;
                        end
                    end
                end else if (!el_valid) begin
                    el_valid <= ~idle_now;
                end
                S_DRAIN: if (got == layer_results) begin
                    $fflush(fd);
                    layer <= layer + 1;
                    state <= S_FETCH;
                end
                default: ;
            endcase
        end
    end
endmodule
"""
