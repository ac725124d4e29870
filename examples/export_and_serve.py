"""Train, export one .gcx file, and serve it from a new process that has only the runtime.

Trains the digits MLP (XOR when scikit-learn is absent), exports it with its weights bound,
then starts a fresh Python in which importing graphc, llvmlite or networkx fails, loads the
artifact with graphc_runtime and checks that its predictions are identical.
"""
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

from graphc import nn, optim


def train():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        y = np.array([[0], [1], [1], [0]], np.float32)
        model = nn.Model(nn.Sequential(nn.Linear(2, 4, seed=1), nn.Tanh(),
                                       nn.Linear(4, 1, seed=2), nn.Sigmoid()))
        model.compile(loss="mse", optimizer=optim.SGD(0.5, momentum=0.9))
        model.fit(x, y, epochs=500, batch_size=4, verbose=0)
        return "XOR", model, x
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    model = nn.Model(nn.Sequential(nn.Linear(64, 128, seed=1), nn.ReLU(),
                                   nn.Linear(128, 10, seed=2)))
    model.compile(loss="cross_entropy", optimizer=optim.Adam(1e-3), metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=20, batch_size=32, verbose=0)
    print(f"held-out accuracy: {model.evaluate(x[1400:], y[1400:])['accuracy']:.3f}")
    return "digits", model, x[1400:]


SERVE = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("graphc", "llvmlite", "networkx"):
            raise ImportError("not available in this process: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import graphc_runtime
model = graphc_runtime.load(sys.argv[1])
np.save(sys.argv[3], model(np.load(sys.argv[2])))
print("served by", model)
"""


def main():
    name, model, x = train()
    folder = tempfile.mkdtemp()
    path = model.export(os.path.join(folder, "model.gcx"), example_input=x)
    print(f"trained {name}; exported {path} ({os.path.getsize(path) / 1024:.1f} KiB)")
    np.save(os.path.join(folder, "x.npy"), x)
    out = os.path.join(folder, "served.npy")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVE), path,
                             os.path.join(folder, "x.npy"), out], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr)
    print(result.stdout.strip())
    served, local = np.load(out), model.predict(x)
    same = np.array_equal(served, local)
    print(f"predictions for {len(x)} samples identical to the training process: {same}")
    print("first row:", np.round(served[0], 3).tolist())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
