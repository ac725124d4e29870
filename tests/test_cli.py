"""The `graphc` command line: one clear line and a non-zero exit on errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphc
import graphc_runtime
from graphc import nn, optim
from graphc_runtime.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "models.py").write_text(textwrap.dedent("""
        import graphc
        def mlp(x, w):
            return graphc.softmax(graphc.relu(x @ w))
    """))
    out = folder / "mlp.gcx"
    result = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "compile", "models:mlp",
                             "--spec", "x=B,4", "--spec", "w=4,3:float32", "-o", str(out)],
                            cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_inspect_shows_signature_target_kernels_and_sizes(artifact, capsys):
    assert cli(["inspect", str(artifact)]) == 0
    text = capsys.readouterr().out
    for piece in ("x: float32[B, 4]", "w: float32[4, 3]", "0: float32[B, 3]", "k0_matmul",
                  "rows", "code:", "weights:", "target: x86_64"):
        assert piece in text


def test_run_writes_outputs_matching_the_runtime(artifact, tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    w = np.eye(4, 3, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    assert cli(["run", str(artifact), "--input", f"x={tmp_path / 'x.npy'}",
                "--input", f"w={tmp_path / 'w.npy'}", "--output", str(tmp_path / "o.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"),
                                  graphc_runtime.load(str(artifact))(x, w))


def test_bench_prints_throughput(artifact, capsys):
    assert cli(["bench", str(artifact), "--batch", "64", "--seconds", "0.1"]) == 0
    assert "samples/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["run", "missing.gcx"], "no such file"),
    (["inspect", __file__], "not a graphc artifact"),
    (["run", "ARTIFACT", "--input", "y=1.npy"], "no input 'y'"),
    (["run", "ARTIFACT", "--input", "x"], "expected NAME=FILE.npy"),
    (["compile", "nomodule:fn", "-o", "x.gcx"], "cannot import nomodule"),
])
def test_errors_are_one_line_and_exit_2(argv, message, artifact, capsys):
    argv = [str(artifact) if a == "ARTIFACT" else a for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "inspect" in result.stdout


def test_trained_model_exports_with_weights_bound(tmp_path, rng):
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x.sum(1) > 0).astype(np.int64)
    model = nn.Model(nn.Sequential(nn.Linear(3, 8, seed=0), nn.ReLU(), nn.Linear(8, 2, seed=1)))
    model.compile(loss="cross_entropy", optimizer=optim.Adam(0.05))
    model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    path = model.export(str(tmp_path / "m.gcx"))
    loaded = graphc_runtime.load(path)
    assert [n for n, _, _ in loaded.signature.inputs] == ["x"]
    assert len(loaded.manifest["constants"]) == 4  # two weights, two biases
    np.testing.assert_array_equal(loaded(x), model.predict(x))
    with pytest.raises(graphc.GraphcError, match="example_input"):
        nn.Model(nn.Sequential(nn.Linear(3, 1))).export(str(tmp_path / "n.gcx"))


def test_export_and_serve_example():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "export_and_serve.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical to the training process: True" in result.stdout
