"""yoloq's own definitions of the architectures it ships: yolov7 (deploy and training), yolov7-tiny, yolov5n.

They are written with small builders for the repeated blocks (ELAN, MP-downsample) and produce the same
layer-list format as the official configs; tests compare them row by row with the reference files.
"""

from __future__ import annotations

import copy

LEAKY = "nn.LeakyReLU(0.1)"

V7_ANCHORS = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
V5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def _conv(c, k=1, s=1, frm=-1, act=None):
    args = [c, k, s] if act is None else [c, k, s, "None", 1, act]
    return [frm, 1, "Conv", args]


def _elan(c_branch, c_out, n_chain=4, concat=(-1, -3, -5, -6), c_chain=None, act=None):
    """Two 1x1 branches, a chain of 3x3 convs, a concat of selected taps and a 1x1 fusion conv."""
    c_chain = c_branch if c_chain is None else c_chain
    rows = [_conv(c_branch, 1, 1, act=act), _conv(c_branch, 1, 1, frm=-2, act=act)]
    rows += [_conv(c_chain, 3, 1, act=act) for _ in range(n_chain)]
    rows += [[list(concat), 1, "Concat", [1]], _conv(c_out, 1, 1, act=act)]
    return rows


def _mp_down(c, extra_from=()):
    """YOLOv7 downsampling: max-pool branch and strided-conv branch, concatenated (plus an optional skip)."""
    return [[-1, 1, "MP", []], _conv(c, 1, 1), _conv(c, 1, 1, frm=-3), _conv(c, 3, 2),
            [[-1, -3, *extra_from], 1, "Concat", [1]]]


_HEAD_TAPS = (-1, -2, -3, -4, -5, -6)


def yolov7(head: str = "Detect") -> dict:
    """YOLOv7 (``Detect`` = deploy config; ``IDetect`` = training config, as the released yolov7.pt)."""
    backbone = [_conv(32, 3, 1), _conv(64, 3, 2), _conv(64, 3, 1), _conv(128, 3, 2)]
    backbone += _elan(64, 256)                                   # 11
    backbone += _mp_down(128) + _elan(128, 512)                  # 16-P3/8, 24
    backbone += _mp_down(256) + _elan(256, 1024)                 # 29-P4/16, 37
    backbone += _mp_down(512) + _elan(256, 1024)                 # 42-P5/32, 50
    h = [[-1, 1, "SPPCSPC", [512]]]                              # 51
    h += [_conv(256), [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], _conv(256, frm=37), [[-1, -2], 1, "Concat", [1]]]
    h += _elan(256, 256, c_chain=128, concat=_HEAD_TAPS)         # 63
    h += [_conv(128), [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], _conv(128, frm=24), [[-1, -2], 1, "Concat", [1]]]
    h += _elan(128, 128, c_chain=64, concat=_HEAD_TAPS)          # 75
    h += _mp_down(128, extra_from=(63,)) + _elan(256, 256, c_chain=128, concat=_HEAD_TAPS)   # 88
    h += _mp_down(256, extra_from=(51,)) + _elan(512, 512, c_chain=256, concat=_HEAD_TAPS)   # 101
    h += [[75, 1, "RepConv", [256, 3, 1]], [88, 1, "RepConv", [512, 3, 1]], [101, 1, "RepConv", [1024, 3, 1]]]
    h += [[[102, 103, 104], 1, head, ["nc", "anchors"]]]
    return {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": copy.deepcopy(V7_ANCHORS),
            "backbone": backbone, "head": h}


def yolov7_tiny(head: str = "Detect") -> dict:
    """YOLOv7-tiny with LeakyReLU(0.1), as the released yolov7-tiny.pt."""
    a = LEAKY

    def elan(c_b, c_out):
        return _elan(c_b, c_out, n_chain=2, concat=(-1, -2, -3, -4), act=a)

    def mp():
        return [[-1, 1, "MP", []]]

    backbone = [_conv(32, 3, 2, act=a), _conv(64, 3, 2, act=a)] + elan(32, 64)            # 7
    backbone += mp() + elan(64, 128) + mp() + elan(128, 256) + mp() + elan(256, 512)      # 14, 21, 28
    h = [_conv(256, act=a), _conv(256, frm=-2, act=a), [-1, 1, "SP", [5]], [-2, 1, "SP", [9]],
         [-3, 1, "SP", [13]], [[-1, -2, -3, -4], 1, "Concat", [1]], _conv(256, act=a),
         [[-1, -7], 1, "Concat", [1]], _conv(256, act=a)]                                   # 37
    h += [_conv(128, act=a), [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], _conv(128, frm=21, act=a),
          [[-1, -2], 1, "Concat", [1]]] + elan(64, 128)                                      # 47
    h += [_conv(64, act=a), [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], _conv(64, frm=14, act=a),
          [[-1, -2], 1, "Concat", [1]]] + elan(32, 64)                                       # 57
    h += [_conv(128, 3, 2, act=a), [[-1, 47], 1, "Concat", [1]]] + elan(64, 128)           # 65
    h += [_conv(256, 3, 2, act=a), [[-1, 37], 1, "Concat", [1]]] + elan(128, 256)          # 73
    h += [_conv(128, 3, 1, frm=57, act=a), _conv(256, 3, 1, frm=65, act=a), _conv(512, 3, 1, frm=73, act=a)]
    h += [[[74, 75, 76], 1, head, ["nc", "anchors"]]]
    return {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": copy.deepcopy(V5_ANCHORS),
            "backbone": backbone, "head": h}


def yolov5n() -> dict:
    """YOLOv5n v7.0 (yolov5s layer list at depth 0.33, width 0.25)."""
    up = [-1, 1, "nn.Upsample", ["None", 2, "nearest"]]
    backbone = [[-1, 1, "Conv", [64, 6, 2, 2]], _conv(128, 3, 2), [-1, 3, "C3", [128]],
                _conv(256, 3, 2), [-1, 6, "C3", [256]], _conv(512, 3, 2), [-1, 9, "C3", [512]],
                _conv(1024, 3, 2), [-1, 3, "C3", [1024]], [-1, 1, "SPPF", [1024, 5]]]
    h = [_conv(512, 1, 1), up, [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
         _conv(256, 1, 1), up, [[-1, 4], 1, "Concat", [1]], [-1, 3, "C3", [256, False]],
         _conv(256, 3, 2), [[-1, 14], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
         _conv(512, 3, 2), [[-1, 10], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]],
         [[17, 20, 23], 1, "Detect", ["nc", "anchors"]]]
    return {"nc": 80, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": copy.deepcopy(V5_ANCHORS),
            "backbone": backbone, "head": h}


BUILTIN = {
    "yolov7": lambda: yolov7("Detect"),
    "yolov7-training": lambda: yolov7("IDetect"),
    "yolov7-tiny": lambda: yolov7_tiny("Detect"),
    "yolov7-tiny-training": lambda: yolov7_tiny("IDetect"),
    "yolov5n": yolov5n,
}


def builtin_config(name: str) -> dict:
    from ..errors import ConfigError

    if name not in BUILTIN:
        raise ConfigError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN)}")
    return BUILTIN[name]()
