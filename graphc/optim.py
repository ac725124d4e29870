"""Optimizers as graph ops (compiled into the training step) and learning-rate schedules.

An optimizer declares per-parameter slots (moment buffers) and writes its update with graphc
ops; the training step updates parameters and slots in place. Hyperparameters that change
over time (the learning rate, Adam's bias corrections) are runtime scalars: a schedule never
recompiles.
"""
from __future__ import annotations

import math

import numpy as np

from . import api
from .errors import GraphcError


def _check_lr(lr) -> float:
    if not _is_real(lr) or not math.isfinite(lr) or lr <= 0:
        raise GraphcError(f"the learning rate must be a finite positive number, got {lr!r}")
    return float(lr)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))


def check_hyper(name: str, value, low: float = 0.0, high: float | None = None,
                high_open: bool = False) -> float:
    """A finite real hyper-parameter in [low, high] (or [low, high)); a GraphcError naming it
    otherwise: a NaN momentum or weight decay would turn every parameter into NaN."""
    ok = _is_real(value) and math.isfinite(value) and value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bound = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise GraphcError(f"{name} must be a finite number >= {low}{bound}, got {value!r}")
    return float(value)


def check_count(name: str, value, low: int = 1) -> int:
    """An int (not a bool) >= low."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or \
            value < low:
        raise GraphcError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Optimizer:
    slots: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay: float = 0.0):
        self.lr = lr if callable(lr) else _check_lr(lr)
        self.weight_decay = check_hyper("weight_decay", weight_decay)

    def learning_rate(self, step: int) -> float:
        """The learning rate for 0-based step `step` (schedules are callables of the step)."""
        if not callable(self.lr):
            return self.lr
        lr = self.lr(step)
        if not _is_real(lr) or not math.isfinite(lr) or lr < 0:
            raise GraphcError(f"the learning-rate schedule gave {lr!r} at step {step}; it must be "
                              f"a finite number >= 0")
        return float(lr)

    def scalars(self, step: int) -> list[float]:
        """Runtime scalars for this step: [lr, ...]; subclasses add their own."""
        return [self.learning_rate(step)]

    def init_slots(self, param: np.ndarray) -> list[np.ndarray]:
        return [np.zeros_like(param) for _ in self.slots]

    def update(self, p, g, slots, scalars):
        """(new param, new slots) from param p, gradient g; all graph tensors."""
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form: v = mu v + g), Nesterov, and L2 weight decay."""

    def __init__(self, lr=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise GraphcError(f"nesterov must be True or False, got {nesterov!r}")
        self.momentum = check_hyper("momentum", momentum)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise GraphcError("nesterov=True needs a momentum > 0")
        self.slots = ("velocity",) if self.momentum else ()

    def update(self, p, g, slots, scalars):
        lr = scalars[0]
        if self.weight_decay:
            g = g + p * self.weight_decay
        if not self.momentum:
            return p - lr * g, []
        v = slots[0] * self.momentum + g
        step = g + v * self.momentum if self.nesterov else v
        return p - lr * step, [v]


class Adam(Optimizer):
    """Adam; bias corrections 1 - beta^t are computed per step on the host and passed in."""

    slots = ("m", "v")
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise GraphcError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.b1 = check_hyper("betas[0]", betas[0], 0.0, 1.0, high_open=True)
        self.b2 = check_hyper("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        self.eps = check_hyper("eps", eps)

    def scalars(self, step: int) -> list[float]:
        t = step + 1
        return [self.learning_rate(step), 1.0 - self.b1 ** t, 1.0 - self.b2 ** t]

    def update(self, p, g, slots, scalars):
        lr, c1, c2 = scalars
        if self.weight_decay and not self.decoupled:
            g = g + p * self.weight_decay
        m = slots[0] * self.b1 + g * (1.0 - self.b1)
        v = slots[1] * self.b2 + g * g * (1.0 - self.b2)
        new = p - lr * (m / c1) / (api.sqrt(v / c2) + self.eps)
        if self.weight_decay and self.decoupled:
            new = new - lr * self.weight_decay * p
        return new, [m, v]


class AdamW(Adam):
    """Adam with decoupled weight decay (p -= lr * wd * p), default wd 0.01."""

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    slots = ("square_avg",)

    def __init__(self, lr=1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.alpha = check_hyper("alpha", alpha, 0.0, 1.0)
        self.eps = check_hyper("eps", eps)

    def update(self, p, g, slots, scalars):
        lr = scalars[0]
        if self.weight_decay:
            g = g + p * self.weight_decay
        s = slots[0] * self.alpha + g * g * (1.0 - self.alpha)
        return p - lr * g / (api.sqrt(s) + self.eps), [s]


# ------------------------------------------------------------------ schedules

class StepLR:
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr, self.step_size = _check_lr(lr), check_count("step_size", step_size)
        self.gamma = check_hyper("gamma", gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class CosineLR:
    """Cosine decay from lr to min_lr over total_steps, then min_lr."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.lr, self.total = _check_lr(lr), check_count("total_steps", total_steps)
        self.min_lr = check_hyper("min_lr", min_lr, 0.0, self.lr)

    def __call__(self, step: int) -> float:
        t = min(step, self.total) / max(self.total, 1)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))
