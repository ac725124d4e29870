"""The interface every backend implements; `BACKENDS` (backends/__init__.py) maps target=
names to one instance each. Adding a target is one module with a Backend subclass, plus its
table entry.

A backend never sees the user's function: it gets the simplified graph, its signature and the
buffer plan, and writes its binary into a folder the cache hands it (cache.py publishes it).
"""
from __future__ import annotations


class Backend:
    """One target: options, build into a folder, load, the texts it keeps, artifact members."""

    name = ""
    # what a build leaves to read as text: Compiled attribute -> file in the entry's folder
    texts: dict[str, str] = {}

    def options(self, cpu: str | None = None, arch: str | None = None, tf32: bool = False):
        """The target's validated options (a frozen object with `key()`, part of the cache
        key); raises CompileError for options this target does not take."""
        raise NotImplementedError

    def describe(self, options) -> str:
        """A few words for reprs: "cpu skylake-avx512", "cuda sm_80"."""
        return self.name

    def needs(self, options) -> list[str]:
        """The instruction sets the code may use: a machine without one cannot run it."""
        return []

    def prepack(self, options):
        """None, or prepack(graph, kernel) -> (constant node id, array) | None: the layout
        this target's kernels read a constant operand in, stored in the plan instead of the
        constant (plan_buffers)."""
        return None

    def build(self, graph, signature, plan, options, folder: str) -> None:
        """Generates the binary, and the files `texts` names, into `folder`."""
        raise NotImplementedError

    def load(self, compiled):
        """The callable that runs a build (graphc_runtime's Executable or its sibling)."""
        raise NotImplementedError

    def profiler(self, compiled):
        """How Compiled.profile times this target's kernels: a graphc.profile.Profiler."""
        from ..errors import GraphcError
        raise GraphcError(f"profile: per-kernel times of target={self.name!r} builds are "
                          f"not measured")

    def inspect(self, compiled, what: str):
        """One of `texts` (compiled.llvm_ir, .asm, .ptx, .launch ask here); AttributeError
        for what this target does not make."""
        if what not in self.texts:
            raise AttributeError(f"a target={self.name!r} build has no {what} "
                                 f"(it has: {', '.join(self.texts) or 'nothing'})")
        return compiled.entry.read(self.texts[what])

    def artifact(self, compiled) -> tuple[dict, dict[str, bytes]]:
        """(manifest entries, {member path: bytes}) for export: the manifest's "target" and
        the keys naming the binary's members. export() adds the weights and checksums."""
        raise NotImplementedError

