"""graphc_runtime: runs graphs compiled by graphc. Needs only numpy and cffi."""
from .artifact import Model, load, read_manifest
from .cpu import Executable
from .errors import InputError, LoadError, RuntimeErrorBase
from .signature import Signature, bind_inputs

__all__ = ["load", "Model", "read_manifest", "Executable", "InputError", "LoadError", "RuntimeErrorBase", "Signature", "bind_inputs"]
