"""An LSTM learns the adding problem, with sequences of varying length through one compiled
training step (no network, about a minute on 2 cores).

Each sequence is T steps of (value, marker): values uniform in [0, 1], exactly two markers
set; the target is the sum of the two marked values. Predicting the mean (1.0) scores an MSE
of 1/6 (the variance of a sum of two uniforms); the LSTM must remember the marked values over
the sequence to do better. T varies per batch (10 to 40 steps), and the one TrainStep,
compiled for a symbolic length, serves every T: the recurrence is a loop inside the compiled
code (graphc.scan), not an unrolled graph.
"""
import sys
import time

import numpy as np

import graphc
from graphc import nn, optim

STEPS, BATCH, HIDDEN, LR = 1500, 64, 32, 1e-2
BASELINE = 1.0 / 6.0


def batch(rng, n, length):
    values = rng.random((n, length)).astype(np.float32)
    marks = np.zeros((n, length), np.float32)
    for row in range(n):
        i, j = rng.choice(length, 2, replace=False)
        marks[row, [i, j]] = 1.0
    x = np.stack([values, marks], axis=-1)                 # (n, T, 2)
    y = (values * marks).sum(axis=1).astype(np.float32)    # (n,)
    return x, y


class Adder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = self.add_child("lstm", nn.LSTM(2, HIDDEN, batch_first=True, seed=1))
        self.head = self.add_child("head", nn.Linear(HIDDEN, 1, seed=2))

    def forward(self, x):
        _, (h, _) = self.lstm(x)              # h: (layers, B, hidden), the last step's state
        return graphc.reshape(self.head(h[0]), (-1,))


def main(steps: int = STEPS):
    rng = np.random.default_rng(0)
    model = Adder()
    step = nn.TrainStep(model, nn.mse, optim.Adam(LR), graphc.tensor(("B", "T", 2)),
                        graphc.tensor(("B",)))
    predict = nn.Predict(model, graphc.tensor(("B", "T", 2)))
    start = time.perf_counter()
    curve = []
    for k in range(1, steps + 1):
        length = int(rng.integers(10, 41))
        curve.append(step(*batch(rng, BATCH, length)))
        if k % 150 == 0:
            print(f"step {k:5d}  T={length:2d}  loss (mean of the last 150) "
                  f"{np.mean(curve[-150:]):.5f}")
    seconds = time.perf_counter() - start
    scores = {}
    for length in (10, 25, 40, 60):      # 60: longer than any training sequence
        x, y = batch(np.random.default_rng(length), 512, length)
        scores[length] = float(np.mean((predict(x) - y) ** 2))
    print(f"{steps} steps in {seconds:.1f} s (compile included), one compiled step for every T")
    print("test MSE by length: " + ", ".join(f"T={t}: {v:.4f}" for t, v in scores.items()) +
          f"  (predicting the mean: {BASELINE:.4f})")
    return scores


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result[40] < 0.1 * BASELINE else 1)
