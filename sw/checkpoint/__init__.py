"""Safe checkpoint reading and writing (no pickle code from a file ever runs), and the quantized artifact."""

from .artifact import is_quantized_artifact, load_quantized, save_quantized
from .build import LoadedModel, build_for_state_dict, load_tensors
from .load import load_model
from .unpickler import Record, read_torch_zip

__all__ = ["LoadedModel", "load_model", "Record", "read_torch_zip", "build_for_state_dict", "load_tensors",
           "is_quantized_artifact", "load_quantized", "save_quantized"]
