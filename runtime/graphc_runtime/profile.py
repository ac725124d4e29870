"""Per-kernel profiles, for Compiled.profile (the compiler) and `graphc profile` (artifacts).

A timed executable's `call_timed(*arrays)` returns a call's outputs and the seconds of each
profile row. On the CPU that is an instrumented build: around each kernel it adds the
nanoseconds between two reads of a monotonic clock to a counter of its own
(Executable.profile_counters). On a GPU it is the module itself, with CUDA events recorded
between its launches (CudaExecutable.call_timed). A profile runs the timed call and the
normal build `repeat` times each, taking turns in short blocks with a pause at each switch
(on the CPU each library has its own thread pool, whose idle workers spin for a moment),
and takes medians. Each kernel's metadata (written by the compiler, kept in artifacts) gives its
ops, source lines and its bytes and FLOPs as sums of symbolic sizes, evaluated here for the
call's sizes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .signature import bind_inputs, size_from_json, size_value


@dataclass
class ProfileRow:
    kernel: str            # the kernel's name, as in compiled.kernels (scan bodies: theirs)
    ops: list[str]
    lines: list[str]       # the user's source lines its ops came from
    time: float            # median seconds per call (a scan body's kernel: all its steps)
    share: float           # time / Profile.total
    bytes: int             # read and written once per call
    flops: int
    calls: int = 1         # per graph call (a scan body's kernel: once a step)
    inside: str = ""       # the scan kernel whose loop runs it ("" at the top level)
    ceiling: float = 0.0   # the larger of GB/s over copy bandwidth, GFLOP/s over sgemm's

    @property
    def gbps(self) -> float:
        return self.bytes / self.time / 1e9 if self.time > 0 else 0.0

    @property
    def gflops(self) -> float:
        return self.flops / self.time / 1e9 if self.time > 0 else 0.0


@dataclass
class Profile:
    rows: list[ProfileRow]      # in the plan's order; a scan's body kernels after it
    total: float                # median seconds of a whole uninstrumented call
    repeat: int
    untimed: list[str] = field(default_factory=list)   # body kernels run in bands of rows
    ceilings: dict = field(default_factory=dict)        # machine_ceilings()
    dims: dict = field(default_factory=dict)            # the call's symbolic dim sizes

    def to_json(self) -> dict:
        return {"total": self.total, "repeat": self.repeat, "untimed": list(self.untimed),
                "ceilings": dict(self.ceilings), "dims": dict(self.dims),
                "rows": [{**asdict(r), "gbps": r.gbps, "gflops": r.gflops}
                         for r in self.rows]}

    def save_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    def __str__(self) -> str:
        top = sum(r.time for r in self.rows if not r.inside)
        ceil = f" {'ceil':>5s}" if self.ceilings else ""   # (none for kernels that ran on a GPU)
        lines = [f"profile: {self.total * 1e3:.3f} ms a call (median of {self.repeat}); "
                 f"kernels {top * 1e3:.3f} ms",
                 f"  {'kernel':44s} {'ms':>9s} {'share':>6s} {'GB/s':>7s} {'GFLOP/s':>8s}"
                 f"{ceil}  ops"]
        for r in sorted(self.rows, key=lambda r: -r.time):
            name = ("  " if r.inside else "") + r.kernel
            ceiling = f" {r.ceiling:5.0%}" if self.ceilings else ""
            lines.append(f"  {name[:44]:44s} {r.time * 1e3:9.3f} {r.share:6.1%} "
                         f"{r.gbps:7.1f} {r.gflops:8.1f}{ceiling}  "
                         f"{' '.join(r.ops)[:60]}")
        if self.ceilings:
            lines.append("  ceil: the larger of GB/s over copy bandwidth and GFLOP/s over "
                         "sgemm's (" + ", ".join(f"{k} {v:.1f}" for k, v in
                                                  self.ceilings.items()) + ")")
        if self.untimed:
            lines.append(f"  (run in bands of rows, timed with their loop: "
                         f"{', '.join(self.untimed)})")
        return "\n".join(lines)

    __repr__ = __str__

    def plot(self, path: str) -> str:
        """A horizontal bar chart of the kernels' times (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("Profile.plot needs matplotlib (pip install matplotlib)") from err
        rows = sorted(self.rows, key=lambda r: r.time)
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        ax.barh([("  " if r.inside else "") + r.kernel for r in rows],
                [r.time * 1e3 for r in rows])
        ax.set_xlabel("ms per call (median)")
        ax.set_title(f"{self.total * 1e3:.3f} ms a call")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


BLOCK = 5          # calls of one build in a row (measure)
SWITCH_PAUSE = 5e-4  # seconds between builds: the idle pool's workers stop spinning (50 us)


def measure(run_timed, run, arrays, repeat: int):
    """(median seconds per row, median seconds of a whole normal call); run_timed(*arrays)
    returns (outputs, seconds per row). The two builds take turns, BLOCK calls at a time
    (after one warm-up call each turn), so both see the same state of a shared machine; a
    pause at each switch lets the other library's threads go to sleep first."""
    per_call, totals = [], []
    while len(totals) < repeat:
        n = min(BLOCK, repeat - len(totals))
        time.sleep(SWITCH_PAUSE)
        for r in range(-1, n):
            seconds = run_timed(*arrays)[1]
            if r >= 0:
                per_call.append(seconds)
        time.sleep(SWITCH_PAUSE)
        for r in range(-1, n):
            start = time.perf_counter()
            run(*arrays)
            if r >= 0:
                totals.append(time.perf_counter() - start)
    return np.median(np.array(per_call, np.float64), axis=0), float(np.median(totals))


def profile_call(signature, timed, normal, arrays, meta: list[dict], repeat: int,
                 ceilings: bool = True) -> Profile:
    """The profile of a call on the flat input leaves `arrays`, checked against `signature`
    before any native code runs; inputs the graph updates in place are updated in copies.
    `timed` has call_timed (a CPU instrumented build, or the same CUDA module as `normal`),
    with a row per entry of `meta`; `normal` times the whole call. `ceilings`: compare the
    rows with this machine's CPU ceilings (not for kernels that run elsewhere)."""
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"profile: repeat must be an integer >= 1, got {repeat!r}")
    checked, env = bind_inputs(signature, list(arrays))
    for _, i in signature.aliases:
        checked[i] = checked[i].copy()
    times, total = measure(timed.call_timed, normal.call_flat, checked, repeat)
    if len(times) != len(meta):
        raise ValueError(f"profile: the timed build has {len(times)} rows, its metadata "
                         f"{len(meta)}")
    return build_profile(meta, times, total, repeat, env, ceilings)


def build_profile(meta: list[dict], times, total: float, repeat: int,
                  env: dict[str, int], ceilings: bool = True) -> Profile:
    """The Profile of one measurement: `meta` holds a row per counter (kernel, ops, lines,
    inside, banded, and calls, bytes and flops as JSON sizes: per step, summed terms);
    with `ceilings`, each row's fraction of machine_ceilings()."""
    def value(terms) -> int:
        return sum(size_value(size_from_json(t), env) for t in terms)

    rows, untimed = [], []
    for m, t in zip(meta, times):
        calls = size_value(size_from_json(m["calls"]), env)
        rows.append(ProfileRow(m["kernel"], list(m["ops"]), list(m["lines"]), float(t),
                               float(t) / total if total else 0.0, value(m["bytes"]) * calls,
                               value(m["flops"]) * calls, calls, m["inside"]))
        if m.get("banded"):
            untimed.append(m["kernel"])
    for row in rows:   # a loop's cost: its body's over all its steps
        body = [r for r in rows if r.inside == row.kernel]
        if body and not row.inside:
            row.bytes, row.flops = sum(r.bytes for r in body), sum(r.flops for r in body)
    if not ceilings:
        return Profile(rows, total, repeat, untimed, dims=dict(env))
    machine = machine_ceilings()
    for row in rows:
        row.ceiling = max(row.gbps / machine["copy GB/s"],
                          row.gflops / machine["sgemm GFLOP/s"])
    return Profile(rows, total, repeat, untimed, machine, dict(env))


_CEILINGS: dict = {}


def machine_ceilings() -> dict:
    """Copy bandwidth (numpy copying 64 MB: read + write) and NumPy's sgemm at 1024^3 on
    this machine, measured once and cached (GRAPHC_CACHE_DIR or ~/.cache/graphc) per CPU and
    CPU count. NumPy's BLAS picks its own threads (OPENBLAS_CORETYPE, where set, slows it)."""
    import os
    import platform
    key = f"{platform.machine()}-{_cpu_name()}-{os.cpu_count()}"
    if key in _CEILINGS:
        return _CEILINGS[key]
    folder = os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphc")
    path = os.path.join(folder, "ceilings.json")
    try:
        with open(path) as f:
            known = json.load(f)
        if isinstance(known.get(key), dict) and all(
                isinstance(known[key].get(k), float) and known[key][k] > 0
                for k in ("copy GB/s", "sgemm GFLOP/s")):
            _CEILINGS[key] = known[key]
            return known[key]
    except (OSError, ValueError, AttributeError):
        known = {}
    a = np.ones(1 << 24, np.float32)
    b = np.empty_like(a)
    m = np.ones((1024, 1024), np.float32)
    copy = _best(lambda: np.copyto(b, a), 10)
    gemm = _best(lambda: m @ m, 10)
    measured = {"copy GB/s": 2 * a.nbytes / copy / 1e9, "sgemm GFLOP/s": 2 * 1024 ** 3 / gemm / 1e9}
    _CEILINGS[key] = measured
    try:
        os.makedirs(folder, exist_ok=True)
        known = known if isinstance(known, dict) else {}
        known[key] = measured
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(known, f)
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only cache: measured again next process
    return measured


def _best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return "cpu"


def check_meta(meta) -> bool:
    """Whether an artifact's profile metadata has the shape build_profile reads."""
    def size_ok(s) -> bool:
        try:
            size_from_json(s)
            return True
        except (ValueError, TypeError):
            return False
    return isinstance(meta, list) and all(
        isinstance(m, dict) and isinstance(m.get("kernel"), str) and
        isinstance(m.get("inside"), str) and
        all(isinstance(m.get(k), list) and all(isinstance(x, str) for x in m[k])
            for k in ("ops", "lines")) and size_ok(m.get("calls")) and
        all(isinstance(m.get(k), list) and all(size_ok(x) for x in m[k])
            for k in ("bytes", "flops")) for m in meta)


__all__ = ["Profile", "ProfileRow", "measure", "build_profile", "profile_call", "check_meta",
           "machine_ceilings"]
