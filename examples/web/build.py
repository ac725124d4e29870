"""Builds the browser demo's model: an MLP trained with graphc on scikit-learn's 8x8 digits,
compiled for target="wasm32" and exported, then laid out as plain files the page fetches.

    python examples/web/build.py [SITE_DIR]        # default: examples/web
    python -m http.server -d examples/web -b 127.0.0.1 8000   # then open http://127.0.0.1:8000

SITE_DIR/model/ gets graph.wasm, weights/<k>.bin (raw little-endian arrays) and model.json
(the buffer layout); SITE_DIR/test_images.json gets 24 held-out digits with their labels and
the Python runtime's probabilities for them, which the page compares its own against.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile

import numpy as np

import graphc
import graphc_runtime
from graphc import nn, optim

HERE = os.path.dirname(os.path.abspath(__file__))


def train():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    net = nn.Sequential(nn.Linear(64, 64, seed=1), nn.ReLU(), nn.Linear(64, 10, seed=2))
    step = nn.TrainStep(net, nn.cross_entropy, optim.Adam(3e-3), graphc.tensor(("B", 64)),
                        graphc.tensor(("B",), "int64"))
    order = np.random.default_rng(0).permutation(1400)
    for _ in range(10):
        for i in range(0, 1400, 50):
            b = order[i:i + 50]
            step(x[b], y[b])
    return net, x[1400:], y[1400:]


def build(site: str) -> dict:
    net, x_test, y_test = train()
    w1, b1, w2, b2 = [a.copy() for a in net.named_parameters().values()]

    def classify(x):
        return graphc.softmax(graphc.relu(x @ w1 + b1) @ w2 + b2, -1)
    compiled = graphc.compile(classify, graphc.tensor(("B", 64)), target="wasm32")
    model_dir = os.path.join(site, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(os.path.join(model_dir, "weights"))
    artifact = compiled.export(os.path.join(model_dir, "digits.gcx"))
    with zipfile.ZipFile(artifact) as z:
        manifest = json.loads(z.read("manifest.json"))
        with open(os.path.join(model_dir, "graph.wasm"), "wb") as f:
            f.write(z.read(manifest["library"]))
    constants = []
    for k, value in enumerate(compiled.plan.constants):
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"))
        name = f"weights/{k}.bin"
        data.tofile(os.path.join(model_dir, name))
        constants.append({"file": name, "bytes": int(data.nbytes)})
    sig = compiled.signature
    assert len(sig.inputs) == 1 and len(sig.outputs) == 1   # the page's buffer table
    layout = {"symbols": list(sig.symbols), "constants": constants, "features": 64,
              "classes": 10}
    with open(os.path.join(model_dir, "model.json"), "w") as f:
        json.dump(layout, f, indent=1)
    # what the Python runtime says for the shipped test images (the page checks against it)
    pick = np.arange(24) * 17 % len(x_test)
    images = np.ascontiguousarray(x_test[pick])
    probs = graphc_runtime.load(artifact)(images)
    with open(os.path.join(site, "test_images.json"), "w") as f:
        json.dump({"images": images.tolist(), "labels": y_test[pick].tolist(),
                   "python_probabilities": probs.tolist()}, f)
    accuracy = float((graphc_runtime.load(artifact)(x_test).argmax(1) == y_test).mean())
    print(f"built {model_dir}: graph.wasm, {len(constants)} weight files; test accuracy "
          f"{accuracy:.3f}")
    return {"artifact": artifact, "images": images, "probs": probs, "accuracy": accuracy,
            "weights": (w1, b1, w2, b2)}


if __name__ == "__main__":
    site = sys.argv[1] if len(sys.argv) > 1 else HERE
    if os.path.abspath(site) != HERE:
        os.makedirs(site, exist_ok=True)
        for name in ("index.html", "app.js"):
            shutil.copy(os.path.join(HERE, name), site)
    build(site)
