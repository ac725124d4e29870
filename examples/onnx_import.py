"""A PyTorch CNN through ONNX: export it, import and compile it with graphc, check it against
ONNX Runtime, then export a graphc artifact and serve it from a process with only the runtime.

    python examples/onnx_import.py

Needs torch, onnx and onnxruntime. The CNN is two Conv-BatchNorm-ReLU-MaxPool stages and a
Linear head on 3x32x32 images, in eval mode; torch.onnx exports it with a symbolic batch, so
one graphc compilation serves every batch size. The artifact (.gcx) holds the native code and
the weights; graphc_runtime.load runs it with numpy and cffi, without the compiler.
"""
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

import graphc.onnx


def cnn(torch):
    T = torch.nn
    torch.manual_seed(0)
    net = T.Sequential(
        T.Conv2d(3, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(), T.MaxPool2d(2),
        T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32), T.ReLU(), T.MaxPool2d(2),
        T.Flatten(), T.Linear(32 * 8 * 8, 10))
    for m in net.modules():    # statistics as after training, not the (0, 1) defaults
        if isinstance(m, T.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


SERVE = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("graphc", "llvmlite", "networkx", "onnx", "torch"):
            raise ImportError("not available in this process: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import graphc_runtime
model = graphc_runtime.load(sys.argv[1])
np.save(sys.argv[3], model(np.load(sys.argv[2]))["logits"])
print("served by", model)
"""


def main(batches=(1, 64), folder=None):
    """Returns {batch: max |graphc - onnxruntime|} and whether the served artifact gave the
    compiled model's results bit for bit."""
    import onnxruntime as ort
    import torch

    folder = folder or tempfile.mkdtemp(prefix="onnx-import-")
    onnx_path = os.path.join(folder, "cnn.onnx")
    torch.onnx.export(cnn(torch), (torch.zeros(1, 3, 32, 32),), onnx_path,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    compiled = graphc.onnx.compile(onnx_path)          # one compilation, any batch size
    print(f"compiled {onnx_path}: {len(compiled.kernels)} kernels")
    for k in compiled.kernels:
        print(f"  {k.name}")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    errors, outputs = {}, {}
    for batch in batches:
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = compiled(x)["logits"]
        want = session.run(["logits"], {"images": x})[0]
        errors[batch] = float(np.max(np.abs(got - want)))
        outputs[batch] = (x, got)
        print(f"batch {batch:3d}: max |graphc - onnxruntime| = {errors[batch]:.2e}")

    artifact = compiled.export(os.path.join(folder, "cnn.gcx"))
    print(f"exported {artifact} ({os.path.getsize(artifact) / 1024:.0f} KiB)")
    x, got = outputs[batches[-1]]
    np.save(os.path.join(folder, "x.npy"), x)
    served_path = os.path.join(folder, "served.npy")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVE), artifact,
                             os.path.join(folder, "x.npy"), served_path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"serving the artifact failed:\n{result.stderr}")
    print(result.stdout.strip())
    identical = bool(np.array_equal(np.load(served_path), got))
    print(f"the runtime alone gives the compiled model's logits bit for bit: {identical}")
    return errors, identical


if __name__ == "__main__":
    errs, same = main()
    sys.exit(0 if same and max(errs.values()) < 1e-4 else 1)
