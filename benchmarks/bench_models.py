"""Model-layer benchmark: graphc against PyTorch (eager, and torch.compile with --compile) on
the layers of the models issue 14 added, side by side in one process, rounds interleaved.

Workloads (float32):
  conv     relu(conv2d(x, w, b, padding=1)), 3x3, (16, 32, 32, 32) -> 32 channels
  conv_s2  conv2d stride 2 + BatchNorm2d (inference) + ReLU, (16, 64, 32, 32) -> 64
  cnn      the digits CNN's training step (2x Conv2d-BatchNorm2d-ReLU-MaxPool2d, Linear),
           batch 64, Adam: forward + backward + update
  encoder  TransformerEncoderLayer(128, 4, 512) forward, batch 16, sequence 64, causal mask
  lstm     LSTM(64, 128) forward over 50 steps, batch 32 (the step loop inside the code)

"torch NHWC": the same with channels_last tensors (the layout oneDNN prefers; converting the
output back to NCHW is timed, as a user comparing outputs must).
Every contender's result is checked against float64 (or PyTorch float64) before it is timed.
Each contender runs in its own process, rounds interleaved; medians over every sample.
Threads: graphc.set_num_threads and torch.set_num_threads both --threads (default 2).
OPENBLAS_CORETYPE is removed before numpy loads (it pins OpenBLAS to slower kernels).

    python -m benchmarks.bench_models [--reps N] [--rounds R] [--only conv,cnn] [--compile]
                                      [--json PATH]
"""
from __future__ import annotations

import os

_CLEARED_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphc  # noqa: E402
from graphc import nn, optim  # noqa: E402

from benchmarks.bench_core import machine_info, print_machine_header, round_robin, write_json  # noqa: E402,E501


def _spec(a):
    return graphc.tensor(a.shape, a.dtype.name)


def _torch_from(module, tmod):
    """The graphc module's weights into the torch module (PyTorch names)."""
    import torch
    tmod.load_state_dict({k: torch.tensor(v) for k, v in module.state_dict().items()})
    return tmod


# ------------------------------------------------------------------ workloads
# each returns (title, {contender: run()}, check(outputs of each) -> error)

def conv_workload(torch, compile_torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 32, 32), dtype=np.float32)
    w = (rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    f = graphc.compile(lambda x, w, b: graphc.relu(graphc.conv2d(x, w, b, padding=1)),
                       _spec(x), _spec(w), _spec(b))
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    F = torch.nn.functional

    def eager():
        with torch.no_grad():
            return torch.relu(F.conv2d(tx, tw, tb, padding=1))
    cx = tx.to(memory_format=torch.channels_last)
    cw = tw.to(memory_format=torch.channels_last)

    def channels_last():
        with torch.no_grad():
            return torch.relu(F.conv2d(cx, cw, tb, padding=1))
    runs = {"graphc": lambda: f(x, w, b), "torch": lambda: eager().numpy(),
            "torch NHWC": lambda: channels_last().contiguous().numpy()}
    if compile_torch:
        cf = torch.compile(lambda: torch.relu(F.conv2d(tx, tw, tb, padding=1)))
        runs["torch.compile"] = lambda: cf().detach().numpy()
    ref = torch.relu(F.conv2d(tx.double(), tw.double(), tb.double(), padding=1)).numpy()
    flops = 2 * 16 * 32 * 32 * 9 * 32 * 32
    return "conv 3x3 32->32, (16, 32, 32, 32) + ReLU", runs, ref, ("GFLOP/s", flops)


def conv_s2_workload(torch, compile_torch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64, 32, 32), dtype=np.float32)
    net = nn.Sequential(nn.Conv2d(64, 64, 3, stride=2, padding=1, seed=1), nn.BatchNorm2d(64),
                        nn.ReLU())
    bn = net[1]
    bn._state["running_mean"][...] = rng.standard_normal(64) * 0.1
    bn._state["running_var"][...] = rng.uniform(0.5, 1.5, 64)
    f = graphc.compile(lambda x: net(x), _spec(x))
    T = torch.nn
    tnet = _torch_from(net, T.Sequential(T.Conv2d(64, 64, 3, stride=2, padding=1),
                                         T.BatchNorm2d(64), T.ReLU())).eval()
    tx = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            return tnet(tx).numpy()
    cl = torch.nn.Sequential(*tnet).to(memory_format=torch.channels_last)
    cx = tx.to(memory_format=torch.channels_last)

    def channels_last():
        with torch.no_grad():
            return cl(cx).contiguous().numpy()
    runs = {"graphc": lambda: f(x), "torch": eager, "torch NHWC": channels_last}
    if compile_torch:
        cnet = torch.compile(tnet)
        runs["torch.compile"] = lambda: cnet(tx).detach().numpy()
    with torch.no_grad():
        ref = tnet.double()(tx.double()).numpy()
    tnet.float()
    flops = 2 * 16 * 64 * 64 * 9 * 16 * 16
    return "conv 3x3 stride 2 64->64 + BatchNorm2d + ReLU, (16, 64, 32, 32)", runs, ref, \
        ("GFLOP/s", flops)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, seed=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, seed=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10, seed=3))


def cnn_workload(torch, compile_torch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    net = _cnn()
    T = torch.nn
    tnet = _torch_from(net, T.Sequential(
        T.Conv2d(1, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(), T.MaxPool2d(2),
        T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32), T.ReLU(), T.MaxPool2d(2),
        T.Flatten(), T.Linear(128, 10)))
    step = nn.TrainStep(net, nn.cross_entropy, optim.Adam(1e-3), _spec(x), _spec(y))
    opt = torch.optim.Adam(tnet.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad()
        loss = T.functional.cross_entropy(tnet(tx), ty)
        loss.backward()
        opt.step()
        return np.float32(loss.item())
    # the first step of both from the same weights: the same loss
    ref = np.float32(T.functional.cross_entropy(tnet(tx), ty).item())
    runs = {"graphc": lambda: np.float32(step(x, y)), "torch": torch_step}
    return "digits CNN training step, batch 64 (Adam)", runs, ref, ("samples/s", 64)


def encoder_workload(torch, compile_torch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 64, 128), dtype=np.float32)
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True, seed=1)
    f = graphc.compile(lambda x: layer(x, is_causal=True), _spec(x))
    tl = _torch_from(layer, torch.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0,
                                                             batch_first=True)).eval()
    mask = torch.nn.Transformer.generate_square_subsequent_mask(64)
    tx = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            return tl(tx, src_mask=mask, is_causal=True).numpy()
    runs = {"graphc": lambda: f(x), "torch": eager}
    if compile_torch:
        cl = torch.compile(tl)
        runs["torch.compile"] = lambda: cl(tx, src_mask=mask, is_causal=True).detach().numpy()
    with torch.no_grad():
        ref = tl.double()(tx.double(), src_mask=mask.double(), is_causal=True).numpy()
    tl.float()
    return "TransformerEncoderLayer(128, 4, 512) forward, (16, 64, 128), causal", runs, ref, \
        ("samples/s", 16)


def lstm_workload(torch, compile_torch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 32, 64), dtype=np.float32)      # (T, B, I)
    lstm = nn.LSTM(64, 128, seed=1)
    f = graphc.compile(lambda x: lstm(x)[0], _spec(x))
    tl = _torch_from(lstm, torch.nn.LSTM(64, 128))
    tx = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            return tl(tx)[0].numpy()
    runs = {"graphc": lambda: f(x), "torch": eager}
    with torch.no_grad():
        ref = tl.double()(tx.double())[0].numpy()
    tl.float()
    return "LSTM(64, 128) forward, 50 steps, batch 32", runs, ref, ("samples/s", 32)


WORKLOADS = {"conv": conv_workload, "conv_s2": conv_s2_workload, "cnn": cnn_workload,
             "encoder": encoder_workload, "lstm": lstm_workload}


# ------------------------------------------------------------------ harness
# Each (workload, contender) is timed in a child process of its own, rounds interleaved
# (round 1: graphc, torch, ...; round 2: ...): PyTorch's OpenMP threads spin after each call,
# and in one process they would steal the cores from graphc's threads.

def child(key: str, name: str, reps: int, threads: int, compile_torch: bool) -> dict:
    import torch
    torch.set_num_threads(threads)
    graphc.set_num_threads(threads)
    title, runs, ref, (unit, amount) = WORKLOADS[key](torch, compile_torch)
    out = {"title": title, "unit": unit, "amount": amount, "contenders": list(runs)}
    if name not in runs:
        return {**out, "status": "not run"}
    run = runs[name]
    got = np.asarray(run())
    if not (got.shape == np.shape(ref) and np.allclose(
            got, ref, rtol=2e-3, atol=2e-3 * max(1.0, float(np.max(np.abs(ref)))))):
        return {**out, "status": f"WRONG (max err {np.max(np.abs(got - ref)):.3g})"}
    for _ in range(3):     # warm-up
        run()
    times = []
    for _ in round_robin([name], reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {**out, "status": "ok", "times": times}


def _spawn(key, name, reps, threads, compile_torch) -> dict:
    import json
    import subprocess
    cmd = [sys.executable, "-m", "benchmarks.bench_models", "--child", key, name, "--reps",
           str(reps), "--threads", str(threads)] + (["--compile"] if compile_torch else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OPENBLAS_CORETYPE", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if res.returncode != 0:
        raise SystemExit(f"{key}/{name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_workload(key, reps, rounds, threads, compile_torch):
    meta = _spawn(key, "(list)", 0, threads, compile_torch)   # the contenders, nothing timed
    names = meta["contenders"]
    samples: dict = {n: [] for n in names}
    status: dict = {}
    for _ in range(rounds):
        for name in names:
            data = _spawn(key, name, reps, threads, compile_torch)
            status[name] = data["status"]
            samples[name].extend(data.get("times", []))
    title, unit, amount = meta["title"], meta["unit"], meta["amount"]
    result = {"title": title, "unit": unit, "contenders": {}}
    base = np.median(samples["graphc"]) if samples.get("graphc") else None
    print(f"\n{key}: {title}")
    print(f"  {'contender':15s} {'median ms':>10s} {unit:>12s} {'x graphc':>9s}")
    for n in names:
        if status[n] != "ok":
            print(f"  {n:15s} {status[n]}")
            result["contenders"][n] = {"status": status[n]}
            continue
        med = float(np.median(samples[n]))
        rate = amount / med / (1e9 if unit == "GFLOP/s" else 1)
        ratio = med / base if base else float("nan")
        print(f"  {n:15s} {med * 1e3:10.3f} {rate:12.1f} {ratio:9.2f}")
        result["contenders"][n] = {"median_ms": med * 1e3, "rate": rate, "time_vs_graphc": ratio,
                                   "samples": len(samples[n])}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=30, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "CONTENDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("bench_models compares against PyTorch: pip install torch==2.13.0")
    if args.child:
        import json
        print(json.dumps(child(*args.child, args.reps, args.threads, args.compile)))
        return None
    info = machine_info()
    info["torch"] = torch.__version__
    info["threads"] = args.threads
    info["OPENBLAS_CORETYPE cleared"] = _CLEARED_CORETYPE
    print_machine_header("graphc model layers vs PyTorch (one process per contender)", info)
    results = {k: run_workload(k, args.reps, args.rounds, args.threads, args.compile)
               for k in args.only.split(",")}
    if args.json:
        write_json(args.json, {"machine": info, "results": results})
    return results


if __name__ == "__main__":
    main()
