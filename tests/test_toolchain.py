"""No system toolchain needed: with cc, gcc and clang hidden from PATH, graphc compiles its
thread pool and links with `zig cc` from the ziglang package, and the result is right."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from graphc import toolchain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_zig = pytest.mark.skipif(toolchain.zig_cc() is None,
                               reason="the ziglang package is not installed (pip install ziglang)")

CHILD = textwrap.dedent("""
    import json, shutil, sys
    import numpy as np
    import graphc
    from graphc import toolchain
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 200)).astype(np.float32)
    w = rng.standard_normal((200, 700)).astype(np.float32)
    f = graphc.compile(lambda x, w: graphc.softmax(graphc.relu(x @ w), -1),
                       graphc.tensor(("B", 200)), graphc.tensor((200, 700)))
    graphc.set_num_threads(2)             # the pool (threads.c, compiled by the same tool)
    out = f(x, w)
    print(json.dumps({"linker": toolchain.find_linker(), "out": out[:3, :5].tolist(),
                      "rows": out.sum(-1).tolist()[:4],
                      "which": [shutil.which(t) for t in ("cc", "gcc", "clang")]}))
""")


@needs_zig
def test_compiles_and_runs_with_no_system_compiler(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "GRAPHC_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "runtime")])}
    env.pop("GRAPHC_LINKER", None)
    env.pop("ZIG_GLOBAL_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["which"] == [None, None, None]
    assert toolchain.is_zig(got["linker"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 200))
    w = rng.standard_normal((200, 700))
    z = np.maximum(x.astype(np.float32).astype(np.float64) @ w.astype(np.float32), 0)
    e = np.exp(z - z.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["out"], ref[:3, :5], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got["rows"], 1.0, rtol=1e-5)
    # zig's build products stayed inside graphc's cache
    assert (tmp_path / "cache" / "zig").is_dir()
    support = os.listdir(tmp_path / "cache" / "support")
    assert any(name.startswith("threads-") for name in support)


@needs_zig
def test_graphc_linker_zig_forces_it(monkeypatch, tmp_path, rng):
    import graphc
    monkeypatch.setenv("GRAPHC_LINKER", "zig")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    assert toolchain.is_zig(toolchain.find_linker())
    a = rng.standard_normal((64, 48)).astype(np.float32)
    f = graphc.compile(lambda a: graphc.tanh(a) @ a.T, graphc.tensor(a.shape), cache=False)
    t = np.tanh(a.astype(np.float64))
    np.testing.assert_allclose(f(a), t @ a.T, rtol=1e-5, atol=1e-5)


def test_system_compiler_comes_first(monkeypatch):
    monkeypatch.delenv("GRAPHC_LINKER", raising=False)
    monkeypatch.setattr(toolchain.shutil, "which",
                        lambda tool: f"/usr/bin/{tool}" if tool == "gcc" else None)
    assert toolchain.find_linker() == ["gcc"]
    monkeypatch.setenv("GRAPHC_LINKER", "gcc -fuse-ld=bfd")
    assert toolchain.find_linker() == ["gcc", "-fuse-ld=bfd"]
