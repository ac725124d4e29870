"""The native contract between the code graphc generates for the CPU and this runtime.

Defined here once: the compiler imports these values when it generates a library, the
runtime checks them when it loads one (see cpu.py for the exported entry points).
"""

# graphc_abi_version() of a library this runtime can call; bump on any change to the entry
# points' meaning (buffer order, workspace, dims).
ABI_VERSION = 1

# Alignment in bytes of the workspace the runtime passes and of every slot the generated code
# carves from it (a cache line; enough for any vector load).
BUFFER_ALIGN = 64

__all__ = ["ABI_VERSION", "BUFFER_ALIGN"]
