"""threads.c (the thread pool, scratch buffers, error status) as a cached object file.

It is compiled once per source text and C compiler, then linked into every CPU library, so
a library needs nothing at run time but libc (pthreads included).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile

from ..errors import CompileError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "threads.c")
# kernels with less work run on the caller (threads.c graphc_parallel_for; cpu.launch)
SERIAL_WORK = 1 << 17
FLAGS = ["-O2", "-fPIC", "-fvisibility=hidden", "-pthread", f"-DSERIAL_WORK={SERIAL_WORK}"]


def support_object(compiler, cache_dir: str) -> str:
    """The thread pool's object file for `compiler` (a command prefix, toolchain.find_linker;
    or one program's name), compiled once into cache_dir/support."""
    from ..toolchain import tool_env
    cmd = [compiler] if isinstance(compiler, str) else list(compiler)
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + "\0".join([*cmd, *FLAGS]).encode()).hexdigest()[:16]
    cache_dir = os.path.join(cache_dir, "support")
    path = os.path.join(cache_dir, f"threads-{key}.o")
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".o", dir=cache_dir)
    os.close(fd)
    try:
        proc = subprocess.run([*cmd, *FLAGS, "-c", SOURCE, "-o", tmp], capture_output=True,
                              text=True, timeout=120, env=tool_env(cmd))
    except OSError as err:
        os.unlink(tmp)
        raise CompileError(f"running the C compiler {cmd[0]} failed: {err}") from err
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CompileError(f"compiling the thread pool with {cmd[0]} failed:\n{proc.stderr}")
    os.replace(tmp, path)
    return path
