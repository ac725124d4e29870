"""The C toolchain graphc drives: compiling the thread pool (codegen/threads.c) and linking
generated objects into shared libraries. The system's cc/gcc/clang when there is one, else
`zig cc` from the ziglang package (a self-contained clang and lld from PyPI), so that
`pip install` is all a machine needs."""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil

from .cache import cache_root
from .errors import CompileError


def find_linker() -> list[str]:
    """The C compiler driver that compiles the thread pool and links libraries, as a command
    prefix: GRAPHC_LINKER if set (a command line; "zig" for the ziglang package's), else the
    system's cc, gcc or clang, else the ziglang package's `zig cc` (pip install ziglang: a
    self-contained clang and lld, so no system toolchain is needed)."""
    env = os.environ.get("GRAPHC_LINKER", "").strip()
    if env:
        if env == "zig":
            zig = zig_cc()
            if zig is None:
                raise CompileError("GRAPHC_LINKER=zig, but the ziglang package is not installed",
                                   fix="pip install ziglang (or graphc[toolchain])")
            return zig
        cmd = shlex.split(env)
        if shutil.which(cmd[0]):
            return cmd
        raise CompileError(f"GRAPHC_LINKER={env!r}: {cmd[0]} was not found",
                           fix="set GRAPHC_LINKER to a C compiler driver on PATH, or unset it")
    for tool in ("cc", "gcc", "clang"):
        if shutil.which(tool):
            return [tool]
    zig = zig_cc()
    if zig is not None:
        return zig
    raise CompileError("no C compiler found to link with (looked for cc, gcc, clang and the "
                       "ziglang package)",
                       fix="pip install ziglang (or graphc[toolchain]): a self-contained "
                           "toolchain; or install a C toolchain (e.g. `apt install gcc`), or set "
                           "GRAPHC_LINKER to a C compiler driver")


def zig_cc() -> list[str] | None:
    """`zig cc` from the ziglang package (found without importing it), or None."""
    spec = importlib.util.find_spec("ziglang")
    if spec is None or not spec.origin:
        return None
    zig = os.path.join(os.path.dirname(spec.origin), "zig.exe" if os.name == "nt" else "zig")
    return [zig, "cc"] if os.path.exists(zig) else None


def is_zig(cmd: list[str]) -> bool:
    return os.path.basename(cmd[0]).startswith("zig") and cmd[1:2] == ["cc"]


def tool_env(cmd: list[str]) -> dict | None:
    """zig keeps its build products (glibc stubs for linking) in graphc's cache unless the user
    chose a folder: nothing is written outside it."""
    if not is_zig(cmd) or os.environ.get("ZIG_GLOBAL_CACHE_DIR"):
        return None
    return {**os.environ, "ZIG_GLOBAL_CACHE_DIR": os.path.join(cache_root(), "zig")}


__all__ = ["find_linker", "is_zig", "tool_env", "zig_cc"]
