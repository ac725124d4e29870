"""graphc_runtime: runs graphs compiled by graphc. Needs only numpy and cffi."""
from .cpu import Executable
from .errors import InputError, LoadError, RuntimeErrorBase
from .signature import Signature, bind_inputs

__all__ = ["Executable", "InputError", "LoadError", "RuntimeErrorBase", "Signature", "bind_inputs"]
