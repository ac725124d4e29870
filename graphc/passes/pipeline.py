"""run_passes: runs named passes in order; each takes the compile state and returns a new one
(compiler.Build: `.graph`, and `.kernels` once fused).

Around every pass, by environment variable:
  GRAPHC_LOG=passes   prints the pass's time and the graph's size after it to stderr
  GRAPHC_VERIFY=1     checks the graph's invariants after it (ir/verify.py); a broken graph
                      raises CompileError naming the pass (the test suite turns this on)
  GRAPHC_DUMP=folder  writes what the pass made to folder/<graph>.<n>-<pass>.txt
With none set, a pass costs one function call more than calling it directly.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ..ir.verify import verify


def _show_graph(state) -> str:
    return str(state.graph)


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable                      # state -> new state
    show: Callable = _show_graph       # state -> what this pass made, as text (GRAPHC_DUMP)


def _flags() -> tuple[bool, bool, str]:
    env = os.environ
    log = "passes" in env.get("GRAPHC_LOG", "").replace(" ", "").split(",")
    return log, env.get("GRAPHC_VERIFY", "") not in ("", "0"), env.get("GRAPHC_DUMP", "")


def run_passes(passes, state):
    """state after every pass of `passes` in order."""
    log, check, dump = _flags()
    if not (log or check or dump):
        for p in passes:
            state = p.run(state)
        return state
    for n, p in enumerate(passes):
        start = time.perf_counter()
        state = p.run(state)
        elapsed = time.perf_counter() - start
        if check:
            verify(state.graph, f"after pass {p.name}")
        if log:
            print(f"graphc: pass {p.name:<9} {elapsed * 1e3:8.2f} ms  {size_of(state)}",
                  file=sys.stderr)
        if dump:
            _dump(dump, n, p, state)
    return state


def size_of(state) -> str:
    """"12 nodes", with the kernels once fusion has made them."""
    text = f"{len(state.graph.nodes)} nodes"
    return text if state.kernels is None else f"{text}, {len(state.kernels)} kernels"


def _dump(folder: str, n: int, p: Pass, state) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{state.graph.name}.{n}-{p.name}.txt"), "w") as f:
        f.write(p.show(state) + "\n")


__all__ = ["Pass", "run_passes"]
