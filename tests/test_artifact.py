"""Exported artifacts: identical results through the runtime alone, and a guarded load."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import graphc
import graphc_runtime
from graphc.toolchain import find_linker, tool_env
from graphc_runtime import LoadError
from helpers import BLOCK_COMPILER_IMPORTS

W = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def model(x):
    return graphc.softmax(graphc.tanh(x) @ graphc.constant(W) + 0.5)


@pytest.fixture(scope="module")
def compiled():
    return graphc.compile(model, graphc.tensor(("B", 3)))


@pytest.fixture(scope="module")
def artifact(compiled, tmp_path_factory):
    return compiled.export(str(tmp_path_factory.mktemp("gcx") / "model.gcx"))


def rewrite(src: str, dst: str, edit_manifest=None, replace=None, extra=None, fix_sums=True):
    """Copies an artifact, changing the manifest and/or members; optionally fixing checksums."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    for name, data in (replace or {}).items():
        members[name] = data
    if fix_sums:
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
        manifest["sizes"] = {n: len(d) for n, d in members.items()}
    if edit_manifest:
        edit_manifest(manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for n, d in {**members, **(extra or {})}.items():
            z.writestr(n, d)
    return dst


def test_loaded_artifact_is_bit_identical(compiled, artifact, rng):
    loaded = graphc_runtime.load(artifact)
    for batch in (1, 7, 300):
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        np.testing.assert_array_equal(loaded(x), compiled(x))
    assert loaded.signature == compiled.signature
    assert [k["name"] for k in loaded.kernels] == [k.name for k in compiled.kernels]


def test_artifact_runs_with_only_numpy_and_cffi(compiled, artifact, tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", compiled(x))
    script = BLOCK_COMPILER_IMPORTS + textwrap.dedent(f"""
        import sys, json
        import numpy as np, graphc_runtime
        m = graphc_runtime.load({artifact!r})
        out = m(np.load({str(tmp_path / "x.npy")!r}))
        assert np.array_equal(out, np.load({str(tmp_path / "expected.npy")!r}))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_portable_export_records_its_baseline_and_runs(compiled, tmp_path, rng):
    path = compiled.export(str(tmp_path / "v2.gcx"), cpu="x86-64-v2")
    loaded = graphc_runtime.load(path)
    assert loaded.manifest["target"]["cpu"] == "x86-64-v2"
    assert "avx2" not in loaded.manifest["target"]["features"]
    assert "sse4.2" in loaded.manifest["target"]["features"]
    x = rng.standard_normal((9, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), compiled(x), rtol=1e-6, atol=1e-7)


def test_loaded_model_checks_inputs(artifact):
    loaded = graphc_runtime.load(artifact)
    with pytest.raises(graphc_runtime.InputError, match="axis 1 must have size 3"):
        loaded(np.zeros((2, 4), np.float32))
    with pytest.raises(graphc_runtime.InputError, match="expected dtype float32"):
        loaded(np.zeros((2, 3), np.float64))


def test_newer_format_version_is_refused(artifact, tmp_path):
    bad = rewrite(artifact, str(tmp_path / "new.gcx"),
                  edit_manifest=lambda m: m.update(format_version=99))
    with pytest.raises(LoadError, match="format version 99 is not supported"):
        graphc_runtime.load(bad)


def test_missing_cpu_feature_is_an_error_not_sigill(artifact, tmp_path):
    def needs_future_isa(m):
        m["target"]["features"] = m["target"]["features"] + ["avx10.9"]
    bad = rewrite(artifact, str(tmp_path / "cpu.gcx"), edit_manifest=needs_future_isa)
    with pytest.raises(LoadError, match="this CPU lacks avx10.9"):
        graphc_runtime.load(bad)


def test_checksum_mismatch_is_detected(artifact, tmp_path):
    with zipfile.ZipFile(artifact) as z:
        lib = bytearray(z.read("lib/graph.so"))
    lib[len(lib) // 2] ^= 0xFF
    bad = rewrite(artifact, str(tmp_path / "sum.gcx"), replace={"lib/graph.so": bytes(lib)},
                  fix_sums=False)
    with pytest.raises(LoadError, match="checksum mismatch for lib/graph.so"):
        graphc_runtime.load(bad)


def test_truncated_file_is_detected(artifact, tmp_path):
    data = open(artifact, "rb").read()
    for cut in (10, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.gcx"
        path.write_bytes(data[:cut])
        with pytest.raises(LoadError):
            graphc_runtime.load(str(path))


def test_member_escaping_the_folder_is_refused(artifact, tmp_path):
    bad = rewrite(artifact, str(tmp_path / "slip.gcx"), extra={"../../evil.so": b"x"})
    with pytest.raises(LoadError, match="unsafe path"):
        graphc_runtime.load(bad)


def test_manifest_that_does_not_match_the_library_is_refused(artifact, tmp_path):
    def bigger_output(m):
        m["signature"]["outputs"][0][1][1] = 400  # would let the code write past the array
    bad = rewrite(artifact, str(tmp_path / "sig.gcx"), edit_manifest=bigger_output)
    with pytest.raises(LoadError, match="built for a different signature"):
        graphc_runtime.load(bad)


def test_library_without_graphc_symbols_is_refused(artifact, tmp_path):
    src = tmp_path / "other.c"
    src.write_text("int something(void) { return 1; }\n")
    so = tmp_path / "other.so"
    cc = find_linker()
    subprocess.run([*cc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True, env=tool_env(cc))
    bad = rewrite(artifact, str(tmp_path / "lib.gcx"), replace={"lib/graph.so": so.read_bytes()})
    with pytest.raises(LoadError, match="cannot load compiled library|graphc_abi_version|symbol"):
        graphc_runtime.load(bad)


@pytest.mark.parametrize("bad_input", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40])
def test_garbage_files_are_refused(bad_input, tmp_path):
    path = tmp_path / "garbage.gcx"
    path.write_bytes(bad_input)
    with pytest.raises(LoadError):
        graphc_runtime.load(str(path))
    with pytest.raises(LoadError, match="no such file"):
        graphc_runtime.load(str(tmp_path / "missing.gcx"))


def test_zip_of_a_version_zipfile_cannot_read_is_refused(artifact, tmp_path):
    data = bytearray(open(artifact, "rb").read())
    central = data.find(b"PK\x01\x02")     # the first central directory entry
    data[central + 6] = 99                  # "version needed to extract": 9.9
    path = tmp_path / "version.gcx"
    path.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="not a readable zip file"):
        graphc_runtime.load(str(path))


def test_fuzzed_artifacts_load_or_raise_load_error(artifact, tmp_path, rng):
    data = open(artifact, "rb").read()
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(150):
        mutated = bytearray(data)
        if trial % 3 == 0:
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        else:
            for _ in range(int(rng.integers(1, 8))):
                pos = int(rng.integers(0, len(mutated)))
                mutated[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"fuzz{trial}.gcx"
        path.write_bytes(bytes(mutated))
        try:
            graphc_runtime.load(str(path))
            outcomes["loaded"] += 1
        except LoadError:
            outcomes["refused"] += 1
        finally:
            os.unlink(path)
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 150
