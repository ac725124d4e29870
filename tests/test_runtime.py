"""The runtime runs compiled code with numpy + cffi only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphc
from helpers import BLOCK_COMPILER_IMPORTS


def test_runtime_needs_neither_compiler_nor_llvmlite_nor_networkx(tmp_path):
    compiled = graphc.compile(lambda x, w: graphc.softmax(x @ w), graphc.tensor(("B", 4)),
                              graphc.tensor((4, 3)))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    w = np.ones((4, 3), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "expected.npy", compiled(x, w))
    with open(tmp_path / "sig.json", "w") as f:
        json.dump(compiled.signature.to_json(), f)
    script = BLOCK_COMPILER_IMPORTS + textwrap.dedent(f"""
        import sys, json
        import numpy as np
        import graphc_runtime
        d = {str(tmp_path)!r}
        sig = graphc_runtime.Signature.from_json(json.load(open(d + "/sig.json")))
        exe = graphc_runtime.Executable({compiled.library_path!r}, sig)
        out = exe(np.load(d + "/x.npy"), np.load(d + "/w.npy"))
        assert np.array_equal(out, np.load(d + "/expected.npy")), "results differ"
        assert not any(m.split(".")[0] in ("graphc", "llvmlite", "networkx") for m in sys.modules)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_runtime_source_imports_only_numpy_and_cffi():
    import graphc_runtime

    root = os.path.dirname(graphc_runtime.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            text = open(os.path.join(root, name)).read()
            for banned in ("import graphc.", "from graphc ", "from graphc.", "llvmlite", "networkx"):
                assert banned not in text, f"{name} mentions {banned}"


def test_calls_are_thread_safe(rng):
    import concurrent.futures

    compiled = graphc.compile(lambda x: graphc.softmax(graphc.exp(x) @ graphc.transpose(x)),
                              graphc.tensor(("B", 16)))
    inputs = [rng.standard_normal((b, 16)).astype(np.float32) for b in (3, 50, 7, 64) * 4]
    expected = [compiled(x) for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(compiled, inputs))
    for r, e in zip(results, expected):
        np.testing.assert_array_equal(r, e)


def test_outputs_never_alias_inputs_or_each_other(rng):
    compiled = graphc.compile(lambda x: (x, x, graphc.reshape(x, (-1,))), graphc.tensor((2, 3)))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    a, b, c = compiled(x)
    for arr in (a, b, c):
        assert not np.shares_memory(arr, x)
    assert not np.shares_memory(a, b) and not np.shares_memory(a, c)
    np.testing.assert_array_equal(c, x.reshape(-1))


def test_bound_call_with_fixed_inputs_and_reused_outputs(rng):
    compiled = graphc.compile(lambda w, x, s: (x @ w) * s, graphc.tensor((3, 2)),
                              graphc.tensor(("B", 3)), graphc.tensor(()))
    w = rng.standard_normal((3, 2)).astype(np.float32)
    scale = np.zeros((), np.float32)
    call = compiled.executable.bind({0: w, 2: scale}, reuse_outputs=True)
    for batch, value in ((4, 1.0), (4, 2.0), (9, 3.0)):
        scale[()] = value  # fixed arrays are read at every call
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        out = call(x)
        np.testing.assert_allclose(out, (x @ w) * value, rtol=1e-5)
    with pytest.raises(graphc.InputError, match="axis 1 must have size 3"):
        call(np.zeros((2, 4), np.float32))
    with pytest.raises(graphc.InputError, match="expected dtype float32"):
        call(np.zeros((2, 3)))
    np.testing.assert_allclose(call([[1.0, 0.0, 0.0]]), w[:1] * 3.0, rtol=1e-6)  # converted
    with pytest.raises(ValueError, match="symbolic shape"):
        compiled.executable.bind({1: np.zeros((2, 3), np.float32)})


def test_repeated_call_with_the_same_arrays_still_sees_their_changes():
    f = graphc.compile(lambda x, y: x * 2.0 + y, graphc.tensor(("B", 3)), graphc.tensor((3,)))
    x = np.ones((4, 3), np.float32)
    y = np.arange(3, dtype=np.float32)
    first = f(x, y)
    np.testing.assert_array_equal(first, np.broadcast_to(2.0 + y, (4, 3)))
    x[...] = 5.0                     # new contents, same array: the same pointers, new values
    second = f(x, y)
    assert second is not first       # a new output array per call (no reuse asked for)
    np.testing.assert_array_equal(first, np.broadcast_to(2.0 + y, (4, 3)))
    np.testing.assert_array_equal(second, np.broadcast_to(10.0 + y, (4, 3)))
    x.shape = (2, 6)                 # reshaped in place: checked again, refused
    with pytest.raises(graphc.InputError):
        f(x, y)
    x.shape = (4, 3)
    y.dtype = np.int32               # re-typed in place: checked again, refused
    with pytest.raises(graphc.InputError):
        f(x, y)
    y.dtype = np.float32
    np.testing.assert_array_equal(f(x[::2], y), 10.0 + np.broadcast_to(y, (2, 3)))


def test_big_outputs_reuse_memory_only_once_the_caller_dropped_them():
    n = 1 << 19  # 2 MiB of float32: pooled
    f = graphc.compile(lambda x: x + 1.0, graphc.tensor((n,)))
    x = np.zeros(n, np.float32)
    first = f(x)
    view = first[10:20]
    del first
    x += 1.0
    second = f(x)                      # `view` still holds the first buffer: new memory
    assert not np.shares_memory(view, second)
    np.testing.assert_array_equal(view, 1.0)
    np.testing.assert_array_equal(second, 2.0)
    address = second.__array_interface__["data"][0]
    del view, second
    third = f(x)                       # everything dropped: the same memory, no page faults
    assert third.__array_interface__["data"][0] in _pool_addresses(f)
    assert address in _pool_addresses(f)
    np.testing.assert_array_equal(third, 2.0)
    kept = [f(x) for _ in range(6)]    # held by the caller: all distinct, all intact
    for k, a in enumerate(kept):
        a += k
    for k, a in enumerate(kept):
        np.testing.assert_array_equal(a, 2.0 + k)


def _pool_addresses(f):
    return {b.__array_interface__["data"][0] for b in f.executable._outputs.buffers}


def test_thread_count_setting_is_validated_and_applied():
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError):
            graphc.set_num_threads(bad)
    f = graphc.compile(lambda x: x * 2.0, graphc.tensor((4,)))
    before = graphc.get_num_threads()
    try:
        graphc.set_num_threads(3)
        assert graphc.get_num_threads() == 3
        assert f.executable._lib.graphc_get_num_threads() == 3   # the library's own pool
    finally:
        graphc.set_num_threads(before)


def test_environment_variable_and_fork(tmp_path):
    # GRAPHC_NUM_THREADS sizes the pool; a forked child (its parent's workers do not exist
    # there) starts its own and still computes big kernels correctly
    script = textwrap.dedent("""
        import os, numpy as np, graphc
        f = graphc.compile(lambda a, b: a @ b + 1.0, graphc.tensor((300, 300)),
                           graphc.tensor((300, 300)))
        a = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
        want = a.astype(np.float64) @ a + 1.0
        assert f.executable._lib.graphc_get_num_threads() == 3
        assert np.allclose(f(a, a), want, rtol=1e-4, atol=1e-3)   # starts the workers
        pid = os.fork()
        if pid == 0:
            ok = np.allclose(f(a, a), want, rtol=1e-4, atol=1e-3)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        print("ok")
    """)
    env = dict(os.environ, GRAPHC_NUM_THREADS="3", GRAPHC_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
