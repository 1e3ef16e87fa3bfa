"""The largest inputs yoloq accepts, each checked before anything of that size is allocated.

One table, quoted by the README and ``yoloq --help``, so a user can see why a file is refused. The limits are
far above every official YOLOv5/YOLOv7 model (the biggest, YOLOv7-E6E, is ~0.6 GB in FP32 with 80 classes,
depth multiples of 1 and 640 px images), and low enough that a small hostile file cannot make yoloq allocate
gigabytes or run for minutes.
"""

from __future__ import annotations

import math

MiB = 1 << 20


def is_finite_number(x) -> bool:
    """An int or a finite float, not a bool: what every numeric field of an untrusted file must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

# Checkpoints (.pt) and quantized artifacts (.yqa): both are zips.
MAX_FILE_BYTES = 2048 * MiB          # a checkpoint or artifact file on disk
MAX_TENSOR_BYTES = 1024 * MiB        # all tensor data in one file, decompressed
MAX_PICKLE_BYTES = 16 * MiB          # a checkpoint's data.pkl (structure only; YOLOv7's is 150 KB)
MAX_PICKLE_OPS = 500_000             # opcodes in it (YOLOv7's has 65,000)
MAX_MANIFEST_BYTES = 16 * MiB        # an artifact's yoloq.json
MAX_EXPANSION = 64                   # decompressed bytes per stored byte of one zip member (torch stores: 1)
MAX_TOTAL_EXPANSION = 8              # ... of all members read from a file (a YOLOv7 artifact: 2.8)
MAX_MEMBERS = 10_000                 # entries in one zip (official checkpoints: ~1,000)
MAX_NESTING = 64                     # depth of the pickled object tree or of a JSON manifest
MAX_OBJECTS = 500_000                # objects in the pickled tree, counting each shared reference again

# Model configs (the layer list embedded in a checkpoint or artifact).
MAX_CLASSES = 10_000                 # nc
MAX_LAYERS = 1_000                   # rows of backbone + head
MAX_REPEATS = 64                     # a row's number n, after depth_multiple
MAX_BLOCKS = 1_024                   # the sum of all rows' n (after depth_multiple)
MAX_MULTIPLE = 16.0                  # depth_multiple and width_multiple (positive, finite)
MAX_CHANNELS = 8192                  # a layer's output channels, after width_multiple
MAX_UPSAMPLE = 16                    # nn.Upsample scale factor
MAX_ANCHORS = 16                     # anchors per detection level (and at most 8 levels)
MAX_PARAMETERS = 256 * MiB           # weights and buffers of the whole model (1 GiB in FP32)
MAX_ACTIVATION = 64 * MiB            # elements of one layer's output for a 256 x 256 input

# COCO folders.
MAX_IMAGE_PIXELS = 64 * MiB          # width x height of one image (PIL's own bomb check is at ~89 M)
MAX_ANNOTATION_BYTES = 64 * MiB      # the instances JSON (val2017's is 25 MB; parsed, it takes ~10x that)


def describe() -> str:
    """The limits as a few lines of text for ``--help`` and the README."""
    return (f"Largest inputs accepted: checkpoint or artifact {MAX_FILE_BYTES // MiB} MiB on disk, "
            f"{MAX_TENSOR_BYTES // MiB} MiB of tensors (at most {MAX_TOTAL_EXPANSION}x the file's size), "
            f"objects nested {MAX_NESTING} deep; config nc <= {MAX_CLASSES}, {MAX_LAYERS} layers, "
            f"repeats <= {MAX_REPEATS}, multiples <= {MAX_MULTIPLE:g}, channels <= {MAX_CHANNELS}, "
            f"upsample <= {MAX_UPSAMPLE}, {MAX_PARAMETERS // MiB} M parameters; "
            f"images <= {MAX_IMAGE_PIXELS // MiB} Mpixel, COCO annotations <= {MAX_ANNOTATION_BYTES // MiB} MiB.")
