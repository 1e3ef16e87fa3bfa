`timescale 1ns/1ps
// A behavioural model of the ECP5 DP16KD block RAM, for the subset hw/param_memory.py instantiates.
//
// yosys's ECP5 cell library (share/ecp5/cells_sim.v, share/lattice/cells_sim_ecp5.v) declares DP16KD as a
// black box with no behaviour, so this model is written from Lattice's ECP5 memory usage guide (FPGA-TN-02204)
// and yosys's own DP16KD mapping (share/lattice/brams_map_16kd.v):
// - DATA_WIDTH 1, 2, 4, 9, 18: 16384 x 1 ... 1024 x 18; the word address is AD[13:log2(18432 / depth)]
//   (x18: AD[13:4], x9: AD[13:3], x4: AD[13:2], x2: AD[13:1], x1: AD[13:0]);
// - x18: AD[1:0] are the write port's byte enables (AD0: bits 8:0, AD1: bits 17:9), x9: AD[2:0] unused;
// - a read registers the addressed word at CLK when CE is high; REGMODE "OUTREG" adds an output register,
//   loaded when OCE is high; DO is that register (or the first one with "NOREG");
// - CSDECODE "0b000" with CS tied low (always selected), WRITEMODE "NORMAL", no reset used (RST tied low),
//   contents start at zero (INITVAL_* default). Anything else stops the simulation.
// - A read of the word the other port writes in the same cycle is undefined in the guide: it reads X here.
module DP16KD (
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    parameter integer DATA_WIDTH_A = 18;
    parameter integer DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter GSR = "DISABLED";

    localparam integer W = DATA_WIDTH_A;
    localparam integer LOW = W == 18 ? 4 : W == 9 ? 3 : W == 4 ? 2 : W == 2 ? 1 : 0;
    localparam integer DEPTH = 16384 >> LOW;

    wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
    wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire [13:0] word_a = ada >> LOW, word_b = adb >> LOW;

    reg [17:0] mem [0:DEPTH-1];
    reg [17:0] read_a, read_b, out_a, out_b;
    integer i;
    initial begin
        if (DATA_WIDTH_A != DATA_WIDTH_B || LOW == 0 && W != 1 || CSDECODE_A != "0b000" || CSDECODE_B != "0b000"
                || WRITEMODE_A != "NORMAL" || WRITEMODE_B != "NORMAL") begin
            $display("DP16KD model: unsupported configuration (width %0d/%0d)", DATA_WIDTH_A, DATA_WIDTH_B);
            $finish;
        end
        for (i = 0; i < DEPTH; i = i + 1)
            mem[i] = 18'd0;
    end

    // bits a write changes: x18 per byte enable (AD1, AD0), else the whole word
    function [17:0] write_mask(input [13:0] ad);
        write_mask = W == 18 ? {{9{ad[1]}}, {9{ad[0]}}} : (18'h3ffff >> (18 - W));
    endfunction

    always @(posedge CLKA) begin
        if (CEA)
            read_a <= (CEB && WEB && word_b == word_a) ? 18'bx : mem[word_a];
        if (CEA && WEA)
            mem[word_a] <= (mem[word_a] & ~write_mask(ada)) | (dia & write_mask(ada));
        if (RSTA)
            out_a <= 18'd0;
        else if (OCEA)
            out_a <= read_a;
    end
    always @(posedge CLKB) begin
        if (CEB)
            read_b <= (CEA && WEA && word_a == word_b) ? 18'bx : mem[word_b];
        if (CEB && WEB)
            mem[word_b] <= (mem[word_b] & ~write_mask(adb)) | (dib & write_mask(adb));
        if (RSTB)
            out_b <= 18'd0;
        else if (OCEB)
            out_b <= read_b;
    end

    wire [17:0] doa = REGMODE_A == "OUTREG" ? out_a : read_a;
    wire [17:0] dob = REGMODE_B == "OUTREG" ? out_b : read_b;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule
