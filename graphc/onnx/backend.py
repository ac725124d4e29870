"""graphc.onnx.Backend: onnx.backend.base.Backend over graphc, so ONNX's own backend tests
(onnx.backend.test.BackendTest) run against graphc's compiled code.

prepare() imports the model; run() compiles it for the inputs' values where the model needs
some inputs known at import (NeedsValue: ONNX's node tests feed shapes, pads and axes as
inputs) and reuses a compiled model while those values stay the same.
"""
from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend as _Base
from onnx.backend.base import BackendRep as _BaseRep

from .importer import NeedsValue, check_supported, read_model


class BackendRep(_BaseRep):
    def __init__(self, model, compile_options=None):
        self.model = model
        self.options = dict(compile_options or {})
        self.static: list[str] = []          # input names fixed at import
        self._compiled: dict[bytes, object] = {}
        self.input_names = [i.name for i in model.graph.input
                            if i.name not in {t.name for t in model.graph.initializer}]
        self.output_names = [o.name for o in model.graph.output]

    def _build(self, values: dict):
        from . import compile as compile_onnx
        while True:
            fixed = {n: values[n] for n in self.static}
            try:
                return compile_onnx(self.model, values=fixed, **self.options)
            except NeedsValue as need:
                new = [n for n in need.names if n not in self.static and n in values]
                if not new:
                    raise
                self.static.extend(new)

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            values = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            values = {n: np.asarray(v) for n, v in zip(self.input_names, inputs)}
        key = b"".join(n.encode() + values[n].tobytes() + str(values[n].shape).encode()
                       for n in self.static)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._build(values)
            key = b"".join(n.encode() + values[n].tobytes() + str(values[n].shape).encode()
                           for n in self.static)
            self._compiled[key] = compiled
        args = [values[n] for n in self.input_names if n not in self.static]
        out = compiled(*args)
        return [out[n] for n in self.output_names]


class Backend(_Base):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        try:
            check_supported(model)
        except Exception:  # noqa: BLE001 - any reason means "not compatible"
            return False
        return True

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> BackendRep:
        super().prepare(model, device, **kwargs)
        model = read_model(model)
        check_supported(model)
        return BackendRep(model, {"target": "cpu"} if device == "CPU" else {"target": "cuda"})

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("graphc runs whole models: use run_model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA where a GPU and its driver can be used."""
        if device == "CUDA":
            from graphc_runtime.cuda import available
            return available() is None
        return device == "CPU"
