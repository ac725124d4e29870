"""An MLP on scikit-learn's bundled 8x8 digits (offline): >= 95% test accuracy, history plot.

With PyTorch installed, the same model (same initial weights, same batches, same
hyperparameters) is trained in PyTorch too and the two loss curves are printed side by side.
Needs scikit-learn (`pip install scikit-learn`); matplotlib for the PNG.
"""
import sys
import time

import numpy as np

from graphc import nn, optim

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError:
    sys.exit("this example needs scikit-learn: pip install scikit-learn")

EPOCHS, BATCH, LR = 30, 32, 1e-3


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def batches(n, epochs, seed=0):
    """The batch order both frameworks use: one seeded permutation per epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        yield [order[i:i + BATCH] for i in range(0, n, BATCH)]


def train_graphc(x, y):
    net = nn.Sequential(nn.Linear(64, 128, seed=1), nn.ReLU(), nn.Linear(128, 10, seed=2))
    init = {k: v.copy() for k, v in net.named_parameters().items()}
    step = nn.TrainStep(net, nn.cross_entropy, optim.Adam(LR), nn.train.data_spec(x, "x"),
                        nn.train.data_spec(y, "y"))
    curve = []
    for epoch in batches(len(x), EPOCHS):
        curve.append(np.mean([step(x[b], y[b]) for b in epoch]))
    return net, init, curve


def train_torch(x, y, init):
    import torch

    torch.set_num_threads(1)
    lin1, lin2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 10)
    with torch.no_grad():  # graphc stores weight as (in, out); torch as (out, in)
        lin1.weight.copy_(torch.tensor(init["0.weight"].T))
        lin1.bias.copy_(torch.tensor(init["0.bias"]))
        lin2.weight.copy_(torch.tensor(init["2.weight"].T))
        lin2.bias.copy_(torch.tensor(init["2.bias"]))
    model = torch.nn.Sequential(lin1, torch.nn.ReLU(), lin2)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = torch.tensor(x), torch.tensor(y)
    curve = []
    for epoch in batches(len(x), EPOCHS):
        losses = []
        for b in epoch:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append(np.mean(losses))
    return curve


def main():
    x_train, x_test, y_train, y_test = data()
    start = time.perf_counter()
    net, init, curve = train_graphc(x_train, y_train)
    seconds = time.perf_counter() - start
    model = nn.Model(net)
    model.compile(loss="cross_entropy", metrics=["accuracy"])
    acc = model.evaluate(x_test, y_test)["accuracy"]
    print(f"graphc: {EPOCHS} epochs in {seconds:.1f} s (compile included), test accuracy {acc:.3f}")

    history = nn.History()
    for v in curve:
        history.add("train loss", v)
    if history.plot("digits_history.png"):
        print("loss curve saved to digits_history.png")

    try:
        import torch  # noqa: F401
    except ImportError:
        print("(PyTorch not installed: skipping the side-by-side curves)")
    else:
        torch_curve = train_torch(x_train, y_train, init)
        print("epoch   graphc loss   torch loss   difference")
        for i, (a, b) in enumerate(zip(curve, torch_curve), 1):
            print(f"{i:5d}   {a:11.6f}   {b:10.6f}   {abs(a - b):.2e}")
    return acc


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.95 else 1)
