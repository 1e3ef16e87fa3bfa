"""yoloq software side: models, safe checkpoint loading, quantizers, integer reference, COCO evaluation."""

__version__ = "0.1.0"
