"""yoloq hardware: the processing element in Amaranth, Verilog export and synthesis flows."""
