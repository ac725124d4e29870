"""Compiled.profile: per-kernel times from an instrumented build of the same plan (CPU) or from
CUDA events between the launches (target="cuda": on the stub driver, and on a real GPU where
there is one), with bytes and FLOPs computed here from the shapes (independently of the
profiler's own formulas)."""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest

import graphc
from graphc.errors import GraphcError
from graphc.profile import instrumented


def _mlp(target="cpu"):
    def fn(x, w1, b1, w2):
        return graphc.relu(x @ w1 + b1) @ w2
    return graphc.compile(fn, graphc.tensor(("B", 256)), graphc.tensor((256, 512)),
                          graphc.tensor((512,)), graphc.tensor((512, 64)), target=target)


def _mlp_inputs(rng, batch=256):
    return (rng.standard_normal((batch, 256)).astype(np.float32),
            rng.standard_normal((256, 512)).astype(np.float32),
            rng.standard_normal(512).astype(np.float32),
            rng.standard_normal((512, 64)).astype(np.float32))


def test_one_row_per_kernel_with_flops_bytes_and_times(rng):
    f = _mlp()
    p = f.profile(*_mlp_inputs(rng), repeat=5)
    assert [r.kernel for r in p.rows] == [k.name for k in f.kernels]
    first, second = p.rows
    assert first.ops == ["matmul", "add", "maximum"] and second.ops == ["matmul"]
    # a multiply-add is two FLOPs; bytes: what each kernel reads and writes once
    assert first.flops == 2 * 256 * 256 * 512 + 2 * 256 * 512
    assert first.bytes == 4 * (256 * 256 + 256 * 512 + 512 + 256 * 512)
    assert second.flops == 2 * 256 * 512 * 64
    assert second.bytes == 4 * (256 * 512 + 512 * 64 + 256 * 64)
    assert all(r.time > 0 and r.share > 0 for r in p.rows)
    assert abs(first.gflops - first.flops / first.time / 1e9) < 1e-6
    # the kernels' times add up to about a whole call: loosely (a shared, noisy machine),
    # but a wrong unit or a counter read at the wrong time is off by far more
    kernels = sum(r.time for r in p.rows)
    assert 0.1 * p.total < kernels < 10 * p.total, (kernels, p.total)
    assert any("test_profile.py" in line for line in first.lines), first.lines


def test_the_normal_build_has_no_counters_and_the_instrumented_one_is_its_own(rng):
    f = _mlp()
    assert f.executable.profile_counters() is None
    f.profile(*_mlp_inputs(rng, 8), repeat=1)
    inst = instrumented(f)
    assert inst.key != f.key and inst.plan is f.plan
    counters = inst.executable.profile_counters()
    assert counters is not None and len(counters) == len(f.kernels)


def test_text_json_and_plot(rng, tmp_path):
    f = _mlp()
    p = f.profile(*_mlp_inputs(rng, 64), repeat=3)
    text = str(p)
    assert all(k.name in text for k in f.kernels) and "GFLOP/s" in text
    data = json.loads(json.dumps(p.to_json()))
    assert [r["kernel"] for r in data["rows"]] == [k.name for k in f.kernels]
    assert data["total"] == p.total and data["repeat"] == 3
    pytest.importorskip("matplotlib")
    path = p.plot(str(tmp_path / "p.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_scan_body_kernels_are_rows_of_their_own(rng):
    B, H, T = 8, 16, 12
    m = rng.standard_normal((B, B)) * 0.2

    def step(h, x):   # mixes rows: one launch per body kernel and step, each timed
        h = graphc.tanh(graphc.constant(m) @ h + x)
        return h, h * 2.0
    f = graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs), graphc.tensor((B, H), "float64"),
                       graphc.tensor(("T", B, H), "float64"))
    p = f.profile(rng.standard_normal((B, H)), rng.standard_normal((T, B, H)), repeat=3)
    (scan,) = [k for k in f.kernels if k.kind == "scan"]
    body = [r for r in p.rows if r.inside == scan.name]
    assert body and all(r.calls == T and r.time > 0 for r in body)
    top = next(r for r in p.rows if r.kernel == scan.name)
    assert top.flops == sum(r.flops for r in body) > 2 * T * B * B * H
    assert top.time >= max(r.time for r in body)
    assert p.untimed == []


def test_inputs_updated_in_place_are_left_alone(rng):
    f = graphc.compile(lambda w, g: w - 0.1 * g, graphc.tensor((64, 64)), graphc.tensor((64, 64)),
                       inplace={0: 0})
    w, g = rng.standard_normal((2, 64, 64)).astype(np.float32)
    before = w.copy()
    f.profile(w, g, repeat=3)
    np.testing.assert_array_equal(w, before)


def test_bad_repeat_is_a_clear_error(rng):
    with pytest.raises(GraphcError, match="repeat must be an integer >= 1"):
        _mlp().profile(*_mlp_inputs(rng, 4), repeat=0)


def test_graphc_log_compile_says_why_each_compile_happened(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("GRAPHC_LOG", "compile")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))

    def shifted_tanh(x):
        return graphc.tanh(x) + 1.0
    graphc.compile(shifted_tanh, graphc.tensor((4, 3)))
    graphc.compile(shifted_tanh, graphc.tensor((4, 3)))
    graphc.compile(shifted_tanh, graphc.tensor(("B", 3)))
    graphc.compile(shifted_tanh, graphc.tensor(("B", 3)), cpu="x86-64-v2")
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("graphc: compile shifted_tanh")]
    assert len(lines) == 4, lines
    assert "built in" in lines[0] and "first compile of this graph" in lines[0]
    assert "from the cache" in lines[1] and "same signature and target" in lines[1]
    assert "new shape class (before: (x: float32[4, 3]))" in lines[2], lines[2]
    assert "new target" in lines[3] and "x86-64-v2" in lines[3], lines[3]


def test_fit_profiles_the_training_step_after_the_first_epoch(rng):
    from graphc import nn, optim
    model = nn.Model(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)))
    model.compile(loss="mse", optimizer=optim.SGD(0.01))
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    plain = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert plain.profile is None
    weights = {k: v.copy() for k, v in model.module.named_parameters().items()}
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, profile=True, shuffle=False)
    p = history.profile
    step = model._step.compiled
    assert [r.kernel for r in p.rows] == [k.name for k in step.kernels]
    assert sum(r.flops for r in p.rows) > 2 * 16 * 8 * 32 * 3   # forward and both gradients
    # the profile's runs updated copies: two epochs of 4 steps moved the weights as 8 do
    again = nn.Model(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)))
    again.compile(loss="mse", optimizer=optim.SGD(0.01))
    for k, v in again.module.named_parameters().items():
        v[...] = weights[k]
    again.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    for k, v in again.module.named_parameters().items():
        np.testing.assert_allclose(model.module.named_parameters()[k], v, rtol=1e-6, atol=1e-7)


def test_an_artifact_profiles_from_the_runtime_and_the_command_line(rng, tmp_path):
    import subprocess
    import sys

    import graphc_runtime
    f = _mlp()
    path = f.export(str(tmp_path / "mlp.gcx"))
    model = graphc_runtime.load(path)
    inputs = _mlp_inputs(rng, 128)
    p = model.profile(*inputs, repeat=3)
    assert [r.kernel for r in p.rows] == [k.name for k in f.kernels]
    assert p.rows[1].flops == 2 * 128 * 512 * 64 and p.rows[1].bytes == \
        4 * (128 * 512 + 512 * 64 + 128 * 64)
    out = tmp_path / "p.json"
    result = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "profile", path,
                             "--batch", "64", "--repeat", "3", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert all(k.name in result.stdout for k in f.kernels)
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["flops"] == 2 * 64 * 256 * 512 + 2 * 64 * 512
    inspect = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "inspect", path],
                             capture_output=True, text=True, timeout=300)
    assert inspect.returncode == 0, inspect.stderr
    # per call, symbolic in B: 4 * (256*512 + 512) + 4 * (256 + 512) * B bytes
    assert f"bytes {4 * (256 * 512 + 512)} + {4 * (256 + 512)}*B, FLOPs " \
        f"{2 * 256 * 512 + 2 * 512}*B" in inspect.stdout, inspect.stdout


def test_rows_carry_their_fraction_of_the_machine_ceilings(rng, tmp_path, monkeypatch):
    import graphc_runtime.profile as rp
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rp, "_CEILINGS", {})
    p = _mlp().profile(*_mlp_inputs(rng, 128), repeat=3)
    c = p.ceilings
    assert c["copy GB/s"] > 0.1 and c["sgemm GFLOP/s"] > 0.1
    for r in p.rows:
        assert r.ceiling == pytest.approx(max(r.gbps / c["copy GB/s"],
                                              r.gflops / c["sgemm GFLOP/s"]))
    cached = json.loads((tmp_path / "ceilings.json").read_text())
    assert list(cached.values()) == [c]   # measured once, then read back
    monkeypatch.setattr(rp, "_CEILINGS", {})
    assert rp.machine_ceilings() == c


# ------------------------------------------------------------------ target="cuda"

def _driver_reason():
    from graphc_runtime.cuda import available
    return available()


needs_gpu = pytest.mark.skipif("_driver_reason() is not None", reason="no NVIDIA GPU and driver")


@pytest.fixture(params=["stub", pytest.param("gpu", marks=[pytest.mark.cuda, needs_gpu])])
def driver(request, monkeypatch):
    """[stub]: the stub driver library (fake_cuda.py: simulated kernels, events read the host
    clock); [gpu]: the machine's GPU (marked `cuda`, skipped without one)."""
    if request.param == "stub":
        import fake_cuda
        return fake_cuda.install(monkeypatch)
    return None


def test_cuda_profile_times_each_kernel_with_events(driver, rng):
    f = _mlp("cuda")
    inputs = _mlp_inputs(rng, 16)
    before = [a.copy() for a in inputs]
    expected = f(*inputs)
    counts = driver.event_counts() if driver else None
    p = f.profile(*inputs, repeat=3)
    assert [r.kernel for r in p.rows] == [k.name for k in f.kernels]
    assert all(r.time > 0 and r.share > 0 and r.calls == 1 for r in p.rows)
    # bytes, FLOPs, ops and lines are the plan's, whichever target runs it
    cpu = _mlp().profile(*inputs, repeat=1)
    assert [(r.kernel, r.ops, r.lines, r.bytes, r.flops) for r in p.rows] == \
        [(r.kernel, r.ops, r.lines, r.bytes, r.flops) for r in cpu.rows]
    assert p.rows[1].bytes == 4 * (16 * 512 + 512 * 64 + 16 * 64)
    # device times of the kernels alone, total a whole call (copies in and out too): loosely
    kernels = sum(r.time for r in p.rows)
    assert 0.01 * p.total < kernels < 10 * p.total, (kernels, p.total)
    assert p.ceilings == {} and "ceil" not in str(p)   # the host CPU's rates bound no GPU
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(f(*inputs), expected)
    if driver:   # events made once (a step and one more), one synchronize per timed call
        after = driver.event_counts()
        assert after["created"] - counts["created"] == len(f.kernels) + 1
        assert after["syncs"] - counts["syncs"] == 3 + 1   # repeat, and a warm-up call
        f.profile(*inputs, repeat=2)
        assert driver.event_counts()["created"] == after["created"]
        del f.executable   # the module, its bound calls and their events go together
        gc.collect()
        assert driver.event_counts()["live"] == counts["live"]


def test_cuda_scan_body_kernels_are_rows_of_their_own(driver, rng):
    B, H, T = 4, 8, 5
    m = rng.standard_normal((B, B)) * 0.2

    def step(h, x):
        h = graphc.tanh(graphc.constant(m) @ h + x)
        return h, h * 2.0
    f = graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs), graphc.tensor((B, H), "float64"),
                       graphc.tensor(("T", B, H), "float64"), target="cuda")
    p = f.profile(rng.standard_normal((B, H)), rng.standard_normal((T, B, H)), repeat=2)
    (scan,) = [k for k in f.kernels if k.kind == "scan"]
    body = [r for r in p.rows if r.inside == scan.name]
    assert body and all(r.calls == T and r.time > 0 for r in body)
    assert [r.kernel for r in p.rows if not r.inside] == [k.name for k in f.kernels]
    top = next(r for r in p.rows if r.kernel == scan.name)
    assert top.flops == sum(r.flops for r in body) > 2 * T * B * B * H
    # the loop's row spans all its steps (carry copies too), so it holds its body's rows
    assert top.time >= sum(r.time for r in body) * (1 - 1e-6)
    assert p.untimed == []   # on a GPU every body launch is timed


def test_cuda_profile_leaves_inputs_updated_in_place_alone(driver, rng):
    f = graphc.compile(lambda w, g: w - 0.1 * g, graphc.tensor((64, 64)), graphc.tensor((64, 64)),
                       inplace={0: 0}, target="cuda")
    w, g = rng.standard_normal((2, 64, 64)).astype(np.float32)
    before = w.copy()
    p = f.profile(w, g, repeat=2)
    assert len(p.rows) == len(f.kernels)
    np.testing.assert_array_equal(w, before)


def test_a_cuda_artifact_profiles_from_the_runtime(driver, rng, tmp_path, capsys):
    import graphc_runtime
    from graphc_runtime.cli import main as cli
    f = _mlp("cuda")
    gcx = f.export(str(tmp_path / "mlp.gcx"))
    inputs = _mlp_inputs(rng, 16)
    p = graphc_runtime.load(gcx).profile(*inputs, repeat=2)
    want = f.profile(*inputs, repeat=1)
    assert [(r.kernel, r.bytes, r.flops) for r in p.rows] == \
        [(r.kernel, r.bytes, r.flops) for r in want.rows]
    assert all(r.time > 0 for r in p.rows) and p.ceilings == {}
    capsys.readouterr()
    assert cli(["profile", gcx, "--batch", "8", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert all(k.name in out for k in f.kernels)


def test_cuda_profile_without_a_driver_is_the_calls_error(monkeypatch):
    from graphc_runtime import CudaUnavailable
    from graphc_runtime import cuda as runtime_cuda
    monkeypatch.setattr(runtime_cuda, "LIBRARIES", ("libcuda-not-here.so.1",))
    monkeypatch.setattr(runtime_cuda.Driver, "_instance", None)
    f = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)), target="cuda")
    x = np.ones(3, np.float32)
    with pytest.raises(CudaUnavailable, match="no NVIDIA driver") as call:
        f(x)
    with pytest.raises(CudaUnavailable, match="no NVIDIA driver") as profiled:
        f.profile(x, repeat=2)
    assert str(profiled.value) == str(call.value)


def test_cuda_launch_steps_name_the_profile_row_they_count_in():
    import collections

    from graphc.profile import profile_meta
    from graphc_runtime.launch import LaunchPlan

    def step(h, x):
        h = graphc.tanh(h @ h + x)
        return h, h * 2.0
    f = graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs), graphc.tensor((4, 4)),
                       graphc.tensor(("T", 4, 4)), target="cuda")   # built, not run
    launch = LaunchPlan.from_json(f.launch)
    rows = profile_meta(f, banding=False)
    assert len(launch.profile_rows()) == len(rows)
    ptrs = collections.defaultdict(lambda: 1 << 20)   # any address: nothing is launched
    seen = collections.Counter()
    for row, s in launch.steps({"T": 5}, ptrs, rows=True):
        if s[0] == "launch":   # a launch counts in its own kernel's row
            assert s[1].name == rows[row]["kernel"], (s[1].name, rows[row])
        else:                  # a loop's carry copies, in the loop's row
            assert rows[row]["inside"] == "" and rows[row]["ops"][0] == "scan", rows[row]
        seen[row] += 1
    body = [r for r, m in enumerate(rows) if m["inside"]]
    assert body and all(seen[r] == 5 for r in body)
    assert [s for _, s in launch.steps({"T": 5}, ptrs, rows=True)] == \
        list(launch.steps({"T": 5}, ptrs))


@pytest.mark.slow   # (5 s on the stub driver: the training step's kernels run simulated)
def test_fit_profiles_a_cuda_training_step(driver, rng):
    from graphc import nn, optim
    model = nn.Model(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)))
    model.compile(loss="mse", optimizer=optim.SGD(0.01), target="cuda")
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    p = model.fit(x, y, epochs=2, batch_size=16, verbose=0, profile=True).profile
    assert [r.kernel for r in p.rows] == [k.name for k in model._step.compiled.kernels]
    assert all(r.time > 0 for r in p.rows)
