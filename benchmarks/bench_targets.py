"""The same graphs built for the host, for wasm32 (run by wasmtime) and, for information, for
aarch64 (under qemu-aarch64, whole-process time), all single-threaded, side by side.

Workloads (float32):
  W1  tanh-GELU(a*b + c), 1<<22 elements (the suite's W1 is 1<<24; wasm32 copies every
      input and output through its linear memory, which the numbers include)
  W5  the MLP 784-1024-1024-10 + softmax at batch 512 (the suite's W5)

Bar (issue: compile once, run anywhere): the wasm32 build within 3x of the native
single-thread time on W5. Calls are timed in rounds that alternate the builds (median of
all); every build's result is checked against the native one first.

    python -m benchmarks.bench_targets [--reps N] [--rounds R] [--json PATH] [--no-qemu]
"""
from __future__ import annotations

import os

_CLEARED_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphc  # noqa: E402
from graphc import toolchain  # noqa: E402
from benchmarks.bench_core import machine_info, print_machine_header, write_json  # noqa: E402
from benchmarks.suite import MLP5, _layers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workloads():
    rng = np.random.default_rng(0)
    n = 1 << 22
    w1 = [rng.standard_normal(n, dtype=np.float32) for _ in range(3)]
    layers = _layers(rng, MLP5)

    def mlp(x):
        h = x
        for i in range(0, len(layers), 2):
            h = h @ layers[i] + layers[i + 1]
            h = graphc.relu(h) if i + 2 < len(layers) else graphc.softmax(h, -1)
        return h
    x5 = rng.random((512, MLP5[0]), dtype=np.float32)
    return {"W1": (lambda a, b, c: graphc.gelu(a * b + c, approximate=True), w1),
            "W5": (mlp, [x5])}


def _time(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def qemu_seconds(fn, data, folder) -> float | None:
    """One call of the aarch64 build under qemu-aarch64 (static run_model, whole process)."""
    qemu = shutil.which("qemu-aarch64")
    if qemu is None or toolchain.zig_cc() is None:
        return None
    from graphc_runtime.cli import main as cli
    c = graphc.compile(fn, *[graphc.tensor(a.shape) for a in data], target="aarch64")
    art = c.export(os.path.join(folder, "a64.gcx"))
    cli(["unpack", art, os.path.join(folder, "model")])
    exe = os.path.join(folder, "run_model")
    zig = toolchain.zig_cc()
    subprocess.run([*zig, "-target", "aarch64-linux-musl", "-static", "-O2", "-DGRAPHC_STATIC",
                    "-I", os.path.join(folder, "model"),
                    os.path.join(ROOT, "examples", "c", "run_model.c"), c.entry.path("graph.o"),
                    os.path.join(ROOT, "graphc", "codegen", "threads.c"), "-o", exe],
                   check=True, capture_output=True, env=toolchain.tool_env(zig))
    files = []
    for k, a in enumerate(data):
        files.append(os.path.join(folder, f"in{k}.bin"))
        a.tofile(files[-1])
    t = time.perf_counter()
    subprocess.run([qemu, exe, os.path.join(folder, "model"), "1", *files], check=True,
                   capture_output=True)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--no-qemu", action="store_true")
    args = p.parse_args(argv)
    graphc.set_num_threads(1)
    info = machine_info()
    info["threads"] = 1
    print_machine_header("graphc targets, single-threaded", info)
    results = {"machine": info, "workloads": {}}
    for key, (fn, data) in workloads().items():
        specs = [graphc.tensor(a.shape) for a in data]
        # native-128: the host built for x86-64-v2 (SSE4.2, 128-bit vectors, no FMA): the
        # vector width wasm32 has, so the rest of the gap is the engine's
        builds = {"native": graphc.compile(fn, *specs),
                  "native-128": graphc.compile(fn, *specs, cpu="x86-64-v2"),
                  "wasm32": graphc.compile(fn, *specs, target="wasm32")}
        want = builds["native"](*data)
        diff = float(np.abs(builds["wasm32"](*data) - want).max())
        times = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, c in builds.items():
                times[name] += _time(lambda: c(*data), args.reps)
        med = {name: float(np.median(t)) for name, t in times.items()}
        row = {"native_s": med["native"], "wasm32_s": med["wasm32"],
               "native_128bit_s": med["native-128"],
               "wasm32_over_native": med["wasm32"] / med["native"],
               "wasm32_over_native_128bit": med["wasm32"] / med["native-128"],
               "max_abs_diff_wasm32_native": diff}
        if not args.no_qemu:
            with tempfile.TemporaryDirectory() as folder:
                row["aarch64_qemu_process_s"] = qemu_seconds(fn, data, folder)
        results["workloads"][key] = row
        print(f"{key}: native {med['native'] * 1e3:.2f} ms, wasm32 {med['wasm32'] * 1e3:.2f} ms "
              f"({row['wasm32_over_native']:.2f}x native; max |wasm32 - native| {diff:.2g}); "
              f"native with 128-bit vectors {med['native-128'] * 1e3:.2f} ms "
              f"(wasm32 {row['wasm32_over_native_128bit']:.2f}x that)"
              + (f", aarch64 under qemu {row['aarch64_qemu_process_s']:.2f} s a process"
                 if row.get("aarch64_qemu_process_s") else ""))
    w5 = results["workloads"]["W5"]["wasm32_over_native"]
    print(f"bar: W5 wasm32 within 3x of native single-thread: {w5:.2f}x "
          f"({'met' if w5 <= 3 else 'NOT met'})")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
