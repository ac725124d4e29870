"""Small random float32 programs over a symbolic batch, and their numpy twin: the random-graph
checks of the cross targets (tests/test_wasm.py, tests/test_aarch64.py) draw from these."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

SHAPES = [("B", 11), (11,), ("B", 1), (1, 11)]


@st.composite
def programs(draw):
    shapes = [("B", 11)] + [draw(st.sampled_from(SHAPES)) for _ in range(draw(st.integers(0, 2)))]
    steps = draw(st.lists(st.tuples(st.sampled_from(["tanh", "exp", "mul", "add", "div", "max",
                                                     "sum", "softmax"]),
                                    st.integers(0, 9), st.integers(0, 9)),
                          min_size=1, max_size=6))
    return shapes, steps


def run_program(lib, shapes, steps, inputs):
    vals = list(inputs)
    for op, i, j in steps:
        x, y = vals[i % len(vals)], vals[j % len(vals)]
        out = {"tanh": lambda: lib.tanh(x), "exp": lambda: lib.exp(lib.tanh(x)),
               "mul": lambda: x * y, "add": lambda: x + y,
               "div": lambda: x / (lib.abs(y) + 1.0), "max": lambda: lib.maximum(x, y),
               "sum": lambda: lib.sum(x, -1, keepdims=True) * 0.1,
               "softmax": lambda: lib.exp(x - lib.max(x, -1, keepdims=True))}[op]()
        vals.append(out)
    return vals[-1] + vals[0] * 0.0


class NumpyOps:
    tanh, exp, abs, maximum = np.tanh, np.exp, np.abs, np.maximum

    @staticmethod
    def sum(x, axis, keepdims):
        return np.sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x, axis, keepdims):
        return np.max(x, axis=axis, keepdims=keepdims)
