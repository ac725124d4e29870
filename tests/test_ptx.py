"""target="cuda": PTX for every op and the fused test graphs is assembled by ptxas (sm_80 and
sm_90, skipped without ptxas); what only the GPU kernels have (vector loads, register tiles,
tensor cores, grids) is checked on the CPU simulation (gpu_sim.py); without a driver, running
fails with a clear error. The GPU suite (tests taking `driver`) runs twice: marked `cuda` on a
real GPU (skipped cleanly without one), and through a stub driver library (stub_cuda.c) that
runs the same runtime code with the kernels' simulated builds. The graph cases every target
computes alike (CPU, simulation, stub driver, GPU) are in targets.py and test_targets.py."""
from __future__ import annotations

import os
import sys
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import graphc
from graphc import nn, optim
from graphc.codegen.ptx import ARCHS
from gpu_sim import SimulatedGpu
from helpers import aligned, assert_matches, assert_outputs_match, sample
from targets import GRAPH_CASES, all_ops, cases, mlp_for_training

PTXAS = shutil.which("ptxas")
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="ptxas is not on PATH")


def _gpu_reason():
    from graphc_runtime.cuda import available
    return available()


needs_gpu = pytest.mark.skipif("_gpu_reason() is not None", reason="no NVIDIA GPU and driver")


@pytest.fixture(params=["stub", pytest.param("gpu", marks=[pytest.mark.cuda, needs_gpu])])
def driver(request, monkeypatch):
    """The GPU-suite tests run twice: [gpu] on the machine's GPU (marked `cuda`, skipped
    without one), and [stub] everywhere, through the stub driver library (fake_cuda.py), which
    runs the same runtime code and the kernels' simulated builds."""
    if request.param == "stub":
        import fake_cuda
        return fake_cuda.install(monkeypatch)
    return None


def assemble(ptx: str, arch: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "module.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        r = subprocess.run([PTXAS, f"-arch={arch}", path, "-o", os.path.join(d, "m.cubin")],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ptxas -arch={arch} rejected the PTX:\n{r.stderr}\n{ptx[:3000]}"


def graph_case(name):
    """(fn, specs) of a shared graph case (targets.GRAPH_CASES)."""
    case = GRAPH_CASES[name]
    return case.fn, list(case.specs)


def compile_case(name, **options):
    fn, specs = graph_case(name)
    return graphc.compile(fn, *specs, **options)


# ------------------------------------------------------------------ ptxas

@needs_ptxas
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_every_elementwise_op_assembles(dtype, arch):
    fn, specs, names = all_ops(dtype)
    c = graphc.compile(fn, *specs, target="cuda", arch=arch, fuse_ops=False)
    for n in names:
        assert f"_{n}" in c.ptx, n   # one kernel per op, named after it
    assemble(c.ptx, arch)


@needs_ptxas
@pytest.mark.parametrize("arch", [ARCHS[0], ARCHS[-1]])   # the oldest and the newest target
def test_fused_graphs_and_a_training_step_assemble(arch):
    texts = []
    for name in cases("fused") + cases("casts"):
        texts.append(compile_case(name, target="cuda", arch=arch).ptx)
    model = mlp_for_training()
    step = nn.TrainStep(model, nn.cross_entropy, optim.Adam(1e-3),
                        graphc.tensor(("B", 6)), graphc.tensor(("B",), "int64"),
                        target="cuda", arch=arch)
    texts.append(step.compiled.ptx)
    for ptx in texts:
        assemble(ptx, arch)


def test_gpu_matmul_keeps_its_accumulators_in_registers():
    c = graphc.compile(lambda a, b: graphc.relu(a @ b), graphc.tensor(("M", "K")),
                       graphc.tensor(("K", "N")), target="cuda")
    assert "ld.shared" in c.ptx and "bar.sync" in c.ptx      # tiles staged in shared memory
    assert "ld.local" not in c.ptx and "st.local" not in c.ptx
    assert "fma.rn.f32" in c.ptx


@needs_ptxas
def test_big_gpu_matmuls_use_8x8_register_tiles_and_vector_shared_loads():
    c = graphc.compile(lambda a, b, r: graphc.relu(a @ b + r), graphc.tensor((2048, 512)),
                       graphc.tensor((512, 2048)), graphc.tensor((2048,)), target="cuda")
    (k,) = c.launch["kernels"]
    assert [per for _, per in k["blocks"]] == [128, 128] and k["threads"] == 256
    assert c.ptx.count("fma.rn.f32") >= 8 * 64                # 8 k-steps of 8x8, unrolled
    assert c.ptx.count("ld.shared.v4.b32") >= 8 * 4
    f64 = graphc.compile(lambda a, b: a @ b, graphc.tensor((2048, 512), "float64"),
                         graphc.tensor((512, 2048), "float64"), target="cuda")
    assert [per for _, per in f64.launch["kernels"][0]["blocks"]] == [64, 64]   # registers
    assert ".maxntid 256" in c.ptx
    assemble(c.ptx, "sm_90")


def test_gpu_row_reductions_use_warp_shuffles():
    c = graphc.compile(lambda x: graphc.softmax(x, -1), graphc.tensor(("B", "N")), target="cuda")
    assert "shfl.sync.bfly" in c.ptx and "bar.sync" in c.ptx
    assert "ld.local" not in c.ptx and "st.local" not in c.ptx   # partials in registers


def test_ptx_names_the_target_and_one_entry_per_kernel():
    c = graphc.compile(lambda x, w: graphc.softmax(x @ w, -1), graphc.tensor(("B", 8)),
                       graphc.tensor((8, 4)), target="cuda", arch="sm_90")
    assert ".target sm_90" in c.ptx
    assert c.ptx.count(".entry ") == len(c.kernels) == len(c.launch["kernels"])
    for k in c.kernels:
        assert f".entry {k.name}(" in c.ptx


def test_unknown_arch_and_target_are_clear_errors():
    with pytest.raises(graphc.CompileError, match="unknown GPU architecture"):
        graphc.compile(lambda x: x, graphc.tensor((2,)), target="cuda", arch="sm_12")
    with pytest.raises(graphc.CompileError, match="unknown target"):
        graphc.compile(lambda x: x, graphc.tensor((2,)), target="tpu")


# ------------------------------------------------------------------ kernel logic, simulated

def _vector_inputs(specs, rng, n=8, offset=0):
    arrays = []
    for s in specs:
        shape = tuple(d if isinstance(d, int) else n for d in s.shape)
        a = rng.integers(0, 9, shape).astype(s.dtype) if s.dtype in ("int32", "int64") \
            else sample(shape, s.dtype, rng)
        arrays.append(aligned(a, offset) if a.ndim else a)
    return arrays


@needs_ptxas
def test_gpu_map_kernels_load_and_store_vectors():
    c = compile_case("map_bias", target="cuda")
    assert c.ptx.count("ld.global.v4.b32") == 2 and "st.global.v4.b32" in c.ptx
    c = compile_case("map_bool_and_f64", target="cuda")
    assert "ld.global.v2.b64" in c.ptx and "st.global.b32" in c.ptx   # 4 bools: one word
    assemble(c.ptx, "sm_80")


@pytest.mark.parametrize("name", cases("map"))
def test_simulated_vector_path_alone_computes_aligned_maps(name, monkeypatch, rng):
    """With the per-element loop removed, aligned buffers still give every element: the
    vector loop covers them all."""
    from graphc.codegen.ptx import GpuKernelBuilder
    loop = GpuKernelBuilder.strided_loop

    def no_scalar_loop(self, start, n, step, body, name, init=None):
        if name == "i.g":
            return []
        return loop(self, start, n, step, body, name, init)
    monkeypatch.setattr(GpuKernelBuilder, "strided_loop", no_scalar_loop)
    fn, specs = graph_case(name)
    sim = SimulatedGpu(fn, *specs, blocks=2, threads=4)
    arrays = _vector_inputs(specs, rng, n=12)
    assert_outputs_match(sim(*arrays), graphc.evaluate(sim.graph, *arrays))


@pytest.mark.parametrize("name", ["dense", "transposed", "batched", "tiles", "int_matmul",
                                  "multi_tile", "matmul_float64"])
def test_simulated_matmul_with_128_tiles_matches_the_reference(name, monkeypatch, rng):
    """The 128x128 tiles (8x8 per thread) that big static matmuls get, on small graphs;
    two blocks, so blocks also stride over tiles."""
    from graphc.codegen import ptx
    monkeypatch.setattr(ptx, "matmul_tile", lambda space, dtype: (128, 8))
    fn, specs = graph_case(name)
    sim = SimulatedGpu(fn, *specs, blocks=2, threads=4)
    arrays = _vector_inputs(specs, rng, n=5)
    assert_outputs_match(sim(*arrays), graphc.evaluate(sim.graph, *arrays))


def _round_to_tf32(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to tf32 (10-bit mantissa; to nearest, ties away from zero)."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


TF32_GRAPHS = {   # graph, specs, the inputs that are matmul operands
    name: (*graph_case(name), (0, 1)) for name in ("dense", "tiles", "transposed", "batched",
                                                   "multi_tile")}


@needs_ptxas
def test_tf32_matmuls_run_on_tensor_cores():
    fn, specs, _ = TF32_GRAPHS["multi_tile"]
    c = graphc.compile(fn, *specs, target="cuda", tf32=True)
    assert c.tf32 and c.launch["tf32"]
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in c.ptx
    assert "cvt.rna.tf32.f32" in c.ptx
    assert c.ptx.count("mma.sync") == 16                   # a warp's 4x4 m16n8 tiles
    for arch in ("sm_80", "sm_90"):
        assemble(graphc.compile(fn, *specs, target="cuda", tf32=True, arch=arch).ptx, arch)
    plain = graphc.compile(fn, *specs, target="cuda")
    assert "mma.sync" not in plain.ptx and not plain.tf32
    f64_fn, f64_specs = graph_case("matmul_float64")
    f64 = graphc.compile(f64_fn, *f64_specs, target="cuda", tf32=True)
    assert "mma.sync" not in f64.ptx                         # tf32 is for float32 only
    with pytest.raises(graphc.CompileError, match="tf32"):
        graphc.compile(fn, *specs, tf32=True)
    with pytest.raises(graphc.CompileError, match="tf32 must be True or False"):
        graphc.compile(fn, *specs, target="cuda", tf32="yes")


@pytest.mark.parametrize("name", sorted(TF32_GRAPHS))
def test_simulated_tf32_matmul_matches_the_reference_on_tf32_inputs(name, rng):
    """The tensor-core kernel, with mma.sync emulated from the PTX ISA's fragment layouts,
    equals the reference computed on inputs rounded to tf32; and stays within tf32's
    error of the float32 reference."""
    fn, specs, operands = TF32_GRAPHS[name]
    sim = SimulatedGpu(fn, *specs, blocks=2, threads=4, tf32=True)
    arrays = _vector_inputs(specs, rng, n=37)
    rounded = [_round_to_tf32(a) if i in operands else a for i, a in enumerate(arrays)]
    assert any(not np.array_equal(r, a) for r, a in zip(rounded, arrays))
    outs = sim(*arrays)
    assert_outputs_match(outs, graphc.evaluate(sim.graph, *rounded))
    refs = graphc.evaluate(sim.graph, *arrays)
    for o, r in zip(*(((outs,), (refs,)) if not isinstance(outs, tuple) else (outs, refs))):
        np.testing.assert_allclose(o, r, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", cases("fused"))
def test_simulated_kernels_compute_the_same_on_any_grid(name, rng):
    """Grid-stride loops, block reductions and tiles with one block of one thread, more
    threads than elements, or several blocks taking turns (test_targets runs 3 x 4)."""
    case = GRAPH_CASES[name]
    sim = SimulatedGpu(case.fn, *case.specs)
    arrays = case.inputs(case.fn, 5, rng)
    reference = graphc.evaluate(sim.graph, *arrays)
    for sim.blocks, sim.threads in [(1, 1), (2, 8), (2, 64)]:
        assert_outputs_match(sim(*arrays), reference, case.tol)


def test_simulated_training_step_matches_the_cpu_step(rng):
    # the in-place training step (parameters and momentum updated in their arrays, dropout
    # from the counter-based generator) on the GPU code path, step for step with the CPU
    model_cpu, model_gpu = mlp_for_training(), mlp_for_training()
    x = rng.standard_normal((10, 6)).astype(np.float32)
    y = rng.integers(0, 3, 10).astype(np.int64)
    spec_x, spec_y = graphc.tensor(("B", 6)), graphc.tensor(("B",), "int64")
    cpu = nn.TrainStep(model_cpu, nn.cross_entropy, optim.SGD(0.1, momentum=0.9), spec_x, spec_y)
    gpu = nn.TrainStep(model_gpu, nn.cross_entropy, optim.SGD(0.1, momentum=0.9), spec_x, spec_y,
                       target="cuda")
    sim = SimulatedGpu.from_graph(gpu.compiled.graph)
    for _ in range(3):
        loss_cpu = cpu(x, y)
        outs = sim(*gpu.inputs(x, y))      # updates model_gpu's arrays in place
        gpu.step_count += 1
        assert np.isclose(float(outs[0]), loss_cpu, rtol=1e-5)
    gpu_params = model_gpu.named_parameters()
    for k, v in model_cpu.named_parameters().items():
        np.testing.assert_allclose(gpu_params[k], v, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ without a GPU

def test_running_without_a_gpu_is_a_clear_error():
    if _gpu_reason() is None:
        pytest.skip("this machine has a GPU")
    from graphc_runtime import CudaUnavailable
    c = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)), target="cuda")
    with pytest.raises(CudaUnavailable, match="NVIDIA"):
        c(np.ones(3, np.float32))
    # and the CPU target keeps working in the same process
    f = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)))
    np.testing.assert_array_equal(f(np.ones(3, np.float32)), 2.0)


# ------------------------------------------------------------------ on a GPU

@pytest.mark.parametrize("name", sorted(TF32_GRAPHS))
def test_gpu_tf32_matmuls_match_the_reference_on_tf32_inputs(name, rng, driver):
    fn, specs, operands = TF32_GRAPHS[name]
    c = graphc.compile(fn, *specs, target="cuda", tf32=True)
    arrays = _vector_inputs(specs, rng, n=300)
    rounded = [_round_to_tf32(a) if i in operands else a for i, a in enumerate(arrays)]
    outs = c(*arrays)
    assert_outputs_match(outs, graphc.evaluate(c.graph, *rounded))


def test_gpu_big_matmul_with_128_tiles_matches_the_reference(rng, driver):
    specs = [graphc.tensor((2048, 300)), graphc.tensor((300, 2100)), graphc.tensor((2100,))]
    c = graphc.compile(lambda a, b, r: graphc.relu(a @ b + r), *specs, target="cuda")
    assert [per for _, per in c.launch["kernels"][0]["blocks"]] == [128, 128]
    arrays = _vector_inputs(specs, rng)
    assert_outputs_match(c(*arrays), graphc.evaluate(c.graph, *arrays))


def test_gpu_xor_training_converges(driver):
    model = nn.Sequential(nn.Linear(2, 8, seed=0), nn.Tanh(), nn.Linear(8, 1, seed=1),
                          nn.Sigmoid())
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)
    step = nn.TrainStep(model, nn.mse, optim.SGD(0.5), graphc.tensor(("B", 2)),
                        graphc.tensor(("B", 1)), target="cuda")
    for _ in range(3000):
        loss = step(x, y)
    step.sync()
    assert loss < 0.01
    pred = nn.Predict(model, graphc.tensor(("B", 2)))(x)
    assert ((pred > 0.5) == (y > 0.5)).all()


def test_cuda_artifact_carries_ptx_and_needs_a_gpu_to_load(tmp_path):
    from graphc_runtime import LoadError, load, read_manifest
    c = graphc.compile(lambda x, w: graphc.softmax(x @ w, -1), graphc.tensor(("B", 4)),
                       graphc.tensor((4, 3)), target="cuda", arch="sm_90")
    path = c.export(str(tmp_path / "m.gcx"))
    manifest, members = read_manifest(path)          # checksums verified
    assert manifest["target"] == {"kind": "cuda", "triple": "nvptx64-nvidia-cuda",
                                  "arch": "sm_90"}
    assert members["kernels/module.ptx"].decode() == c.ptx
    assert [k["name"] for k in manifest["kernels"]] == [k.name for k in c.kernels]
    r = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "inspect", path],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "sm_90" in r.stdout, r.stderr
    if _gpu_reason() is None:
        x = np.ones((2, 4), np.float32)
        w = np.ones((4, 3), np.float32)
        np.testing.assert_allclose(load(path)(x, w), np.full((2, 3), 1 / 3), rtol=1e-6)
    else:
        with pytest.raises(LoadError, match="NVIDIA"):
            load(path)


def test_gpu_digits_training_matches_the_cpu(rng, driver):
    x = rng.random((512, 64), dtype=np.float32)
    y = rng.integers(0, 10, 512).astype(np.int64)

    def model():
        return nn.Sequential(nn.Linear(64, 128, seed=0), nn.ReLU(), nn.Linear(128, 10, seed=1))
    cpu_model, gpu_model = model(), model()
    specs = (graphc.tensor(("B", 64)), graphc.tensor(("B",), "int64"))
    cpu = nn.TrainStep(cpu_model, nn.cross_entropy, optim.Adam(1e-3), *specs)
    gpu = nn.TrainStep(gpu_model, nn.cross_entropy, optim.Adam(1e-3), *specs, target="cuda")
    for i in range(20):
        batch = slice(64 * (i % 8), 64 * (i % 8 + 1))
        assert np.isclose(gpu(x[batch], y[batch]), cpu(x[batch], y[batch]), rtol=1e-4)
    gpu.sync()
    for k, v in cpu_model.named_parameters().items():
        np.testing.assert_allclose(gpu_model.named_parameters()[k], v, rtol=1e-3, atol=1e-5)


def test_gpu_model_fit_learns_xor(driver):
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)
    model = nn.Model(nn.Sequential(nn.Linear(2, 8, seed=0), nn.Tanh(), nn.Linear(8, 1, seed=1),
                                   nn.Sigmoid()))
    model.compile(loss="mse", optimizer=optim.SGD(0.5), target="cuda")
    model.fit(x, y, epochs=2000, batch_size=4, verbose=0)
    assert ((model.predict(x) > 0.5) == (y > 0.5)).all()


def test_model_compile_rejects_unknown_targets():
    model = nn.Model(nn.Sequential(nn.Linear(2, 1, seed=0)))
    with pytest.raises(graphc.GraphcError, match="unknown target"):
        model.compile(loss="mse", target="tpu")


def test_gpu_benchmark_says_why_it_cannot_run():
    if _gpu_reason() is None:
        pytest.skip("this machine has a GPU: run python -m benchmarks.gpu by hand")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu"], capture_output=True, text=True,
                       cwd=root, timeout=120)
    assert r.returncode == 2 and "no GPU" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.slow   # (a benchmark smoke run: CI runs it with -m slow)
def test_gpu_benchmark_runs_end_to_end_on_the_stub_driver(monkeypatch, capsys):
    """--quick: every measurement's code path (compile, resident upload, check against
    NumPy, relaunch, the MLP step, the summary) runs through the stub driver."""
    import fake_cuda
    fake_cuda.install(monkeypatch)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.syspath_prepend(root)
    from benchmarks import gpu
    report = gpu.main(["--quick", "--reps", "1"])
    res = report["results"]
    assert report["device"].startswith("Stub GPU") and report["quick"] is True
    assert {"copy", "gelu", "softmax", "matmul", "matmul tf32", "mlp train step"} <= set(res)
    assert all(v["ms"] > 0 for k, v in res.items() if not k.startswith("torch"))
    summary = report["summary"]
    assert summary["gelu / copy bandwidth"] > 0 and summary["softmax / copy bandwidth"] > 0
    assert '"summary"' in capsys.readouterr().out


# ------------------------------------------------------------------ the runtime, on a fake driver

@pytest.mark.parametrize("name", ["softmax", "dense", "tiles", "column_sums", "concat_slice"])
def test_runtime_runs_cuda_graphs_through_the_driver_api(name, monkeypatch, rng):
    import fake_cuda
    fake = fake_cuda.install(monkeypatch)
    fn, specs = graph_case(name)
    c = graphc.compile(fn, *specs, target="cuda")
    shapes = [tuple(d if isinstance(d, int) else 37 for d in s.shape) for s in specs]
    arrays = [sample(sh, s.dtype, rng) for s, sh in zip(specs, shapes)]
    assert_matches(c, arrays, tol=dict(rtol=1e-5, atol=1e-5))
    launched = {n for n, _, _ in fake.launches}
    assert launched == {k["name"] for k in c.launch["kernels"]}
    plan = {k["name"]: k for k in c.launch["kernels"]}
    for n, grid, block in fake.launches:   # grids from the bound sizes, 256 threads a block
        assert grid >= 1 and block == 256
        k = plan[n]
        if "blocks" not in k:              # enough threads for every element, no more
            per = block * k.get("per_thread", 1)
            trips = graphc_runtime_size(k["trips"], 37)
            assert grid == max(1, -(-trips // per))


def graphc_runtime_size(size, bound: int) -> int:
    """A launch-plan size with every symbol bound to `bound`."""
    from graphc_runtime.cuda import evaluate_size
    syms = [] if isinstance(size, int) else size[1]
    return evaluate_size(size, {s: bound for s in syms})


def test_cuda_training_state_stays_on_the_device_until_sync(monkeypatch, rng):
    import fake_cuda
    fake_cuda.install(monkeypatch)
    model_cpu, model_gpu = mlp_for_training(), mlp_for_training()
    x = rng.standard_normal((12, 6)).astype(np.float32)
    y = rng.integers(0, 3, 12).astype(np.int64)
    specs = (graphc.tensor(("B", 6)), graphc.tensor(("B",), "int64"))
    cpu = nn.TrainStep(model_cpu, nn.cross_entropy, optim.Adam(0.01), *specs)
    gpu = nn.TrainStep(model_gpu, nn.cross_entropy, optim.Adam(0.01), *specs, target="cuda")
    before = {k: v.copy() for k, v in model_gpu.named_parameters().items()}
    for _ in range(4):
        assert np.isclose(gpu(x, y), cpu(x, y), rtol=1e-5)
    for k, v in model_gpu.named_parameters().items():   # the host copies are untouched ...
        np.testing.assert_array_equal(v, before[k])
    gpu.sync()                                           # ... until synced
    for k, v in model_cpu.named_parameters().items():
        np.testing.assert_allclose(model_gpu.named_parameters()[k], v, rtol=1e-5, atol=1e-6)


def test_cuda_relaunch_artifact_and_driver_errors(monkeypatch, tmp_path, rng):
    import fake_cuda
    from graphc_runtime import CudaError, load
    fake = fake_cuda.install(monkeypatch)
    c = graphc.compile(lambda x: graphc.tanh(x) * 2.0, graphc.tensor(("N",)), target="cuda")
    x = rng.standard_normal(1000).astype(np.float32)
    call = c.executable.bind({0: x}, resident={0})
    np.testing.assert_allclose(call(), np.tanh(x) * 2.0, rtol=1e-6, atol=1e-7)
    n = len(fake.launches)
    call.relaunch()                                       # no copies, same kernels
    assert len(fake.launches) == n + 1
    call.relaunch(repeat=3)
    assert len(fake.launches) == n + 4
    with pytest.raises(ValueError, match="positive int"):
        call.relaunch(repeat=0)
    model = load(c.export(str(tmp_path / "t.gcx")))      # the artifact path, same driver
    np.testing.assert_allclose(model(x), np.tanh(x) * 2.0, rtol=1e-6, atol=1e-7)
    fake.fail_alloc_over = 1 << 12
    with pytest.raises(CudaError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        c(np.ones(100_000, np.float32))


def _cuda_header() -> str | None:
    """cuda.h of an installed CUDA toolkit (beside ptxas, or under CUDA_HOME), if any."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if PTXAS:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(PTXAS))))
    for root in filter(None, roots):
        if os.path.exists(os.path.join(root, "include", "cuda.h")):
            return os.path.join(root, "include")
    return None


def test_runtime_driver_prototypes_agree_with_cuda_h(tmp_path):
    """The runtime declares the driver calls itself (cffi ABI mode, no header at install):
    compiled after cuda.h, a prototype that differs from the driver's is a C error."""
    from graphc.compiler import find_linker
    from graphc_runtime.cuda import CDEF
    include = _cuda_header()
    if include is None:
        pytest.skip("no CUDA toolkit header (cuda.h) on this machine")
    protos = [line for line in CDEF.strip().splitlines() if not line.startswith("typedef")]
    assert sum(p.startswith("CUresult cu") for p in protos) >= 18
    src = tmp_path / "check.c"

    def compiles(text):
        src.write_text(f"#include <cuda.h>\n{text}\n")
        return subprocess.run([*find_linker(), "-fsyntax-only", "-Werror", "-I", include,
                               str(src)], capture_output=True, text=True)

    r = compiles("\n".join(protos))
    assert r.returncode == 0, r.stderr
    # the check bites: a swapped argument order is refused
    wrong = "\n".join(protos).replace("cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src",
                                      "cuMemcpyHtoD_v2(const void *src, CUdeviceptr dst")
    assert wrong != "\n".join(protos) and compiles(wrong).returncode != 0


def test_runtime_reports_ptx_the_driver_refuses(monkeypatch):
    import fake_cuda
    from graphc_runtime import CudaError
    from graphc_runtime.cuda import Driver
    fake_cuda.install(monkeypatch)
    with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_PTX.*could not compile the PTX: "
                                        "stub driver: not PTX"):
        Driver.get().load_ptx("this is not PTX")


@pytest.mark.parametrize("name", cases("fused"))
def test_launch_plan_matches_the_ptx_entries(name):
    """The runtime passes each kernel (buffers..., dims) as the plan lists them: every
    planned kernel is an .entry of the PTX with exactly that many parameters, all 64-bit
    (the stub driver checks the same at each launch)."""
    import re
    c = compile_case(name, target="cuda")
    entries = dict(re.findall(r"\.entry (\w+)\(([^)]*)\)", c.ptx))
    kernels = [b for k in c.launch["kernels"]   # (a scan loop: its body's kernels)
               for b in (k["loop"]["body"] if "loop" in k else [k])]
    assert set(entries) == {k["name"] for k in kernels}
    for k in kernels:
        params = re.findall(r"\.param \.(\w+)", entries[k["name"]])
        assert params == ["u64"] * (len(k["args"]) + 1), (k["name"], params)


def test_cuda_calls_with_changing_sizes_relaunch_with_the_right_grid(monkeypatch, rng):
    """The runtime keeps its launch plan while sizes and buffers stay the same: calls with new
    sizes (and buffers that grow) must get new grids, sizes and pointers."""
    import fake_cuda
    fake = fake_cuda.install(monkeypatch)
    c = graphc.compile(lambda x, y: graphc.softmax(x, -1) * 2.0 + y, graphc.tensor(("B", "N")),
                       graphc.tensor(("N",)), target="cuda")
    for shape in [(3, 70), (3, 70), (1, 5), (40, 300), (3, 70)]:
        x, y = sample(shape, "float32", rng), sample(shape[1:], "float32", rng)
        e = np.exp(x - x.max(-1, keepdims=True))
        n = len(fake.launches)
        np.testing.assert_allclose(c(x, y), 2 * e / e.sum(-1, keepdims=True) + y,
                                   rtol=1e-5, atol=1e-6)
        assert len(fake.launches) == n + len(c.launch["kernels"])


def test_cuda_works_from_any_thread(monkeypatch, rng):
    """The driver's context is current per thread (the stub's too): loading, calling,
    syncing and freeing from a thread other than the one that opened the driver all work."""
    import threading
    import fake_cuda
    fake_cuda.install(monkeypatch)
    first = graphc.compile(lambda v: v * 2.0, graphc.tensor(("N",)), target="cuda")
    x = rng.standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(first(x), x * 2.0)   # the driver opens in this thread
    model = mlp_for_training()
    step = nn.TrainStep(model, nn.cross_entropy, optim.SGD(0.1), graphc.tensor(("B", 6)),
                        graphc.tensor(("B",), "int64"), target="cuda")
    before = {k: v.copy() for k, v in model.named_parameters().items()}
    second = graphc.compile(lambda v: graphc.exp(v), graphc.tensor(("N",)), target="cuda")
    results, errors = [], []

    def worker():
        try:
            results.append(second(x))                  # module loaded in this thread
            step(rng.standard_normal((4, 6)).astype(np.float32), np.array([0, 1, 2, 0]))
            step.sync()
            first.executable._generic.buffers.clear()  # device memory freed here
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    np.testing.assert_allclose(results[0], np.exp(x), rtol=1e-6)
    assert any(not np.array_equal(v, before[k]) for k, v in model.named_parameters().items())
