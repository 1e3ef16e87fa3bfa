"""Helpers shared by the ``yoloq hw`` subcommands (``hw_cmd`` registers the others, so they cannot import it)."""

from __future__ import annotations

from ..errors import CheckpointError, QuantizationError


def quantized_layers(path: str):
    """The QuantizedModel inside a quantized artifact, with a clear error for anything else."""
    from ..checkpoint import load_model  # (here: building the parser loads no torch)

    loaded = load_model(path)
    if loaded.kind != "quantized":
        raise CheckpointError(f"{path}: not a quantized artifact (make one with `yoloq quantize`)")
    return loaded.extras["quantized"]


def pe_layer_names(qm, requested: list[str] | None, source: str) -> list[str]:
    """The quantized layers named in ``requested`` (None: every quantized layer), each checked to have a PE."""
    quantized = [n for n, r in qm.layers.items() if r.qt is not None]
    if requested is None:
        return quantized
    for name in requested:
        if name not in qm.layers:
            raise QuantizationError(f"{source}: no layer {name!r}; layers are {', '.join(quantized[:4])}, ... "
                                    f"({len(quantized)} quantized)")
        if qm.layers[name].qt is None:
            raise QuantizationError(f"{name} was left in FP16 ({qm.layers[name].note}); it has no PE")
    return list(dict.fromkeys(requested))
