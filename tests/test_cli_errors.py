"""Every bad use of the `graphc` command ends with one line on stderr and exit status 2: no
traceback, no hang, no silent success. A table of cases, each run in a child process with a
time limit (so a hang fails instead of blocking the suite)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

MODELS = textwrap.dedent("""
    import graphc
    def mlp(x, w):
        return graphc.softmax(graphc.relu(x @ w))
    def bad_shapes(x, w):
        return x @ w
    def raises(x):
        raise RuntimeError("the user's function failed")
""")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-errors")
    (d / "models.py").write_text(MODELS)
    (d / "syntax_error.py").write_text("def f(:\n")
    (d / "fails_on_import.py").write_text("raise ImportError('a missing dependency')\n")
    (d / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    result = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", "compile", "models:mlp",
                             "--spec", "x=B,4", "--spec", "w=4,3", "-o", "mlp.gcx"],
                            cwd=d, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    np.save(d / "x.npy", np.ones((2, 4), np.float32))
    np.save(d / "w.npy", np.ones((4, 3), np.float32))
    np.save(d / "x_int.npy", np.ones((2, 4), np.int32))
    (d / "garbage.gcx").write_bytes(b"not a zip at all" * 10)
    data = (d / "mlp.gcx").read_bytes()
    (d / "truncated.gcx").write_bytes(data[:len(data) // 2])
    _rewrite_manifest(d / "mlp.gcx", d / "bad_target.gcx", lambda m: m.update(target=5))
    _rewrite_manifest(d / "mlp.gcx", d / "bad_inputs.gcx",
                      lambda m: m["signature"].update(inputs=[["x", "float32", 7]]))
    _rewrite_manifest(d / "mlp.gcx", d / "no_kernels.gcx", lambda m: m.pop("kernels"))
    os.mkfifo(d / "fifo.gcx")
    (d / "a_folder.gcx").mkdir()
    return d


def _rewrite_manifest(src, dst, change):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)


CASES = [
    # usage
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["inspect"], "required"),
    (["inspect", "mlp.gcx", "--nope"], "unrecognized"),
    # unreadable or hostile artifact files
    (["inspect", "missing.gcx"], "no such file"),
    (["inspect", "a_folder.gcx"], "not a regular file"),
    (["inspect", "fifo.gcx"], "not a regular file"),
    (["run", "/dev/zero"], "not a regular file"),
    (["inspect", "garbage.gcx"], "not a graphc artifact"),
    (["inspect", "truncated.gcx"], ""),
    (["inspect", "bad_target.gcx"], ""),
    (["inspect", "bad_inputs.gcx"], ""),
    (["inspect", "no_kernels.gcx"], ""),
    (["run", "bad_target.gcx", "--input", "x=x.npy", "--input", "w=w.npy"], ""),
    (["bench", "bad_inputs.gcx"], ""),
    (["unpack", "garbage.gcx", "out"], "not a graphc artifact"),
    # run
    (["run", "mlp.gcx"], "missing --input"),
    (["run", "mlp.gcx", "--input", "x"], "expected NAME=FILE.npy"),
    (["run", "mlp.gcx", "--input", "y=x.npy"], "no input 'y'"),
    (["run", "mlp.gcx", "--input", "x=nothere.npy", "--input", "w=w.npy"], "nothere.npy"),
    (["run", "mlp.gcx", "--input", "x=garbage.gcx", "--input", "w=w.npy"], ""),
    (["run", "mlp.gcx", "--input", "x=x_int.npy", "--input", "w=w.npy"], "expected dtype"),
    (["run", "mlp.gcx", "--input", "x=w.npy", "--input", "w=w.npy"], "axis 1"),
    (["run", "mlp.gcx", "--input", "x=x.npy", "--input", "w=w.npy", "--output", "a.npy",
      "--output", "b.npy"], "one --output per output"),
    # bench
    (["bench", "mlp.gcx", "--batch", "0"], "must be >= 1"),
    (["bench", "mlp.gcx", "--batch", "abc"], "invalid"),
    (["bench", "mlp.gcx", "--batch", str(2 ** 40)], "smaller batch"),
    (["bench", "mlp.gcx", "--seconds", "nan"], "seconds"),
    (["bench", "mlp.gcx", "--max-calls", "-3"], "must be >= 1"),
    # compile
    (["compile", "models", "-o", "o.gcx"], "expected module:function"),
    (["compile", "nomodule:fn", "-o", "o.gcx"], "cannot import nomodule"),
    (["compile", "syntax_error:f", "-o", "o.gcx"], "SyntaxError"),
    (["compile", "fails_on_import:f", "-o", "o.gcx"], "a missing dependency"),
    (["compile", "exits_on_import:f", "-o", "o.gcx"], "cannot import"),
    (["compile", "models:nothing", "-o", "o.gcx"], "has no function"),
    (["compile", "models:mlp", "--spec", "x=B,4", "-o", "o.gcx"], "takes 2 argument"),
    (["compile", "models:mlp", "--spec", "x=B,4", "--spec", "w=4,3", "--spec", "z=1",
      "-o", "o.gcx"], "takes 2 argument"),
    (["compile", "models:mlp", "--spec", "x=B,4:float16", "--spec", "w=4,3", "-o", "o.gcx"],
     "float16"),
    (["compile", "models:mlp", "--spec", "x=B,4:", "--spec", "w=4,3", "-o", "o.gcx"], "dtype"),
    (["compile", "models:mlp", "--spec", "=B,4", "--spec", "w=4,3", "-o", "o.gcx"],
     "identifier"),
    (["compile", "models:mlp", "--spec", "x=B,,4", "--spec", "w=4,3", "-o", "o.gcx"],
     "dimension ''"),
    (["compile", "models:mlp", "--spec", "x=B,-4", "--spec", "w=4,3", "-o", "o.gcx"],
     "dimension '-4'"),
    (["compile", "models:mlp", "--spec", "x", "--spec", "w=4,3", "-o", "o.gcx"],
     "expected NAME=DIM"),
    (["compile", "models:bad_shapes", "--spec", "x=B,4", "--spec", "w=3,3", "-o", "o.gcx"],
     "matmul"),
    (["compile", "models:raises", "--spec", "x=B,4", "-o", "o.gcx"], "the user's function"),
    (["compile", "models:mlp", "--spec", "x=B,4", "--spec", "w=4,3", "-o", "o.gcx",
      "--cpu", "pentium"], "unknown CPU target"),
    (["compile", "models:mlp", "--spec", "x=B,4", "--spec", "w=4,3", "-o", "no/such/dir.gcx"],
     ""),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0]) or "(none)" for c in CASES])
def test_every_error_is_one_line_and_exit_2(folder, argv, message):
    result = subprocess.run([sys.executable, "-m", "graphc_runtime.cli", *argv], cwd=folder,
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("graphc") and "Traceback" not in err
    assert message in err, err
