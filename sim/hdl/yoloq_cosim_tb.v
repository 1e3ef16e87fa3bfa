`timescale 1ns/1ps
// Co-simulation testbench top: the PE `YOLOQ_PE (a macro the build defines: the generated module's name) fed
// from memories preloaded from the run folder. sim/wrapper.py fills the parameters from the PE's config and
// checks that the port list below is the PE's signature and that a beat is {weight word, activation word}
// (sw.intref.stream.StreamFormat.fields puts the activation fields lowest).
// With YOLOQ_UNIT defined, `YOLOQ_PE is a layer unit (hw/layer_unit.py: PE + epilogue): each layer also
// loads its epilogue parameters (one word per output channel) and its activation table, sets the unit's
// channel count, and each result is written as "<layer> <code> <sum>".
module yoloq_cosim_tb #(
    parameter integer ACT_BITS = 8,          // activation fields of a beat
    parameter integer WEIGHT_BITS = 8,       // weight fields of a beat (code, tail, addr, last)
    parameter integer PARAM_WORD_BITS = 8,
    parameter integer PARAM_ADDR_BITS = 1,
    parameter integer ACC_BITS = 8,
    parameter integer WEIGHT_DEPTH = 1024,   // memory depths: powers of two
    parameter integer ACT_DEPTH = 1024,
    parameter integer PARAM_DEPTH = 1024,
    parameter integer PROGRAM_DEPTH = 16,
    parameter integer WATCHDOG_CYCLES = 65536, // default of +watchdog=: cycles without any transfer or write
    parameter integer OUT_BITS = 8,          // layer unit: output code bits; its sum t follows
    parameter integer SUM_BITS = 8,
    parameter integer EPI_WORD_BITS = 8,     // layer unit: an epilogue parameter word, its address, the
    parameter integer EPI_ADDR_BITS = 1,     // table's address, the channel-count port
    parameter integer TABLE_ADDR_BITS = 1,
    parameter integer COUNT_BITS = 1,
    parameter integer EPI_DEPTH = 1024,
    parameter integer TABLE_DEPTH = 1024
) (
    input  wire        clk,
    input  wire        rst,
    output reg         done,
    output reg         timed_out,
    output reg  [63:0] cycles,
    output reg  [63:0] beats_sent,
    output reg  [63:0] results_seen,
    output reg  [31:0] layer,
    output reg  [31:0] protocol_errors
);
    localparam integer ACT_W = ACT_BITS;           // a beat's fields from the activation memory (low bits)
    localparam integer WGT_W = WEIGHT_BITS;        // a beat's fields from the weight memory (high bits)
    localparam integer WORD_W = PARAM_WORD_BITS;   // one parameter word
    localparam integer ADDR_W = PARAM_ADDR_BITS;
    localparam integer ACC_W = ACC_BITS;
    localparam integer PROG_W = 32 * 9;            // a program entry: nine 32-bit fields (sim/wrapper.py)
    localparam integer WA = $clog2(WEIGHT_DEPTH), AA = $clog2(ACT_DEPTH), PA = $clog2(PARAM_DEPTH),
                       LA = $clog2(PROGRAM_DEPTH);

    reg [WGT_W-1:0] wmem [0:WEIGHT_DEPTH - 1];
    reg [ACT_W-1:0] amem [0:ACT_DEPTH - 1];
    reg [WORD_W-1:0] pmem [0:PARAM_DEPTH - 1];
    reg [PROG_W - 1:0] prog [0:PROGRAM_DEPTH - 1];

    integer fd, idle_level, stall_level, seed, watchdog, n_weights, n_acts, n_params, n_layers;
`ifdef YOLOQ_UNIT
    localparam integer EA = $clog2(EPI_DEPTH), TA = $clog2(TABLE_DEPTH);
    localparam integer TABLE_WORDS = 1 << TABLE_ADDR_BITS;   // a layer's whole table
    reg [EPI_WORD_BITS-1:0] emem [0:EPI_DEPTH - 1];
    reg [OUT_BITS-1:0] tmem [0:TABLE_DEPTH - 1];
    integer n_epi, n_table;
`endif
    initial begin
        // the files hold fewer words than the memories (depths are rounded up): read just those
        if (!$value$plusargs("weights_words=%d", n_weights)) n_weights = WEIGHT_DEPTH;
        if (!$value$plusargs("acts_words=%d", n_acts)) n_acts = ACT_DEPTH;
        if (!$value$plusargs("params_words=%d", n_params)) n_params = PARAM_DEPTH;
        if (!$value$plusargs("program_words=%d", n_layers)) n_layers = PROGRAM_DEPTH;
        $readmemh("weights.hex", wmem, 0, n_weights - 1);
        $readmemh("acts.hex", amem, 0, n_acts - 1);
        $readmemh("params.hex", pmem, 0, n_params - 1);
        $readmemh("program.hex", prog, 0, n_layers - 1);
`ifdef YOLOQ_UNIT
        if (!$value$plusargs("epilogue_words=%d", n_epi)) n_epi = EPI_DEPTH;
        if (!$value$plusargs("table_words=%d", n_table)) n_table = TABLE_DEPTH;
        $readmemh("epilogue.hex", emem, 0, n_epi - 1);
        $readmemh("table.hex", tmem, 0, n_table - 1);
`endif
        if (!$value$plusargs("idle=%d", idle_level)) idle_level = 32;    // P(idle cycle) = idle / 256
        if (!$value$plusargs("stall=%d", stall_level)) stall_level = 32; // P(results.ready low) = stall / 256
        if (!$value$plusargs("tb_seed=%d", seed)) seed = 1;
        if (!$value$plusargs("watchdog=%d", watchdog)) watchdog = WATCHDOG_CYCLES;
        fd = $fopen("results.txt", "w");
    end

    // ---- the layer being run: one program entry (outs == 0 ends the program) ----
    wire [PROG_W - 1:0] entry = prog[layer[LA - 1:0]];
    wire [31:0] e_param_base = entry[0*32 +: 32];
    wire [31:0] e_param_count = entry[1*32 +: 32];
    wire [31:0] e_weight_base = entry[2*32 +: 32];
    wire [31:0] e_beats = entry[3*32 +: 32];
    wire [31:0] e_outs = entry[4*32 +: 32];
    wire [31:0] e_act_base = entry[5*32 +: 32];
    wire [31:0] e_positions = entry[6*32 +: 32];
    wire [31:0] e_epilogue_base = entry[7*32 +: 32];
    wire [31:0] e_table_base = entry[8*32 +: 32];

    // ---- the PE ----
    reg               el_valid = 1'b0;  // (initial values too: no X reaches the PE before the reset)
    reg  [31:0]       wp = 0, ap = 0, row = 0;      // weight word, activation word, first activation word of the position
    wire [WGT_W-1:0]  w_word = wmem[wp[WA - 1:0]];
    wire [ACT_W-1:0]  a_word = amem[ap[AA - 1:0]];
    wire [ACT_W+WGT_W-1:0] beat = {w_word, a_word};
    wire              el_ready;
    wire              res_valid;
`ifdef YOLOQ_UNIT
    localparam integer RES_W = OUT_BITS + SUM_BITS;   // {sum, code}: the unit's output layout, code lowest
`else
    localparam integer RES_W = ACC_W;
`endif
    wire [RES_W-1:0]  res_payload;
    wire signed [ACC_W-1:0] res_value = res_payload[ACC_W-1:0];
    wire signed [OUT_BITS-1:0] res_code = res_payload[OUT_BITS-1:0];
    wire signed [SUM_BITS-1:0] res_sum = res_payload[RES_W-1:RES_W-SUM_BITS];
    reg  [31:0]       rng;              // xorshift32: idle and stall decisions
    wire [31:0]       rng_a = rng ^ (rng << 13);
    wire [31:0]       rng_b = rng_a ^ (rng_a >> 17);
    wire [31:0]       rng_next = rng_b ^ (rng_b << 5);
    wire              idle_now = {24'd0, rng[7:0]} < idle_level;
    wire              stall_now = {24'd0, rng[15:8]} < stall_level;
    wire              res_ready = ~stall_now;
    reg               p_en = 1'b0;
    reg  [ADDR_W-1:0] p_addr;
    reg  [WORD_W-1:0] p_data;

    reg               e_en = 1'b0, t_en = 1'b0;   // layer unit: epilogue parameter and table writes
    reg  [31:0]       e_addr = 0, t_addr = 0;
    reg  [EPI_WORD_BITS-1:0] e_data = 0;
    reg  [OUT_BITS-1:0] t_data = 0;

`ifdef YOLOQ_UNIT
    `YOLOQ_PE pe (
        .clk(clk), .rst(rst),
        .elements__payload(beat), .elements__valid(el_valid), .elements__ready(el_ready),
        .outputs__payload(res_payload), .outputs__valid(res_valid), .outputs__ready(res_ready),
        .params__en(p_en), .params__addr(p_addr), .params__data(p_data),
        .epilogue_params__en(e_en), .epilogue_params__addr(e_addr[EPI_ADDR_BITS-1:0]),
        .epilogue_params__data(e_data),
        .table__en(t_en), .table__addr(t_addr[TABLE_ADDR_BITS-1:0]), .table__data(t_data),
        .channels(e_outs[COUNT_BITS-1:0])
    );
`else
    `YOLOQ_PE pe (
        .clk(clk), .rst(rst),
        .elements__payload(beat), .elements__valid(el_valid), .elements__ready(el_ready),
        .results__payload(res_payload), .results__valid(res_valid), .results__ready(res_ready),
        .params__en(p_en), .params__addr(p_addr), .params__data(p_data)
    );
`endif

    // ---- monitor of the PE's results stream: once offered, a result stays offered and unchanged until taken
    reg               res_waiting = 1'b0;
    reg  [RES_W-1:0]  res_held;
    always @(posedge clk) begin
        if (rst) begin
            res_waiting <= 1'b0;
            protocol_errors <= 0;
        end else begin
            if (res_waiting && (!res_valid || res_payload !== res_held)) begin
                protocol_errors <= protocol_errors + 1;
                if (protocol_errors < 10)
                    $display("yoloq_cosim_tb: results stream rule broken at cycle %0d: valid %b, payload %h, was %h",
                             cycles, res_valid, res_payload, res_held);
            end
            res_waiting <= res_valid && !res_ready;
            res_held <= res_payload;
        end
    end

    // ---- driver ----
    localparam [2:0] S_FETCH = 3'd0, S_LOAD = 3'd1, S_STREAM = 3'd2, S_DRAIN = 3'd3, S_DONE = 3'd4,
                     S_LOAD_EPILOGUE = 3'd5, S_LOAD_TABLE = 3'd6;
`ifdef YOLOQ_UNIT
    localparam [2:0] S_AFTER_PARAMS = S_LOAD_EPILOGUE;   // then the table, then the beats
`else
    localparam [2:0] S_AFTER_PARAMS = S_STREAM;
`endif
    reg  [2:0]  state;
    reg  [31:0] pi, b, o, p;
    reg  [63:0] got;                    // results of the current layer
    reg  [31:0] quiet;                  // cycles since anything moved (watchdog)
    wire        take = el_valid & el_ready;
    wire        give = res_valid & res_ready;
    wire        end_of_dot = b == e_beats - 1;
    wire        end_of_position = end_of_dot && o == e_outs - 1;
    wire        end_of_layer = end_of_position && p == e_positions - 1;
    wire [63:0] layer_results = e_outs * e_positions;
    wire [PA - 1:0] p_index = e_param_base[PA - 1:0] + pi[PA - 1:0];

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
            e_en <= 1'b0;
            t_en <= 1'b0;
            quiet <= (take | give | p_en | e_en | t_en) ? 0 : quiet + 1;
            if (give) begin
`ifdef YOLOQ_UNIT
                $fwrite(fd, "%0d %0d %0d\n", layer, res_code, res_sum);
`else
                $fwrite(fd, "%0d %0d\n", layer, res_value);
`endif
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
                    wp <= e_weight_base; ap <= e_act_base; row <= e_act_base;
                    state <= (e_param_count == 0) ? S_AFTER_PARAMS : S_LOAD;
                end
                S_LOAD: begin                   // one parameter word per cycle through the write port
                    p_en <= 1'b1;
                    p_addr <= pi[ADDR_W-1:0];
                    p_data <= pmem[p_index];
                    pi <= pi + 1;
                    if (pi == e_param_count - 1) begin
                        pi <= 0;
                        state <= S_AFTER_PARAMS;
                    end
                end
`ifdef YOLOQ_UNIT
                S_LOAD_EPILOGUE: begin          // one epilogue word per output channel
                    e_en <= 1'b1;
                    e_addr <= pi;
                    e_data <= emem[e_epilogue_base[EA - 1:0] + pi[EA - 1:0]];
                    pi <= pi + 1;
                    if (pi == e_outs - 1) begin
                        pi <= 0;
                        state <= S_LOAD_TABLE;
                    end
                end
                S_LOAD_TABLE: begin             // the layer's whole activation table
                    t_en <= 1'b1;
                    t_addr <= pi;
                    t_data <= tmem[e_table_base[TA - 1:0] + pi[TA - 1:0]];
                    pi <= pi + 1;
                    if (pi == TABLE_WORDS - 1) begin
                        pi <= 0;
                        state <= S_STREAM;
                    end
                end
`endif
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
                            b <= 0; o <= 0; p <= p + 1; wp <= e_weight_base; ap <= row + e_beats; row <= row + e_beats;
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
