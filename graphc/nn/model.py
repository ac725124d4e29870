"""A Keras-like front end: Model.compile / fit / evaluate / predict, DataLoader, weights I/O."""
from __future__ import annotations

import math
import os
import sys
import time
import zipfile

import numpy as np

from ..errors import GraphcError
from .losses import LOSSES, METRICS
from .modules import Module
from .train import Predict, TrainStep, as_data, check_labels, data_spec


class DataLoader:
    """Batches over numpy arrays; the last batch may be smaller (the batch dim is symbolic, so
    no recompilation). Shuffling is seeded and changes every epoch."""

    def __init__(self, *arrays, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if not arrays:
            raise GraphcError("DataLoader needs at least one array")
        n = len(arrays[0])
        for a in arrays:
            if len(a) != n:
                raise GraphcError(f"DataLoader: arrays have different lengths "
                                  f"({', '.join(str(len(x)) for x in arrays)})",
                                  fix="x and y must have one row per sample")
        from ..optim import check_count
        batch_size = check_count("batch_size", batch_size)
        self.arrays, self.n, self.batch_size = arrays, n, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield tuple(np.ascontiguousarray(a[idx]) for a in self.arrays)


class History:
    """Loss and metrics per epoch (`history.history["loss"]`, ...), plottable to PNG."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.profile = None   # fit(profile=True): the training step's Profile

    def add(self, key: str, value: float) -> None:
        self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key):
        return self.history[key]

    def plot(self, path: str) -> str | None:
        """Saves the curves to `path` when matplotlib is installed; returns the path or None."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, values in self.history.items():
            ax.plot(range(1, len(values) + 1), values, label=key)
        ax.set_xlabel("epoch")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


class Model:
    """Wraps a Module: model.compile(loss, optimizer, metrics), fit, evaluate, predict."""

    def __init__(self, module: Module):
        if not isinstance(module, Module):
            raise GraphcError(f"Model wraps a graphc.nn.Module, got {type(module).__name__}")
        self.module = module
        self._step: TrainStep | None = None
        self._predict: Predict | None = None
        self._specs = None

    def compile(self, loss="mse", optimizer=None, metrics=(), target: str = "cpu"):
        """target="cuda" trains on an NVIDIA GPU (weights stay there during fit and are copied
        back after each epoch); prediction and evaluation run on the CPU."""
        from .. import optim

        from ..backends import backend_for
        backend_for(target)   # an unknown target is a CompileError naming those available
        self.target = target
        self.loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        if isinstance(loss, str) and loss not in LOSSES:
            raise GraphcError(f"unknown loss {loss!r}; use one of {sorted(LOSSES)} or a function")
        self.optimizer = optimizer or optim.Adam()
        self.metrics = {}
        for m in metrics:
            if isinstance(m, str) and m not in METRICS:
                raise GraphcError(f"unknown metric {m!r}; use one of {sorted(METRICS)}")
            self.metrics[m if isinstance(m, str) else m.__name__] = METRICS[m] if isinstance(m, str) else m
        self._step = None
        return self

    # -- compiled pieces, built on first use from the data's shapes
    def _train_step(self, x, y) -> TrainStep:
        if not hasattr(self, "loss_fn"):
            raise GraphcError("call model.compile(loss=..., optimizer=...) before fit")
        specs = (data_spec(x, "x"), data_spec(y, "y"))
        if self._step is None or self._specs != specs:
            self._step = TrainStep(self.module, self.loss_fn, self.optimizer, *specs,
                                   target=getattr(self, "target", "cpu"))
            self._specs = specs
        return self._step

    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        x = as_data(x, "x")
        spec = data_spec(x, "x")
        if self._predict is None or self._predict.compiled.signature.inputs[0][1:] != (
                spec.dtype, tuple(d if isinstance(d, int) else "B" for d in spec.shape)):
            self._predict = Predict(self.module, spec)
        if batch_size is None:
            return self._predict(x)
        return np.concatenate([self._predict(b) for (b,) in DataLoader(x, batch_size=batch_size)])

    def evaluate(self, x, y) -> dict[str, float]:
        x, y = as_data(x, "x"), as_data(y, "y")
        pred = self.predict(x)
        if self.loss_fn is LOSSES["cross_entropy"]:
            check_labels(y, pred.shape[-1] if pred.ndim else None)
        from .. import evaluate, trace, tensor
        loss_graph = trace(lambda p, t: self.loss_fn(p, t), tensor(pred.shape, pred.dtype),
                           tensor(y.shape, y.dtype))
        out = {"loss": float(evaluate(loss_graph, pred, y))}
        for name, fn in self.metrics.items():
            out[name] = fn(pred, y)
        return out

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, validation_data=None,
            shuffle: bool = True, seed: int = 0, verbose: int = 1, on_nan: str = "stop",
            profile: bool = False) -> History:
        """Trains for `epochs`; returns a History. on_nan: "stop" (report and stop: the step that
        produced a non-finite loss, gradient or update changed nothing), "continue", or "raise".
        profile=True: after the first epoch, history.profile is a Profile of the training step
        on a batch (Compiled.profile; the model's arrays are not updated by it)."""
        if on_nan not in ("stop", "continue", "raise"):
            raise GraphcError(f"on_nan must be 'stop', 'continue' or 'raise', got {on_nan!r}")
        from ..optim import check_count
        epochs = check_count("epochs", epochs, 0)
        batch_size = check_count("batch_size", batch_size)
        x, y = as_data(x, "x"), as_data(y, "y")
        loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed)
        step = self._train_step(x[:1], y[:1])
        history = History()
        stop = False
        for epoch in range(1, epochs + 1):
            start, total, count = time.perf_counter(), 0.0, 0
            for b, (xb, yb) in enumerate(loader):
                loss = step(xb, yb)
                if not math.isfinite(loss) or step.skipped:
                    what = f"non-finite loss {loss}" if not math.isfinite(loss) else \
                        f"non-finite gradients or updates (loss {loss:.6g})"
                    message = (f"{what} at epoch {epoch}, step {step.step_count} "
                               f"(the step's update was skipped)")
                    if on_nan == "raise":
                        raise GraphcError(message, fix="lower the learning rate or check the data")
                    if on_nan == "stop":
                        print(message + "; stopping", file=sys.stderr)
                        stop = True
                        break
                    continue
                total += loss * len(xb)
                count += len(xb)
                if verbose:
                    _progress(epoch, epochs, b + 1, len(loader), total / max(count, 1))
            history.add("loss", total / max(count, 1))
            step.sync()   # weights trained on a GPU back into the model's arrays
            if profile and epoch == 1 and count:
                xb, yb = next(iter(loader))
                history.profile = step.compiled.profile(*step.inputs(xb, yb), repeat=10)
            if self.metrics:
                for name, value in self.evaluate(x, y).items():
                    if name != "loss":
                        history.add(name, value)
            if validation_data is not None:
                for name, value in self.evaluate(*validation_data).items():
                    history.add("val_" + name, value)
            if verbose:
                extra = "  ".join(f"{k}={v[-1]:.4g}" for k, v in history.history.items())
                print(f"\repoch {epoch}/{epochs}  {extra}  ({time.perf_counter() - start:.2f}s)"
                      + " " * 10, flush=True)
            if stop:
                break
        return history

    # -- deployment
    def export(self, path: str, example_input=None, cpu: str | None = None) -> str:
        """Writes the inference model, weights bound as constants, as one .gcx artifact that
        graphc_runtime.load runs with numpy + cffi only. The batch dim stays symbolic;
        `example_input` gives the feature shape (defaults to the data seen by fit)."""
        from .. import compile as compile_graph
        if example_input is not None:
            spec = data_spec(as_data(example_input, "example_input"), "x")
        elif self._specs is not None:
            spec = self._specs[0]
        else:
            raise GraphcError("export needs the input shape: pass example_input=, or fit first")

        def predict(x):   # a module called in a trace: inference, weights as constants
            return self.module(x)

        return compile_graph(predict, spec, cpu=cpu).export(path)

    # -- weights
    def save_weights(self, path: str) -> None:
        """Parameters, layer state and optimizer state in an .npz (no pickle)."""
        arrays = {f"param/{k}": v for k, v in self.module.named_parameters().items()}
        arrays.update({f"state/{k}": v for k, v in self.module.named_state().items()})
        if self._step is not None:
            names = list(self.module.named_parameters())
            for name, slots in zip(names, self._step.slots):
                for i, s in enumerate(slots):
                    arrays[f"opt/{name}/{i}"] = s
            arrays["opt_step"] = np.array(self._step.step_count, np.int64)
        np.savez(path, **arrays)

    def load_weights(self, path: str) -> None:
        """Loads what save_weights wrote; names and shapes must match the model."""
        if not os.path.exists(path):
            raise GraphcError(f"no weights file at {path}")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise GraphcError(f"{path} is not a weights file: {err}") from None
        with data:
            targets = {f"param/{k}": v for k, v in self.module.named_parameters().items()}
            targets.update({f"state/{k}": v for k, v in self.module.named_state().items()})
            missing = [k for k in targets if k not in data.files]
            if missing:
                raise GraphcError(f"{path} lacks {', '.join(missing)}",
                                  fix="the file was saved from a different model")
            for key, arr in targets.items():
                if data[key].shape != arr.shape:
                    raise GraphcError(f"{path}: {key} has shape {data[key].shape}, the model "
                                      f"expects {arr.shape}")
            for key, arr in targets.items():
                arr[...] = data[key]  # in place: compiled steps keep pointing at these arrays
            if self._step is not None:
                names = list(self.module.named_parameters())
                for name, slots in zip(names, self._step.slots):
                    for i, s in enumerate(slots):
                        if f"opt/{name}/{i}" in data.files:
                            s[...] = data[f"opt/{name}/{i}"]
                if "opt_step" in data.files:
                    self._step.step_count = int(data["opt_step"])


def _progress(epoch, epochs, done, total, loss):
    width = 24
    filled = int(width * done / max(total, 1))
    sys.stdout.write(f"\repoch {epoch}/{epochs} [{'=' * filled}{' ' * (width - filled)}] "
                     f"{done}/{total} loss={loss:.4g}")
    sys.stdout.flush()
