"""ONNX benchmark: PyTorch models exported with torch.onnx, run by graphc (graphc.onnx.compile)
and by ONNX Runtime (CPUExecutionProvider, all graph optimizations) from the same file.

Workloads (float32, inference; the batch is a symbolic ONNX dim, fixed here):
  mlp      the W5 MLP 784-1024-1024-10, ReLU, softmax, batch 512
  cnn      2x (Conv 3x3-BatchNorm-ReLU-MaxPool 2) + Linear, (64, 3, 32, 32)
  encoder  TransformerEncoderLayer(256, 4, 2048), batch first, (16, 64, 256)
  lstm     LSTM(64, 128) batch first, (32, 50, 64): 50 steps
  resnet   a basic residual block and a strided one (1x1 projection shortcut), 32 -> 64
           channels, (16, 32, 32, 32)

The models are built from fixed seeds and exported once, by the parent process, with their
float64 PyTorch outputs as the reference. Each (workload, contender) is timed in a child
process of its own, rounds interleaved (as benchmarks/bench_models.py does): idle spinning
threads of one runtime never take cores from the other. Each child checks its output against
the float64 reference before it times anything. Threads: graphc.set_num_threads(--threads),
ONNX Runtime intra_op_num_threads = --threads and inter_op_num_threads = 1;
OPENBLAS_CORETYPE is removed from every child's environment.

    python -m benchmarks.bench_onnx [--reps N] [--rounds R] [--only mlp,cnn] [--threads T]
                                    [--json PATH]
"""
from __future__ import annotations

import os

_CLEARED_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.bench_core import machine_info, print_machine_header, round_robin, write_json  # noqa: E402,E501

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# wall: elapsed time (the bar). cpu: the calling thread's CPU time, for --threads 1, where
# both runtimes compute on the calling thread: time the scheduler gives other processes on
# a shared machine is not counted.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CONTENDERS = ["graphc", "onnxruntime"]
OPSET = 17


# ------------------------------------------------------------------ the models (PyTorch)

def build(key: str, torch):
    """(title, module, input shape) for a workload, from fixed seeds."""
    T = torch.nn
    torch.manual_seed(0)
    if key == "mlp":
        net = T.Sequential(T.Linear(784, 1024), T.ReLU(), T.Linear(1024, 1024), T.ReLU(),
                           T.Linear(1024, 10), T.Softmax(-1))
        return "W5 MLP 784-1024-1024-10 + softmax, batch 512", net, (512, 784)
    if key == "cnn":
        net = T.Sequential(
            T.Conv2d(3, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(), T.MaxPool2d(2),
            T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32), T.ReLU(), T.MaxPool2d(2),
            T.Flatten(), T.Linear(32 * 8 * 8, 10))
        return "CNN 2x(Conv-BN-ReLU-MaxPool) + Linear, (64, 3, 32, 32)", \
            _batchnorm_stats(net, torch), (64, 3, 32, 32)
    if key == "encoder":
        layer = T.TransformerEncoderLayer(256, 4, 2048, batch_first=True)
        return "TransformerEncoderLayer(256, 4, 2048), (16, 64, 256)", \
            _Call(layer, lambda y: y), (16, 64, 256)
    if key == "lstm":
        lstm = T.LSTM(64, 128, batch_first=True)
        return "LSTM(64, 128), batch first, (32, 50, 64): 50 steps", \
            _Call(lstm, lambda y: y[0]), (32, 50, 64)
    if key == "resnet":
        return "residual blocks 32 -> 32 -> 64 (stride 2), (16, 32, 32, 32)", \
            _batchnorm_stats(_residual_blocks(torch, 32), torch), (16, 32, 32, 32)
    raise KeyError(key)


WORKLOADS = ["mlp", "cnn", "encoder", "lstm", "resnet"]


def _Call(layer, pick):
    """A module calling layer(x) with the layer's own defaults, keeping pick(result): exported
    bare, TransformerEncoderLayer's default is_causal=False becomes a tensor input and the
    export fails."""
    import torch

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return pick(self.layer(x))

    return Call()


def _residual_blocks(torch, c: int):
    """A basic block (identity shortcut), then a strided one (1x1 strided projection)."""
    T = torch.nn

    class Blocks(T.Module):
        def __init__(self):
            super().__init__()
            self.a1, self.n1 = T.Conv2d(c, c, 3, padding=1, bias=False), T.BatchNorm2d(c)
            self.a2, self.n2 = T.Conv2d(c, c, 3, padding=1, bias=False), T.BatchNorm2d(c)
            self.b1, self.m1 = T.Conv2d(c, 2 * c, 3, 2, 1, bias=False), T.BatchNorm2d(2 * c)
            self.b2 = T.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False)
            self.m2 = T.BatchNorm2d(2 * c)
            self.down = T.Sequential(T.Conv2d(c, 2 * c, 1, 2, bias=False), T.BatchNorm2d(2 * c))

        def forward(self, x):
            x = torch.relu(x + self.n2(self.a2(torch.relu(self.n1(self.a1(x))))))
            return torch.relu(self.down(x) + self.m2(self.b2(torch.relu(self.m1(self.b1(x))))))

    return Blocks()


def _batchnorm_stats(net, torch):
    """Running statistics away from the defaults (mean 0, var 1), as after training."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def prepare(key: str, folder: str) -> dict:
    """Exports the workload's model to folder/key.onnx, with its input and float64 output."""
    import torch
    title, net, shape = build(key, torch)
    net.eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    path = os.path.join(folder, f"{key}.onnx")
    torch.onnx.export(net, (torch.from_numpy(x),), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      opset_version=OPSET, dynamo=False)
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(x).double()).numpy()
    np.savez(os.path.join(folder, f"{key}.npz"), x=x, ref=ref)
    return {"title": title, "shape": list(shape)}


# ------------------------------------------------------------------ one contender, one process

def contender(name: str, path: str, threads: int):
    """(run(x) -> output array, notes) for a contender on the ONNX file."""
    if name == "graphc":
        import graphc.onnx
        graphc.set_num_threads(threads)
        t0 = time.perf_counter()
        f = graphc.onnx.compile(path)
        note = {"compile_s": time.perf_counter() - t0, "kernels": len(f.kernels)}
        return (lambda x: f(x)["y"]), note
    if name == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        note = {"session_s": time.perf_counter() - t0, "version": ort.__version__}
        return (lambda x: s.run(["y"], {"x": x})[0]), note
    raise KeyError(name)


def child(key: str, name: str, folder: str, reps: int, threads: int, clock: str) -> dict:
    run, note = contender(name, os.path.join(folder, f"{key}.onnx"), threads)
    data = np.load(os.path.join(folder, f"{key}.npz"))
    x, ref = data["x"], data["ref"]
    got = np.asarray(run(x))
    err = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
    scale = max(1.0, float(np.max(np.abs(ref))))
    if not err <= 1e-4 * scale:
        return {"status": f"WRONG (max err {err:.3g})", "note": note}
    for _ in range(3):    # warm-up
        run(x)
    now = CLOCKS[clock]
    times = []
    for _ in round_robin([name], reps):
        t0 = now()
        run(x)
        times.append(now() - t0)
    return {"status": "ok", "note": {**note, "max_err": err}, "times": times}


def _spawn(key, name, folder, reps, threads, clock) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_onnx", "--child", key, name, folder,
           "--reps", str(reps), "--threads", str(threads), "--clock", clock]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRAPHC_NUM_THREADS": str(threads)}
    env.pop("OPENBLAS_CORETYPE", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        errors = [line for line in res.stderr.splitlines() if "Error" in line]
        return {"status": f"FAILED: {(errors or res.stderr.splitlines() or ['?'])[-1][:300]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the parent

def run_workload(key, folder, reps, rounds, threads, clock) -> dict:
    meta = prepare(key, folder)
    samples: dict = {n: [] for n in CONTENDERS}
    status, notes = {}, {}
    for _ in range(rounds):
        for name in CONTENDERS:
            data = _spawn(key, name, folder, reps, threads, clock)
            status[name] = data["status"]
            notes[name] = data.get("note", {})
            samples[name].extend(data.get("times", []))
    result = {"title": meta["title"], "input": meta["shape"], "contenders": {}}
    print(f"\n{key}: {meta['title']}")
    print(f"  {'contender':12s} {'median ms':>10s} {'min ms':>8s}  notes")
    for n in CONTENDERS:
        if status[n] != "ok":
            print(f"  {n:12s} {status[n]}")
            result["contenders"][n] = {"status": status[n]}
            continue
        med, low = float(np.median(samples[n])) * 1e3, float(np.min(samples[n])) * 1e3
        print(f"  {n:12s} {med:10.3f} {low:8.3f}  {_fmt_note(notes[n])}")
        result["contenders"][n] = {"median_ms": med, "min_ms": low, "samples": len(samples[n]),
                                   **notes[n]}
    c = result["contenders"]
    if "median_ms" in c.get("graphc", {}) and "median_ms" in c.get("onnxruntime", {}):
        ratio = c["graphc"]["median_ms"] / c["onnxruntime"]["median_ms"]
        result["graphc_over_ort"] = ratio
        print(f"  graphc / onnxruntime: {ratio:.2f} ({'at or under' if ratio <= 1 else 'OVER'} "
              f"the bar of 1.00)")
    return result


def _fmt_note(note: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in note.items())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=8,
                   help="child processes per contender, alternating: noise on a shared "
                        "machine comes in bursts, which many short rounds spread over both")
    p.add_argument("--only", default=",".join(WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="cpu: the calling thread's CPU time (only with --threads 1)")
    p.add_argument("--json", default=None,
                   help="default: benchmarks/results/onnx-<date>.json")
    p.add_argument("--child", nargs=3, metavar=("WORKLOAD", "CONTENDER", "FOLDER"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu measures the calling thread: use it with --threads 1")
    if args.child:
        print(json.dumps(child(*args.child, args.reps, args.threads, args.clock)))
        return None
    for module in ("torch", "onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            sys.exit(f"bench_onnx needs {module}: pip install torch onnx onnxruntime")
    import onnxruntime
    import torch
    info = machine_info()
    info.update({"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                 "threads": args.threads, "clock": args.clock,
                 "load_average": list(os.getloadavg())})
    print_machine_header("graphc vs ONNX Runtime on exported PyTorch models "
                         "(one process per contender)", info)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
        results = {k: run_workload(k, folder, args.reps, args.rounds, args.threads, args.clock)
                   for k in args.only.split(",")}
    info["load_average_end"] = list(os.getloadavg())
    path = args.json or os.path.join(ROOT, "benchmarks", "results",
                                     f"onnx-{datetime.date.today().isoformat()}.json")
    write_json(path, {"machine": info, "reps": args.reps, "rounds": args.rounds,
                      "clock": args.clock,
                      "results": results})
    return results


if __name__ == "__main__":
    main()
