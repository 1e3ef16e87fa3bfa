"""cocotb co-simulation of the generated processing element against ``sw``'s integer reference.

:mod:`sim.cosim` runs layers through the RTL (Icarus or Verilator via cocotb's runner); :mod:`sim.capture`
makes the layers of a real network on COCO images; ``yoloq hw cosim`` is the command. See sim/README.md.

The names below are the command line's choices; they are defined here, where reading them loads neither
amaranth nor cocotb.
"""

SIMULATORS = ("icarus", "verilator")
DEFAULT_LANES = 16   # dot-product elements per cycle of the co-simulated PE
