"""graphc_runtime: runs graphs compiled by graphc. Needs only numpy and cffi."""
from .artifact import Model, load, read_manifest
from .cpu import Executable, get_num_threads, set_num_threads
from .cuda import CudaError, CudaUnavailable
from .errors import InputError, LoadError, RuntimeErrorBase
from .launch import LaunchPlan
from .signature import Signature, bind_inputs

__all__ = ["CudaError", "CudaUnavailable", "load", "Model", "read_manifest", "Executable", "set_num_threads", "get_num_threads", "InputError", "LaunchPlan", "LoadError", "RuntimeErrorBase", "Signature", "bind_inputs"]
