"""A small CNN on scikit-learn's bundled 8x8 digits (offline): >= 98% test accuracy.

Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d, twice, then Flatten -> Linear, trained with Adam
through one compiled training step (nn.TrainStep). With PyTorch installed, the same network
starts from the same weights and sees the same batches, and the two loss curves are printed
side by side. Needs scikit-learn (`pip install scikit-learn`).
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

EPOCHS, BATCH, LR = 20, 32, 2e-3


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def batches(n, epochs, seed=0):
    """The batch order both frameworks use: one seeded permutation per epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        yield [order[i:i + BATCH] for i in range(0, n, BATCH)]


def network():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, seed=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),                                    # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1, seed=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),                                    # 32 x 2 x 2
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10, seed=3))


def train_graphc(x, y, epochs=EPOCHS):
    net = network()
    init = net.state_dict()
    step = nn.TrainStep(net, nn.cross_entropy, optim.Adam(LR), nn.train.data_spec(x, "x"),
                        nn.train.data_spec(y, "y"))
    curve = []
    for epoch in batches(len(x), epochs):
        curve.append(np.mean([step(x[b], y[b]) for b in epoch]))
    return net, init, curve


def train_torch(x, y, init, epochs=EPOCHS):
    import torch

    torch.set_num_threads(1)
    T = torch.nn
    model = T.Sequential(T.Conv2d(1, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(),
                         T.MaxPool2d(2), T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32),
                         T.ReLU(), T.MaxPool2d(2), T.Flatten(), T.Linear(128, 10))
    model.load_state_dict({k: torch.tensor(v) for k, v in init.items()})
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = torch.tensor(x), torch.tensor(y)
    curve = []
    for epoch in batches(len(x), epochs):
        losses = []
        for b in epoch:
            opt.zero_grad()
            loss = T.functional.cross_entropy(model(xt[b]), yt[b])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append(np.mean(losses))
    model.eval()
    return curve, model


def main(epochs: int = EPOCHS, compare: bool = True):
    x_train, x_test, y_train, y_test = data()
    start = time.perf_counter()
    net, init, curve = train_graphc(x_train, y_train, epochs)
    seconds = time.perf_counter() - start
    model = nn.Model(net)
    model.compile(loss="cross_entropy", metrics=["accuracy"])
    acc = model.evaluate(x_test, y_test)["accuracy"]
    print(f"graphc: {epochs} epochs in {seconds:.1f} s (compile included), "
          f"test accuracy {acc:.3f}")
    try:
        import torch
    except ImportError:
        print("(PyTorch not installed: skipping the side-by-side curves)")
        return acc, curve, None
    if compare:
        start = time.perf_counter()
        torch_curve, tmodel = train_torch(x_train, y_train, init, epochs)
        tsec = time.perf_counter() - start
        with torch.no_grad():
            tacc = float((tmodel(torch.tensor(x_test)).argmax(1).numpy() == y_test).mean())
        print(f"torch:  {epochs} epochs in {tsec:.1f} s (1 thread), test accuracy {tacc:.3f}")
        print("epoch   graphc loss   torch loss   difference")
        for i, (a, b) in enumerate(zip(curve, torch_curve), 1):
            print(f"{i:5d}   {a:11.6f}   {b:10.6f}   {abs(a - b):.2e}")
        return acc, curve, torch_curve
    return acc, curve, None


if __name__ == "__main__":
    sys.exit(0 if main()[0] >= 0.98 else 1)
