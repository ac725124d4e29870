"""Backends behind one interface, the cache they share, and the CUDA launch-plan contract."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

import graphc
from graphc import cache
from graphc.backends import BACKENDS, Backend
from graphc.compiler import Compiled, CudaCompiled
from graphc_runtime import LaunchPlan, read_manifest


@dataclass(frozen=True)
class NumpyTarget:
    def key(self) -> str:
        return "reference"


class NumpyBackend(Backend):
    """A whole target in a few lines: "builds" the graph's listing, runs graphc.evaluate."""

    name = "numpy"
    texts = {"listing": "graph.txt"}

    def options(self, cpu=None, arch=None, tf32=False):
        return NumpyTarget()

    def build(self, graph, signature, plan, options, folder):
        with open(os.path.join(folder, "graph.txt"), "w") as f:
            f.write(str(graph))

    def load(self, compiled):
        return lambda *arrays: graphc.evaluate(compiled.graph, *arrays)

    def artifact(self, compiled):
        return ({"target": {"kind": "numpy"}, "listing": "graph.txt"},
                {"graph.txt": compiled.entry.read("graph.txt").encode()})


@pytest.fixture
def numpy_target(monkeypatch):
    monkeypatch.setitem(BACKENDS, "numpy", NumpyBackend())


def test_a_backend_in_the_table_is_picked_by_target(numpy_target, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    c = graphc.compile(lambda x: graphc.tanh(x) * 2.0, graphc.tensor(("N",)), target="numpy")
    assert type(c) is Compiled and c.target == "numpy" and not c.cache_hit
    x = np.linspace(-1, 1, 5).astype(np.float32)
    np.testing.assert_allclose(c(x), np.tanh(x) * 2.0, rtol=1e-6)
    assert "tanh" in c.backend.inspect(c, "listing")
    again = graphc.compile(lambda x: graphc.tanh(x) * 2.0, graphc.tensor(("N",)), target="numpy")
    assert again.cache_hit and again.key == c.key   # the shared cache serves it too
    with pytest.raises(AttributeError, match="target='numpy' build has no asm"):
        c.asm


def test_unknown_target_lists_the_table(numpy_target):
    with pytest.raises(graphc.CompileError, match="unknown target 'tpu'.*'numpy'"):
        graphc.compile(lambda x: x, graphc.tensor((2,)), target="tpu")


def test_export_writes_the_members_the_backend_names(numpy_target, tmp_path):
    c = graphc.compile(lambda x: x + 1.0, graphc.tensor((3,)), target="numpy")
    manifest, members = read_manifest(c.export(str(tmp_path / "m.gcx")))
    assert manifest["target"] == {"kind": "numpy"} and manifest["listing"] == "graph.txt"
    assert members["graph.txt"].decode() == c.backend.inspect(c, "listing")
    assert "add" in members["graph.txt"].decode()
    assert "lib/graph.so" not in members


def test_cpu_export_members_come_from_the_cpu_backend(tmp_path, monkeypatch):
    cpu = BACKENDS["cpu"]
    original = cpu.artifact

    def with_note(compiled):
        entries, members = original(compiled)
        return entries, {**members, "notes/hello.txt": b"hi"}
    monkeypatch.setattr(cpu, "artifact", with_note)
    c = graphc.compile(lambda x: x * 3.0, graphc.tensor((4,)))
    manifest, members = read_manifest(c.export(str(tmp_path / "c.gcx")))
    assert members["notes/hello.txt"] == b"hi" and "lib/graph.so" in members
    assert manifest["library"] == "lib/graph.so" and manifest["target"]["kind"] == "cpu"


def test_one_compiled_type_for_every_target():
    assert CudaCompiled is Compiled
    c = graphc.compile(lambda x: x * 2.0, graphc.tensor((4,)), target="cuda", arch="sm_90")
    assert type(c) is Compiled and c.target == "cuda" and c.arch == "sm_90" and not c.tf32
    assert ".entry" in c.ptx and "target triple" in c.llvm_ir
    with pytest.raises(AttributeError, match="no asm"):
        c.asm
    cpu = graphc.compile(lambda x: x * 2.0, graphc.tensor((4,)))
    assert cpu.target == "cpu" and not hasattr(cpu, "ptx") and not hasattr(cpu, "arch")


# ------------------------------------------------------------------------------ the cache

def _racing_builds(key: str, n: int) -> list:
    """n threads build `key` at once (each build waits until all are inside)."""
    inside = threading.Barrier(n, timeout=30)
    results, errors = [None] * n, []

    def build(folder, who):
        inside.wait()
        with open(os.path.join(folder, "who"), "w") as f:
            f.write(str(who))
        with open(os.path.join(folder, "payload"), "w") as f:
            f.write("x" * 100_000)

    def worker(who):
        try:
            results[who] = cache.fetch(key, lambda folder: build(folder, who))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_racing_builds_publish_one_complete_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    entries = _racing_builds("k" * 32, 4)
    assert len({e.directory for e in entries}) == 1
    folder = entries[0].directory
    assert sorted(os.listdir(folder)) == ["done", "payload", "who"]
    assert os.path.getsize(os.path.join(folder, "payload")) == 100_000
    assert os.listdir(tmp_path) == ["k" * 32]    # no build folder left behind
    assert cache.lookup("k" * 32).hit


def test_an_interrupted_build_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / "half-written").write_text("?")   # no `done` marker
    assert cache.lookup("abc") is None
    entry = cache.fetch("abc", lambda folder: open(os.path.join(folder, "f"), "w").close())
    assert not entry.hit and sorted(os.listdir(entry.directory)) == ["done", "f"]


def test_processes_compiling_the_same_graph_share_one_entry(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, graphc
        f = graphc.compile(lambda x: graphc.exp(x) + 0.5, graphc.tensor((64,)))
        assert np.allclose(f(np.zeros(64, np.float32)), 1.5)
    """)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and "support" in names, names   # one graph entry, no leftovers
    (entry,) = [n for n in names if n != "support"]
    assert os.path.exists(tmp_path / entry / "done") and os.path.exists(tmp_path / entry / "graph.so")


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch, use_cache):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def build(folder):
        open(os.path.join(folder, "graph.o"), "w").close()
        raise graphc.CompileError("the linker failed")
    with pytest.raises(graphc.CompileError, match="linker"):
        cache.fetch("f" * 32, build, cache=use_cache)
    assert os.listdir(tmp_path / "cache") == [] and sorted(os.listdir(tmp_path)) == ["cache"]


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_cache_false_leaves_no_entry(tmp_path, monkeypatch, target):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    c = graphc.compile(lambda x: x * 2.0, graphc.tensor((8,)), target=target, cache=False)
    assert not c.cache_hit and c.llvm_ir
    if target == "cpu":
        np.testing.assert_array_equal(c(np.ones(8, np.float32)), np.full(8, 2.0, np.float32))
    assert [n for n in os.listdir(tmp_path) if n != "support"] == []
    private = c.cache_dir
    assert os.path.exists(private) and not private.startswith(str(tmp_path))
    del c
    import gc
    gc.collect()
    assert not os.path.exists(private)   # removed with its result


# ------------------------------------------------------------------------ the launch plan

def test_launch_plan_round_trips_through_json():
    c = graphc.compile(lambda x, w: graphc.softmax(x @ w, -1), graphc.tensor(("B", 64)),
                       graphc.tensor((64, 32)), target="cuda", tf32=True)
    plan = LaunchPlan.from_json(c.launch)
    assert plan.to_json() == c.launch
    assert LaunchPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert plan.tf32 and plan.arch == "sm_80" and plan.symbols == ("B",)
    assert any(k.blocks for k in plan.kernels)          # the matmul's fixed grid survives
    assert {k.name for k in plan.kernels} == {k.name for k in c.kernels}


def test_launch_plan_sizes_have_the_signature_shape():
    c = graphc.compile(lambda x: x * 2.0, graphc.tensor(("N",)), target="cuda")
    (kernel,) = c.launch["kernels"]
    (out_shape,) = [shape for _, shape in c.signature.outputs]
    assert kernel["trips"] == [1, ["N"]] == list(out_shape[0])   # one size shape everywhere
    plan = LaunchPlan.from_json(c.launch)
    per_block = plan.block * plan.kernels[0].per_thread
    assert plan.kernels[0].grid({"N": 10_000}, plan.block) == -(-10_000 // per_block)
    assert plan.kernels[0].grid({"N": 0}, plan.block) == 0


def test_launch_plan_reads_the_older_size_shape_and_refuses_nonsense():
    old = {"block": 256, "symbols": ["N"], "slots": [[{"coef": 4, "syms": ["N"]}]],
           "kernels": [{"name": "k0", "args": [["input", 0], ["output", 0]],
                        "trips": {"coef": 1, "syms": ["N"]}, "per_thread": 4}]}
    plan = LaunchPlan.from_json(old)
    assert plan.kernels[0].trips == (1, ("N",)) and plan.slot_bytes({"N": 3}) == [12]
    with pytest.raises(ValueError, match="unknown buffer space"):
        LaunchPlan.from_json({**old, "kernels": [{**old["kernels"][0], "args": [["heap", 0]]}]})
    with pytest.raises(ValueError, match="size"):
        LaunchPlan.from_json({**old, "slots": [["big"]]})


def test_a_cuda_artifact_carries_the_launch_plan_json(tmp_path):
    c = graphc.compile(lambda x: graphc.exp(x), graphc.tensor(("N",)), target="cuda")
    with zipfile.ZipFile(c.export(str(tmp_path / "g.gcx"))) as z:
        launch = json.loads(z.read("kernels/launch.json"))
    assert launch == c.launch and LaunchPlan.from_json(launch).kernels[0].name == c.kernels[0].name
