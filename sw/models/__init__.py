"""YOLO architectures as yoloq's own code, built from the official layer-list config format."""

from .configs import BUILTIN, builtin_config
from .fuse import fold_all_bn, fold_bn, fuse_implicit, fuse_repconv, to_deploy
from .heads import Detect, IDetect
from .yolo import YoloModel, parse_model

__all__ = ["BUILTIN", "builtin_config", "fold_all_bn", "fold_bn", "fuse_implicit", "fuse_repconv", "to_deploy",
           "Detect", "IDetect", "YoloModel", "parse_model"]
