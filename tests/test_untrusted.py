"""Crafted artifacts: whatever a manifest field holds, and however big a member claims or
turns out to be, load() raises LoadError (or loads a model that still checks its inputs);
it never crashes, hangs or allocates what the file does not hold.

GRAPHC_FUZZ=N runs N structured mutations (default 200, what CI runs); e.g.
`GRAPHC_FUZZ=5000 python -m pytest tests/test_untrusted.py` for a longer sweep by hand.
"""
import copy
import hashlib
import io
import json
import os
import resource
import time
import zipfile

import numpy as np
import pytest

import graphc
import graphc_runtime
from graphc_runtime import LoadError

FUZZ = int(os.environ.get("GRAPHC_FUZZ", "200"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    scale = np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(3, 4)   # a weights member
    f = graphc.compile(lambda p, x: {"y": graphc.tanh(x @ (p["w"] * graphc.constant(scale))
                                                      + p["b"])},
                       {"w": graphc.tensor((3, 4)), "b": graphc.tensor((4,))},
                       graphc.tensor(("B", 3)))
    path = tmp_path_factory.mktemp("untrusted") / "model.gcx"
    f.export(str(path))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    return path, json.loads(members.pop("manifest.json")), members


def write(path, manifest, members, fix=True):
    if fix:   # keep checksums and sizes consistent, so the fields themselves are tested
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
        manifest["sizes"] = {n: len(d) for n, d in members.items()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for n, d in members.items():
            z.writestr(n, d)
    return str(path)


ODD_VALUES = [None, True, -1, 0, 2 ** 63, 1e308, float("nan"), "", "x" * 300, [], [[]], {},
              {"a": 1}, [1, "a", None], "../../etc/passwd", "/abs", "*", [[1, ["Q"]]]]


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    out = [(prefix, value)]
    stack = [(prefix, value)]
    while stack:
        path, v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, child in items:
            out.append((path + (k,), child))
            stack.append((path + (k,), child))
    return out


def _set(doc, path, value):
    target = doc
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        if isinstance(target, dict):
            del target[path[-1]]
        else:
            target.pop(path[-1])
    else:
        target[path[-1]] = value


_DELETE = object()


def test_structured_manifest_mutations_load_or_raise_load_error(artifact, tmp_path, rng):
    path, manifest, members = artifact
    places = [p for p, _ in _paths(manifest) if p and p[0] not in ("files", "sizes")]
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(FUZZ):
        doc = copy.deepcopy(manifest)
        for _ in range(int(rng.integers(1, 4))):
            live = [p for p in places if _exists(doc, p)]
            where = live[int(rng.integers(len(live)))]
            choice = int(rng.integers(len(ODD_VALUES) + 1))
            _set(doc, where, _DELETE if choice == len(ODD_VALUES) else ODD_VALUES[choice])
        file = write(tmp_path / f"m{trial}.gcx", doc, dict(members))
        try:
            model = graphc_runtime.load(file)
        except LoadError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            _still_checks_inputs(model)
        finally:
            os.unlink(file)
    assert outcomes["refused"] > FUZZ // 2 and sum(outcomes.values()) == FUZZ


def _exists(doc, path):
    target = doc
    for k in path:
        if isinstance(target, dict) and k in target:
            target = target[k]
        elif isinstance(target, list) and isinstance(k, int) and k < len(target):
            target = target[k]
        else:
            return False
    return True


def _still_checks_inputs(model):
    with pytest.raises(graphc_runtime.InputError):
        model({"w": np.zeros((2, 2), np.float32), "b": np.zeros(4, np.float32)},
              np.zeros((1, 3), np.float32))


def test_a_member_that_inflates_beyond_its_recorded_size_is_refused_before_reading(
        artifact, tmp_path):
    """A 1 MiB artifact whose weights member inflates to 512 MiB: refused from the sizes in
    the manifest, without that memory ever being used."""
    path, manifest, members = artifact
    bomb = dict(members)
    name = next(n for n in members if n.startswith("weights/"))
    doc = copy.deepcopy(manifest)
    write(tmp_path / "ok.gcx", doc, dict(members))         # sizes recorded for the real member
    doc = json.loads(json.dumps(doc))
    bomb[name] = b"\0" * (512 << 20)
    file = tmp_path / "bomb.gcx"
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(doc))
        for n, d in bomb.items():
            z.writestr(n, d)
    del bomb
    assert os.path.getsize(file) < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(LoadError, match="holds 536870912 bytes, the manifest says"):
        graphc_runtime.load(str(file))
    assert time.monotonic() - start < 5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 << 10     # far less than the member's 512 MiB


def test_weights_whose_header_claims_a_huge_shape_are_refused(artifact, tmp_path):
    path, manifest, members = artifact
    name = next(n for n in members if n.startswith("weights/"))
    doc = copy.deepcopy(manifest)
    spec = next(c for c in doc["constants"] if c["file"] == name)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2 ** 40, 2 ** 20)})
    crafted = dict(members)
    crafted[name] = header.getvalue() + b"\0" * 64
    spec["shape"] = [2 ** 40, 2 ** 20]
    with pytest.raises(LoadError, match="bytes of data"):
        graphc_runtime.load(write(tmp_path / "huge.gcx", doc, crafted))


def test_torch_tensors_follow_numpy_dtype_rules():
    torch = pytest.importorskip("torch")
    f = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)))
    np.testing.assert_array_equal(f(torch.arange(3, dtype=torch.float32)), [0.0, 2.0, 4.0])
    with pytest.raises(graphc.InputError, match="expected dtype float32, got int64"):
        f(torch.arange(3))
    with pytest.raises(graphc.InputError, match="detach"):
        f(torch.ones(3, requires_grad=True))
