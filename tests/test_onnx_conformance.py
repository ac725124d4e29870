"""ONNX's own backend node tests (onnx.backend.test, generated inside the onnx package: no
network) against graphc.onnx.Backend: each test's model imported, compiled and run on its
inputs, outputs compared by ONNX's runner with its tolerances.

What is out of scope is listed once, with a reason per entry, in onnx_scope.py; every other
node test must pass. The session prints `passed / total` for the whole node suite.
"""
from __future__ import annotations

import os
import tempfile

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed "
                                         "(pip install 'graphc[onnx]')")
pytest.importorskip("onnx.backend.test")

from onnx.backend.test import BackendTest  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

import graphc.onnx  # noqa: E402
from onnx_scope import out_of_scope  # noqa: E402

os.environ.setdefault("ONNX_HOME", tempfile.mkdtemp(prefix="onnx-home-"))
pytestmark = pytest.mark.slow   # ~1250 compiled models: CI runs it with `pytest -m slow`

NODE_TESTS = {t.name: t for t in load_model_tests(kind="node")}
IN_SCOPE = sorted(n for n, t in NODE_TESTS.items() if out_of_scope(t) is None)

backend_test = BackendTest(graphc.onnx.Backend, __name__)
for name in IN_SCOPE:
    backend_test.include(f"^{name}_cpu$")
globals().update(backend_test.enable_report().test_cases)
