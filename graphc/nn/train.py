"""Compiled training: forward + backward + optimizer update in one native call.

Parameters, optimizer slots and layer state are numpy arrays that the compiled step updates in
place (graph outputs aliased to inputs), so nothing is copied in or out per step; the arrays
are always readable. If a step's loss is not finite, the step writes back the old values:
parameters are never left half-updated.
"""
from __future__ import annotations

import numpy as np

from .. import api
from ..autodiff import value_and_grad
from ..compiler import compile as compile_graph
from ..errors import GraphcError
from ..optim import Optimizer
from ..trace import TensorSpec, tensor
from .modules import Module, bind


def data_spec(array: np.ndarray, name: str) -> TensorSpec:
    """A batch spec from example data: the first axis is the symbolic batch size B."""
    return tensor(("B",) + tuple(array.shape[1:]), array.dtype, name)


def as_data(array, name: str, float_ok: bool = True) -> np.ndarray:
    """float64 features become float32 (the models' dtype); integer labels stay integers."""
    a = np.asarray(array)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    if a.dtype.kind in "iub":
        return np.ascontiguousarray(a, dtype=np.int64)
    raise GraphcError(f"{name}: cannot train on an array of dtype {a.dtype}")


def all_finite(values) -> "api.Tensor":
    """A 0-d bool: every element of every value is finite. One sum per value tells (it is inf
    or NaN when any element is), taken straight from the value so that the reduction reads
    it where it lies instead of a product written beside it; a sum that overflows the
    value's float range (values near 1e38) counts as non-finite too."""
    total = None
    for v in values:
        s = api.astype(api.sum(v) if v.ndim else v, "float64") * 0.0
        total = s if total is None else total + s
    return api.equal(total, 0.0)


def check_labels(y: np.ndarray, n_classes) -> None:
    """Integer labels must be class indices below the model's output width: out of range,
    one_hot would give a row of zeros and a silently wrong loss."""
    if y.dtype.kind in "iu" and y.size and isinstance(n_classes, int):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= n_classes:
            raise GraphcError(f"labels must be class indices in [0, {n_classes}), got "
                              f"values from {low} to {high}",
                              fix="check the labels, or the size of the model's last layer")


def _entries(model: Module):
    """(kind, full name, module, local name, array) for parameters then state."""
    return list(model._walk())


class TrainStep:
    """step(x, y) -> loss: one compiled call that updates the model's arrays in place."""

    def __init__(self, model: Module, loss, optimizer, x_spec: TensorSpec, y_spec: TensorSpec,
                 seed: int = 0, fuse_ops: bool = True, target: str = "cpu",
                 arch: str | None = None, tf32: bool = False):
        self.model, self.loss_fn, self.optimizer = model, loss, optimizer
        entries = _entries(model)
        self.params = [e for e in entries if e[0] == "param"]
        self.states = [e for e in entries if e[0] == "state"]
        self.slots = [optimizer.init_slots(e[4]) for e in self.params]
        self.step_count = 0
        self.skipped = False   # did the last step find non-finite values (and change nothing)
        self.seed = int(seed)
        self.n_classes = None  # the model output's last dim, set while tracing
        n_p, n_s = len(self.params), len(self.states)
        n_slot = sum(len(s) for s in self.slots)
        n_scalars = len(optimizer.scalars(0))

        def train_step(*ts):
            p_in, rest = ts[:n_p], ts[n_p:]
            slot_in, rest = rest[:n_slot], rest[n_slot:]
            s_in, (x, y, key), scalars = rest[:n_s], rest[n_s:n_s + 3], rest[n_s + 3:]
            base = {(id(m), n): t for (_, _, m, n, _), t in zip(self.states, s_in)}
            recorded = {}

            def objective(*ps):
                bound = dict(base)
                bound.update({(id(m), n): t for (_, _, m, n, _), t in zip(self.params, ps)})
                with bind(bound, training=True, key=key) as frame:
                    out = model(x)
                    self.n_classes = out.shape[-1] if out.ndim else None
                    value = self.loss_fn(out, y)
                    recorded.update(frame["updates"])
                return value

            loss, grads = value_and_grad(objective, tuple(range(n_p)))(*p_in)
            updated_p, updated_slots, k = [], [], 0
            for p, g, slots in zip(p_in, grads, self.slots):
                cur = list(slot_in[k:k + len(slots)])
                k += len(slots)
                p2, s2 = optimizer.update(p, g, cur, list(scalars))
                updated_p.append(p2)
                updated_slots += s2
            updated_s = [recorded.get((id(m), n), t)
                         for (_, _, m, n, _), t in zip(self.states, s_in)]
            # The step commits only if the loss and every new value are finite: an inf in the
            # data can leave the loss finite (tanh saturates) while a gradient holds inf * 0.
            finite = all_finite([loss, *updated_p, *updated_slots, *updated_s])
            new_p = [api.where(finite, a, b) for a, b in zip(updated_p, p_in)]
            new_slots = [api.where(finite, a, b) for a, b in zip(updated_slots, slot_in)]
            new_s = [api.where(finite, a, b) for a, b in zip(updated_s, s_in)]
            return (loss, finite, *new_p, *new_slots, *new_s)

        specs = ([tensor(e[4].shape, e[4].dtype, "p_" + e[1]) for e in self.params] +
                 [tensor(a.shape, a.dtype, f"slot{i}_{j}") for i, s in enumerate(self.slots)
                  for j, a in enumerate(s)] +
                 [tensor(e[4].shape, e[4].dtype, "s_" + e[1]) for e in self.states] +
                 [x_spec, y_spec, tensor((), "int64", "key")] +
                 [tensor((), "float32", f"scalar{i}") for i in range(n_scalars)])
        n_state = n_p + n_slot + n_s
        self.target = target
        self.compiled = compile_graph(train_step, *specs, fuse_ops=fuse_ops, target=target,
                                      inplace={2 + i: i for i in range(n_state)},
                                      **({"arch": arch, "tf32": tf32} if target == "cuda"
                                         else {}))
        self._state_arrays = ([e[4] for e in self.params] + [a for s in self.slots for a in s] +
                              [e[4] for e in self.states])
        # Per-step values live in 0-d arrays written in place, so only x and y change per call.
        self._key = np.zeros((), np.int64)
        self._scalars = [np.zeros((), np.float32) for _ in range(n_scalars)]
        fixed = dict(enumerate(self._state_arrays))
        fixed[n_state + 2] = self._key
        fixed.update({n_state + 3 + k: a for k, a in enumerate(self._scalars)})
        self._fixed, self._n_state = fixed, n_state
        self._bound = None   # bound at the first step (a GPU is needed only to run)
        self._last_scalars = None
        graph = self.compiled.graph
        self._uses_key = bool(graph.users()[graph.inputs[n_state + 2]])
        # scalars that are [lr] for a constant lr (see __call__)
        self._lr_only = type(optimizer).scalars is Optimizer.scalars and not callable(optimizer.lr)
        self._last_lr = None

    def __call__(self, x, y) -> float:
        if not isinstance(y, np.ndarray):
            y = np.asarray(y)   # lists too are range-checked (the call converts them anyway)
        if y.dtype.kind in "iu":
            check_labels(y, self.n_classes)
        # _prepare, unless the scalars are known unchanged: they depend on the learning rate
        # alone, which is the same object as at the last step
        if not self._lr_only or self.optimizer.lr is not self._last_lr or self._uses_key:
            self._prepare()
        out = (self._bound or self._call).call((x, y))
        self.step_count += 1
        # a step whose loss, gradients or updates were not finite changed nothing
        self.skipped = not bool(out[1])
        return float(out[0])

    @property
    def _call(self):
        if self._bound is None:
            exe = self.compiled.executable
            if self.target == "cuda":  # parameters and slots stay on the GPU between steps
                self._bound = exe.bind(self._fixed, reuse_outputs=True,
                                       resident=set(range(self._n_state)))
            else:
                self._bound = exe.bind(self._fixed, reuse_outputs=True)
        return self._bound

    def sync(self) -> None:
        """Copies parameters and optimizer state from the GPU into the model's arrays
        (target="cuda"; on the CPU they are always current)."""
        if self._bound is not None and hasattr(self._bound, "sync"):
            self._bound.sync()

    def _prepare(self) -> None:
        """This step's scalars (written only when they change) and random key."""
        self._last_lr = self.optimizer.lr
        values = self.optimizer.scalars(self.step_count)
        if values != self._last_scalars:
            for arr, value in zip(self._scalars, values):
                arr[()] = value
            self._last_scalars = values
        if self._uses_key:
            # a distinct 64-bit key per (seed, step): dropout masks never repeat across steps
            self._key[()] = (self.seed * 0x9E3779B97F4A7C15 +
                             self.step_count * 0xBF58476D1CE4E5B9) % (1 << 63)

    def inputs(self, x, y) -> list:
        """Every input of the compiled step for this step's batch (state arrays, batch,
        key, scalars), as the step passes them: for running the graph elsewhere."""
        self._prepare()
        return [*self._state_arrays, x, y, self._key, *self._scalars]

    @property
    def kernels(self):
        return self.compiled.kernels


class Predict:
    """The model's forward pass (inference mode), compiled; weights are read from the model."""

    def __init__(self, model: Module, x_spec: TensorSpec):
        self.model = model
        self.entries = _entries(model)

        def forward(*ts):
            bound = {(id(m), n): t for (_, _, m, n, _), t in zip(self.entries, ts[1:])}
            with bind(bound, training=False):
                return model(ts[0])

        specs = [x_spec] + [tensor(e[4].shape, e[4].dtype, e[1]) for e in self.entries]
        self.compiled = compile_graph(forward, *specs)

    def __call__(self, x):
        return self.compiled(x, *[e[4] for e in self.entries])
