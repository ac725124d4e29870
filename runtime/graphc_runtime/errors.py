"""The runtime's own error family (it never imports the compiler)."""


class RuntimeErrorBase(Exception):
    """Base of every error graphc_runtime raises on purpose."""


class InputError(RuntimeErrorBase, ValueError):
    """Arrays passed to a compiled graph do not match its signature."""


class LoadError(RuntimeErrorBase):
    """A compiled library or artifact cannot be loaded."""
