"""LLVM setup every backend shares: the process-wide lock, target initialisation, and the
optimisation pipeline run on generated IR."""
from __future__ import annotations

import os
import threading

import llvmlite.binding as llvm

from ..errors import CompileError

# llvmlite's context, options and target registry are process-wide: one build at a time.
# (Users take it as `llvm.LOCK` at each use, so a forked child can be given a fresh one.)
LOCK = threading.Lock()
_initialized: set[str] = set()


def _after_fork_in_child() -> None:
    """A child forked while another thread was building would find the lock held forever."""
    global LOCK
    LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def init_native() -> None:
    """The host's target (the CPU backend)."""
    if "native" not in _initialized:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _initialized.add("native")


def init_all() -> None:
    """Every target LLVM was built with (NVPTX among them)."""
    if "all" not in _initialized:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _initialized.add("all")


def optimize(text: str, machine, name: str, slp: bool) -> "llvm.ModuleRef":
    """Parses and verifies generated IR, then runs LLVM's O3 pipeline for `machine` on it.
    `slp`: also vectorize straight-line code (the CPU's wide registers; not for PTX)."""
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as err:
        raise CompileError(f"generated LLVM IR for {name} is invalid: {err}") from err
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = slp
    pto.loop_unrolling = False  # compile time; loops that need it are unrolled by hand
    pb = llvm.create_pass_builder(machine, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod
