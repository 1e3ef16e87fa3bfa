"""Safe checkpoint reading and writing (no pickle code from a file ever runs)."""

from .load import LoadedModel, load_model
from .unpickler import Record, read_torch_zip

__all__ = ["LoadedModel", "load_model", "Record", "read_torch_zip"]
