`timescale 1ns/1ps
// The ECP5 parameter memory (DP16KD block RAMs, yosys's cell models) against the portable one, cycle for
// cycle: random writes, reads and read enables; every cycle after both read pipelines are primed the two
// read_data outputs must be equal (!==: an X counts as a difference). Driven by sim/ecp5_memory.py, which
// converts hw.param_memory's two implementations to the modules generic_memory and ecp5_memory.
module param_memory_tb;
    parameter integer WORD_BITS = 8;
    parameter integer ADDR_BITS = 4;
    parameter integer DEPTH = 16;
    parameter integer CYCLES = 1000;
    parameter integer SEED = 1;

    reg clk = 1'b0, rst = 1'b1;
    reg write_en = 1'b0, read_en = 1'b0;
    reg [ADDR_BITS-1:0] write_addr = 0, read_addr = 0;
    reg [WORD_BITS-1:0] write_data = 0;
    wire [WORD_BITS-1:0] generic_data, ecp5_data;

    generic_memory generic (.clk(clk), .rst(rst), .write_en(write_en), .write_addr(write_addr),
                            .write_data(write_data), .read_en(read_en), .read_addr(read_addr),
                            .read_data(generic_data));
    ecp5_memory ecp5 (.clk(clk), .rst(rst), .write_en(write_en), .write_addr(write_addr),
                      .write_data(write_data), .read_en(read_en), .read_addr(read_addr),
                      .read_data(ecp5_data));

    always #5 clk = ~clk;

    integer seed, cycle, i, enabled_reads, compared, mismatches, hot;
    initial begin
        seed = SEED;
        enabled_reads = 0;
        compared = 0;
        mismatches = 0;
        @(negedge clk);
        rst = 1'b0;
        for (cycle = 0; cycle < CYCLES; cycle = cycle + 1) begin
            @(negedge clk);  // outputs settled after the rising edge: compare, then drive the next inputs
            if (enabled_reads >= 2) begin  // the ECP5 output register holds X until two enabled reads
                compared = compared + 1;
                if (generic_data !== ecp5_data) begin
                    mismatches = mismatches + 1;
                    if (mismatches <= 10)
                        $display("cycle %0d: generic %h, ecp5 %h", cycle, generic_data, ecp5_data);
                end
            end
            // a few hot addresses are written and read often, so reads see fresh writes
            hot = ($random(seed) & 3) != 0;
            write_en = ($random(seed) & 1);
            read_en = ($random(seed) & 3) != 0;
            write_addr = hot ? ($unsigned($random(seed)) % (DEPTH < 4 ? DEPTH : 4)) : ($unsigned($random(seed)) % DEPTH);
            read_addr = hot ? ($unsigned($random(seed)) % (DEPTH < 4 ? DEPTH : 4)) : ($unsigned($random(seed)) % DEPTH);
            if (write_en && read_en && read_addr == write_addr && DEPTH > 1)  // a cross-port collision is
                read_addr = (read_addr + 1) % DEPTH;                             // undefined on the DP16KD
            for (i = 0; i < WORD_BITS; i = i + 1)
                write_data[i] = $random(seed);
            if (read_en)
                enabled_reads = enabled_reads + 1;
        end
        $display("param_memory_tb: compared %0d mismatches %0d", compared, mismatches);
        $finish;
    end
endmodule
