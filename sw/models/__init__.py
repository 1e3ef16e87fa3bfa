"""YOLO architectures as yoloq's own code, built from the official layer-list config format.

The built-in configs load at once; the torch modules on first use, so the command line can list the
built-in names without loading torch.
"""

from importlib import import_module

from .configs import BUILTIN, builtin_config

_LAZY = {"fold_all_bn": "fuse", "fold_bn": "fuse", "fuse_implicit": "fuse", "fuse_repconv": "fuse",
         "to_deploy": "fuse", "Detect": "heads", "IDetect": "heads", "YoloModel": "yolo", "parse_model": "yolo"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILTIN", "builtin_config", "fold_all_bn", "fold_bn", "fuse_implicit", "fuse_repconv", "to_deploy",
           "Detect", "IDetect", "YoloModel", "parse_model"]
