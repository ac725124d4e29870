"""The CUDA launch plan: which kernels to launch, in order, with which buffers and grids.

The compiler (graphc/codegen/ptx.py) builds it with the PTX; the runtime (cuda.py) follows
it. It travels as JSON (launch.json in the cache and in .gcx artifacts) through
`to_json`/`from_json`, defined here alone. Sizes have the runtime's one size shape (an int,
or [coef, [symbols]]: see signature.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .signature import size_from_json, size_to_json, size_value

# The most blocks the runtime launches per kernel (the grid's x limit on old GPUs, and plenty
# to fill any GPU); kernels cover the rest with grid-stride loops.
MAX_BLOCKS = 65535
SPACES = ("input", "const", "output", "slot")   # where a kernel argument's buffer lives


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel: `args` are (space, index) buffers, then the runtime passes `dims`."""

    name: str
    args: tuple[tuple[str, int], ...]
    trips: object                      # size: the parallel iterations
    per_thread: int = 1                # elements each thread takes (trips / per_thread threads)
    blocks: tuple | None = None        # a fixed grid: ((size, per block), ...) per axis
    threads: int | None = None         # the kernel needs exactly this many threads per block

    def __post_init__(self):   # sizes in one form, however given: int or (coef, (symbols...))
        object.__setattr__(self, "trips", size_from_json(self.trips))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple((size_from_json(s), int(per))
                                                     for s, per in self.blocks))

    def grid(self, env: dict[str, int], block: int) -> int:
        """Blocks to launch for these symbol sizes; 0 when there is nothing to do."""
        if size_value(self.trips, env) <= 0:
            return 0
        if self.blocks is not None:   # e.g. one block per tile of C
            need = 1
            for size, per in self.blocks:
                need *= -(-size_value(size, env) // per)
        else:
            need = -(-size_value(self.trips, env) // (block * self.per_thread))
        return max(1, min(MAX_BLOCKS, need))

    def to_json(self) -> dict:
        out = {"name": self.name, "args": [list(a) for a in self.args],
               "trips": size_to_json(self.trips)}
        if self.per_thread != 1:
            out["per_thread"] = self.per_thread
        if self.blocks is not None:
            out["blocks"] = [[size_to_json(s), per] for s, per in self.blocks]
        if self.threads is not None:
            out["threads"] = self.threads
        return out

    @classmethod
    def from_json(cls, data: dict) -> "KernelLaunch":
        args = tuple((str(space), int(index)) for space, index in data["args"])
        for space, _ in args:
            if space not in SPACES:
                raise ValueError(f"kernel {data['name']}: unknown buffer space {space!r}")
        threads = data.get("threads")
        return cls(str(data["name"]), args, data["trips"], int(data.get("per_thread", 1)),
                   data.get("blocks"), None if threads is None else int(threads))


@dataclass(frozen=True)
class LaunchPlan:
    """Every kernel of a module in launch order; `slots` are the workspace buffers' candidate
    byte sizes (each slot gets the largest); kernels take (buffers..., dims), with dims a
    device array of the `symbols`' sizes."""

    block: int                          # threads per block
    symbols: tuple[str, ...]
    kernels: tuple[KernelLaunch, ...]
    slots: tuple[tuple, ...] = ()
    arch: str = ""
    tf32: bool = False

    def __post_init__(self):
        object.__setattr__(self, "slots", tuple(tuple(size_from_json(s) for s in sizes)
                                                for sizes in self.slots))

    def slot_bytes(self, env: dict[str, int]) -> list[int]:
        return [max(size_value(s, env) for s in sizes) for sizes in self.slots]

    def built_for(self, arch: str, tf32: bool) -> "LaunchPlan":
        return replace(self, arch=arch, tf32=tf32)

    def to_json(self) -> dict:
        return {"block": self.block, "symbols": list(self.symbols),
                "kernels": [k.to_json() for k in self.kernels],
                "slots": [[size_to_json(s) for s in sizes] for sizes in self.slots],
                "arch": self.arch, "tf32": self.tf32}

    @classmethod
    def from_json(cls, data: dict) -> "LaunchPlan":
        """Raises KeyError, TypeError or ValueError on a malformed plan."""
        if not isinstance(data, dict):
            raise ValueError("a launch plan is a JSON object")
        return cls(int(data["block"]), tuple(str(s) for s in data["symbols"]),
                   tuple(KernelLaunch.from_json(k) for k in data["kernels"]),
                   data["slots"],
                   str(data.get("arch", "")), bool(data.get("tf32", False)))


__all__ = ["KernelLaunch", "LaunchPlan", "MAX_BLOCKS"]
