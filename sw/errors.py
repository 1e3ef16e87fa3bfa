"""The project's exceptions. Each names the input that caused it, so the CLI can print one clear line."""


class YoloqError(Exception):
    """Base class: an error the user can act on (bad input, missing data), printed without a traceback."""


class DataNotFoundError(YoloqError):
    """A data file or folder the command needs is not there."""


class CheckpointError(YoloqError):
    """A checkpoint file is corrupt, truncated, of an unknown format or does not fit its architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint reaches for a callable outside the allow-list; nothing from it was run."""


class ConfigError(YoloqError):
    """A model config (layer list) is malformed or names an unsupported module."""


class QuantizationError(YoloqError):
    """Invalid quantization request: bit width, granularity, method, or non-finite weights."""


class SweepError(YoloqError):
    """Invalid sweep request (preset, --bits range, executor) or a results folder from a different sweep."""
