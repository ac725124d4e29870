"""A model runs from C: the artifact's header and library, built with the system C compiler."""
from __future__ import annotations

import os
import subprocess

import numpy as np

import graphc
from graphc.toolchain import find_linker, tool_env
from graphc_runtime.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_c_program_matches_python(tmp_path, rng):
    w1 = rng.standard_normal((5, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)

    def mlp(x):
        return graphc.softmax(graphc.relu(x @ w1) @ w2)

    compiled = graphc.compile(mlp, graphc.tensor(("B", 5)))
    artifact = compiled.export(str(tmp_path / "mlp.gcx"))
    assert cli(["unpack", artifact, str(tmp_path / "model")]) == 0
    exe = tmp_path / "run_model"
    cc = find_linker()   # the system's C compiler, or zig cc
    subprocess.run([*cc, "-O2", "-I", str(tmp_path / "model"),
                    os.path.join(ROOT, "examples", "c", "run_model.c"), "-ldl", "-o", str(exe)],
                   check=True, env=tool_env(cc))
    for batch in (1, 4, 33):
        x = rng.standard_normal((batch, 5)).astype(np.float32)
        x.tofile(tmp_path / "x.bin")
        result = subprocess.run([str(exe), str(tmp_path / "model"), str(batch),
                                 str(tmp_path / "x.bin")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        from_c = np.array(result.stdout.split(), np.float32).reshape(batch, 3)
        np.testing.assert_array_equal(from_c, compiled(x))
