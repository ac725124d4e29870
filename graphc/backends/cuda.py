"""target="cuda": the plan as PTX for an NVIDIA GPU, run by graphc_runtime.cuda (driver API).

The build folder holds module.ptx, module.opt.ll (the IR it was made from) and launch.json
(the runtime's LaunchPlan). Building needs no GPU; running does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import llvmlite.binding as llvm

from graphc_runtime.launch import LaunchPlan, LoopLaunch

from ..errors import CompileError
from ..signature import symbols_of
from . import llvm as shared
from .base import Backend


@dataclass(frozen=True)
class CudaTarget:
    arch: str = "sm_80"
    tf32: bool = False

    def key(self) -> str:
        return self.arch + ("|tf32" if self.tf32 else "")


class CudaBackend(Backend):
    name = "cuda"
    texts = {"ptx": "module.ptx", "llvm_ir": "module.opt.ll"}

    def options(self, cpu=None, arch=None, tf32=False) -> CudaTarget:
        from ..codegen.ptx import ARCHS

        arch = arch or "sm_80"
        if arch not in ARCHS:
            raise CompileError(f"unknown GPU architecture {arch!r}",
                               fix=f"use one of {', '.join(ARCHS)} (sm_80 runs on newer GPUs too)")
        return CudaTarget(arch, tf32)

    def describe(self, options: CudaTarget) -> str:
        return f"cuda {options.arch}" + (" tf32" if options.tf32 else "")

    def needs(self, options: CudaTarget) -> list[str]:
        return [options.arch]

    def build(self, graph, signature, plan, options: CudaTarget, folder: str) -> None:
        from ..codegen.ptx import PTX_VERSION, TRIPLE, build_gpu_module

        with shared.LOCK:
            shared.init_all()
            _short_pointers()
            # the oldest PTX ISA that knows each architecture, so any driver that runs it loads it
            machine = llvm.Target.from_triple(TRIPLE).create_target_machine(
                cpu=options.arch, features=f"+ptx{PTX_VERSION[options.arch]}", opt=3)
            try:
                module, launch = build_gpu_module(graph, plan, symbols_of(graph), TRIPLE,
                                                  str(machine.target_data), tf32=options.tf32)
                mod = shared.optimize(str(module), machine, graph.name, slp=False)
                ptx = machine.emit_assembly(mod)
            except RuntimeError as err:
                raise CompileError(f"generating PTX for {graph.name} failed: {err}") from err
            opt = str(mod)
        launch = launch.built_for(options.arch, options.tf32)
        for name, text in [("module.ptx", ptx), ("module.opt.ll", opt),
                           ("launch.json", json.dumps(launch.to_json()))]:
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)

    def inspect(self, compiled, what: str):
        if what == "launch":
            return json.loads(compiled.entry.read("launch.json"))
        return super().inspect(compiled, what)

    def load(self, compiled):
        """The loaded module (raises CudaUnavailable without a GPU and driver)."""
        from graphc_runtime.cuda import CudaExecutable
        return CudaExecutable(compiled.ptx, LaunchPlan.from_json(compiled.launch),
                              compiled.signature, compiled.plan.constants)

    def profiler(self, compiled):
        """The module itself: call_timed records CUDA events between its launches, and
        every loop body kernel's launches are timed (none run in bands of rows)."""
        from ..profile import Profiler, profile_meta
        rows = profile_meta(compiled, banding=False)
        launch = LaunchPlan.from_json(compiled.launch)
        order = launch.profile_rows()
        assert len(order) == len(rows), f"{len(order)} launch rows, {len(rows)} plan rows"
        for (i, j), row in zip(order, rows):   # the plan's kernels, in the plan's order
            k = launch.kernels[i] if j is None else launch.kernels[i].body[j]
            assert isinstance(k, LoopLaunch) or k.name == row["kernel"], (k.name, row["kernel"])
        return Profiler(compiled.executable, rows, host_ceilings=False)

    def artifact(self, compiled) -> tuple[dict, dict[str, bytes]]:
        from ..codegen.ptx import TRIPLE

        members = {"kernels/module.ptx": compiled.ptx.encode(),
                   "kernels/launch.json": compiled.entry.read("launch.json").encode(),
                   "ir/module.ll": compiled.llvm_ir.encode()}
        manifest = {"target": {"kind": "cuda", "triple": TRIPLE, "arch": compiled.options.arch},
                    "ptx": "kernels/module.ptx", "launch": "kernels/launch.json"}
        return manifest, members


_short_ptr = False


def _short_pointers() -> None:
    """32-bit shared-memory addresses (shared memory is far smaller than 4 GiB); a
    process-wide LLVM option, set once."""
    global _short_ptr
    if not _short_ptr:
        llvm.set_option("", "--nvptx-short-ptr")
        _short_ptr = True


__all__ = ["CudaBackend", "CudaTarget"]
