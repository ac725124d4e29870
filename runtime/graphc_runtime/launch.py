"""The CUDA launch plan: which kernels to launch, in order, with which buffers and grids.

The compiler (graphc/codegen/ptx.py) builds it with the PTX; the runtime (cuda.py) follows
it. It travels as JSON (launch.json in the cache and in .gcx artifacts) through
`to_json`/`from_json`, defined here alone. Sizes have the runtime's one size shape (an int,
or [coef, [symbols]]: see signature.py).

A scan loop is a LoopLaunch among the kernels: its body's kernels run once per step. Their
arguments may name a step's slice of a buffer ((space, index, bytes per step): the address
moves by that much per step t) or the loop's carry buffers ("carry", k): the one step t
reads, ("next", k): the one it writes; the two swap every step). `steps` expands a plan into
the launches and copies for one call's sizes, the one place that knows these rules.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .signature import size_from_json, size_to_json, size_value

# The most blocks the runtime launches per kernel (the grid's x limit on old GPUs, and plenty
# to fill any GPU); kernels cover the rest with grid-stride loops.
MAX_BLOCKS = 65535
SPACES = ("input", "const", "output", "slot")   # where a kernel argument's buffer lives
LOOP_SPACES = ("carry", "next")                   # a loop body's carry buffers (see above)


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
        out = {"name": self.name, "args": [_arg_to_json(a) for a in self.args],
               "trips": size_to_json(self.trips)}
        if self.per_thread != 1:
            out["per_thread"] = self.per_thread
        if self.blocks is not None:
            out["blocks"] = [[size_to_json(s), per] for s, per in self.blocks]
        if self.threads is not None:
            out["threads"] = self.threads
        return out

    @classmethod
    def from_json(cls, data: dict, in_loop: bool = False) -> "KernelLaunch":
        args = tuple(_arg_from_json(a, data["name"], in_loop) for a in data["args"])
        threads = data.get("threads")
        return cls(str(data["name"]), args, data["trips"], int(data.get("per_thread", 1)),
                   data.get("blocks"), None if threads is None else int(threads))


def _arg_to_json(arg) -> list:
    return [arg[0], arg[1]] + ([size_to_json(arg[2])] if len(arg) == 3 else [])


def _arg_from_json(data, kernel: str, in_loop: bool) -> tuple:
    space, index = str(data[0]), int(data[1])
    if space not in SPACES + (LOOP_SPACES if in_loop else ()):
        raise ValueError(f"kernel {kernel}: unknown buffer space {space!r}")
    if len(data) == 2:
        return (space, index)
    if len(data) == 3 and in_loop and space in SPACES:
        return (space, index, size_from_json(data[2]))
    raise ValueError(f"kernel {kernel}: malformed argument {data!r}")


@dataclass(frozen=True)
class LoopLaunch:
    """A scan loop: `body` runs `length` times (t = 0, 1, ...; reversed: t = length-1 first).
    Carry leaf k lives in the two slots `carry[k]` = (a, b, bytes): step i reads a and
    writes b when i is even, the other way round when odd. Before the first step the init
    value at `init[k]` (a buffer) is copied into a; after the last, the carry is copied to
    `final[k]` (None: nobody reads it)."""

    length: object
    reverse: bool
    carry: tuple[tuple[int, int, object], ...]
    init: tuple[tuple[str, int], ...]
    final: tuple[tuple[str, int] | None, ...]
    body: tuple[KernelLaunch, ...]

    def __post_init__(self):
        object.__setattr__(self, "length", size_from_json(self.length))
        object.__setattr__(self, "carry", tuple((int(a), int(b), size_from_json(n))
                                                for a, b, n in self.carry))

    def to_json(self) -> dict:
        return {"loop": {"length": size_to_json(self.length), "reverse": self.reverse,
                         "carry": [[a, b, size_to_json(n)] for a, b, n in self.carry],
                         "init": [list(x) for x in self.init],
                         "final": [None if x is None else list(x) for x in self.final],
                         "body": [k.to_json() for k in self.body]}}

    @classmethod
    def from_json(cls, data: dict) -> "LoopLaunch":
        data = data["loop"]
        place = lambda x: None if x is None else _arg_from_json(x, "loop", False)  # noqa: E731
        loop = cls(data["length"], bool(data["reverse"]), tuple(data["carry"]),
                   tuple(place(x) for x in data["init"]), tuple(place(x) for x in data["final"]),
                   tuple(KernelLaunch.from_json(k, in_loop=True) for k in data["body"]))
        if not len(loop.carry) == len(loop.init) == len(loop.final):
            raise ValueError("loop: carry, init and final differ in length")
        for k in loop.body:
            for arg in k.args:
                if arg[0] in LOOP_SPACES and not 0 <= arg[1] < len(loop.carry):
                    raise ValueError(f"kernel {k.name}: no carry {arg[1]}")
        return loop


@dataclass(frozen=True)
class LaunchPlan:
    """Every kernel of a module in launch order; `slots` are the workspace buffers' candidate
    byte sizes (each slot gets the largest); kernels take (buffers..., dims), with dims a
    device array of the `symbols`' sizes."""

    block: int                          # threads per block
    symbols: tuple[str, ...]
    kernels: tuple[KernelLaunch | LoopLaunch, ...]
    slots: tuple[tuple, ...] = ()
    arch: str = ""
    tf32: bool = False

    def __post_init__(self):
        object.__setattr__(self, "slots", tuple(tuple(size_from_json(s) for s in sizes)
                                                for sizes in self.slots))

    def slot_bytes(self, env: dict[str, int]) -> list[int]:
        return [max(size_value(s, env) for s in sizes) for sizes in self.slots]

    def all_kernels(self) -> list[KernelLaunch]:
        """Every kernel, loop bodies' included, each once."""
        out = []
        for k in self.kernels:
            out.extend(k.body if isinstance(k, LoopLaunch) else [k])
        return out

    def profile_rows(self) -> list[tuple[int, int | None]]:
        """The rows of a per-kernel profile: (i, None) for kernels[i] (a loop: all of it,
        copies included), and after a loop's row (i, j) for each kernel j of its body (over
        all the steps). The order of the compiler's profile metadata (graphc/profile.py)."""
        rows: list[tuple[int, int | None]] = []
        for i, k in enumerate(self.kernels):
            rows.append((i, None))
            if isinstance(k, LoopLaunch):
                rows += [(i, j) for j in range(len(k.body))]
        return rows

    def steps(self, env: dict[str, int], ptrs: dict[tuple[str, int], int], rows: bool = False):
        """For one call: ("launch", kernel, grid, [argument addresses]) and
        ("copy", dst, src, nbytes) in order. `ptrs` maps each (space, index) buffer to its
        address; a loop repeats its body's launches once per step. With rows=True, each
        comes as (row, step): row indexes profile_rows(), the innermost row it belongs to."""
        row = 0
        for k in self.kernels:
            for j, step in self._entry_steps(k, env, ptrs):
                yield (row if j is None else row + 1 + j, step) if rows else step
            row += 1 + (len(k.body) if isinstance(k, LoopLaunch) else 0)

    def _entry_steps(self, k, env: dict[str, int], ptrs: dict[tuple[str, int], int]):
        """(None or the body kernel's index, step) for one entry of `kernels`."""
        if isinstance(k, KernelLaunch):
            grid = k.grid(env, self.block)
            if grid:
                yield None, ("launch", k, grid, [ptrs[a] for a in k.args])
            return
        length = size_value(k.length, env)
        carries = [(ptrs[("slot", a)], ptrs[("slot", b)], size_value(n, env))
                   for a, b, n in k.carry]
        for (a, _, n), src in zip(carries, k.init):
            if n:
                yield None, ("copy", a, ptrs[src], n)
        body = [(kl, kl.grid(env, self.block),
                 [0 if len(arg) == 2 else size_value(arg[2], env) for arg in kl.args])
                for kl in k.body]
        for i in range(length):
            t = length - 1 - i if k.reverse else i
            cur = [c[i & 1] for c in carries]
            nxt = [c[1 - (i & 1)] for c in carries]
            for j, (kl, grid, strides) in enumerate(body):
                if not grid:
                    continue
                args = [cur[arg[1]] if arg[0] == "carry" else nxt[arg[1]]
                        if arg[0] == "next" else ptrs[arg[:2]] + t * stride
                        for arg, stride in zip(kl.args, strides)]
                yield j, ("launch", kl, grid, args)
        for c, dst in zip(carries, k.final):
            if dst is not None and c[2]:
                yield None, ("copy", ptrs[dst], c[length & 1], c[2])

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
                   tuple(LoopLaunch.from_json(k) if "loop" in k else KernelLaunch.from_json(k)
                         for k in data["kernels"]),
                   data["slots"],
                   str(data.get("arch", "")), bool(data.get("tf32", False)))


__all__ = ["KernelLaunch", "LaunchPlan", "LoopLaunch", "MAX_BLOCKS"]
