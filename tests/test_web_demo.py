"""examples/web: the digits model as a wasm32 build in a static page. The page is served on
127.0.0.1 and opened in headless Chromium; its predictions for the shipped test images must
equal the Python runtime's."""
from __future__ import annotations

import functools
import html
import http.server
import importlib.util
import json
import os
import shutil
import threading

import numpy as np
import pytest

from browser import body_attributes, dump_dom_url, find_chromium
from graphc import toolchain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(ROOT, "examples", "web")

pytestmark = [
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium)"),
    pytest.mark.skipif(toolchain.zig_cc() is None, reason="wasm32 builds need ziglang"),
    pytest.mark.skipif(importlib.util.find_spec("wasmtime") is None,
                       reason="the Python side of the check runs the module with wasmtime"),
    pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                       reason="the demo trains on scikit-learn's digits"),
]


def _build(site):
    spec = importlib.util.spec_from_file_location("web_build", os.path.join(WEB, "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name in ("index.html", "app.js"):
        shutil.copy(os.path.join(WEB, name), site)
    return build.build(str(site))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_page_predictions_equal_the_python_runtime(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    built = _build(site)
    assert built["accuracy"] > 0.9
    # the wasm32 artifact under wasmtime (the Python runtime) against numpy in float64
    w1, b1, w2, b2 = [w.astype(np.float64) for w in built["weights"]]
    z = np.maximum(built["images"].astype(np.float64) @ w1 + b1, 0) @ w2 + b2
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(built["probs"], e / e.sum(1, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # the page's fetches run in real time, beside Chromium's virtual clock: a dump can
        # come before they finish on a busy machine, so it is taken again (at most 3 times)
        for _ in range(3):
            dom = dump_dom_url(f"http://127.0.0.1:{server.server_address[1]}/index.html",
                               budget_ms=20000)
            if 'data-done="yes"' in dom or "data-errors" in dom:
                break
    finally:
        server.shutdown()
        server.server_close()
    attrs = body_attributes(dom)
    assert "data-errors" not in attrs, html.unescape(attrs["data-errors"])
    assert attrs.get("data-done") == "yes", dom[-2000:]
    predictions = json.loads(html.unescape(attrs["data-predictions"]))
    probs = np.array(json.loads(html.unescape(attrs["data-probabilities"])), np.float32)
    want = built["probs"]
    assert predictions == want.argmax(1).tolist()
    np.testing.assert_allclose(probs.reshape(want.shape), want, rtol=1e-6, atol=1e-7)
    assert "24 of 24 predictions equal the Python runtime" in dom
