"""yoloq hardware: the processing element in Amaranth, Verilog export and synthesis flows."""

# The deliberately wrong PEs of the mutation check (hw.pe.ProcessingElement(fault=...)); defined here, where the
# command line can offer them without loading amaranth.
PE_FAULTS = ("zero_point_off_by_one", "dropped_carry")
# The deliberately wrong epilogues (sim.faults.EPILOGUE_FAULTS): a requantizer that rounds down, a table entry off by one.
EPILOGUE_FAULTS = ("floor_rounding", "table_entry_off_by_one")
