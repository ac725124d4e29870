"""load(): opens a .gcx artifact written by graphc's export and returns a callable model.

Loading is a trust boundary: the artifact carries native code, so load only artifacts you
trust. Everything checkable is checked before that code runs: the format version, every
member's sha256, member paths, the CPU's instruction sets, the library's exported symbols
and ABI version, and the weights' dtypes and shapes. Checksums catch corruption, not malice.
Every failure raises LoadError naming the problem.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import posixpath
import shutil
import struct
import tempfile
import weakref
import zipfile
import zlib

import numpy as np

from .abi import ABI_VERSION
from .cpu import Executable
from .errors import LoadError
from .launch import LaunchPlan
from .signature import Signature

FORMAT = "graphc-artifact"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 1 << 32  # refuse absurd sizes before reading (a corrupted header)

# LLVM feature names -> /proc/cpuinfo flag names, where they differ.
CPUINFO_NAMES = {"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "sahf": "lahf_lm",
                 "bmi": "bmi1", "lzcnt": "abm", "cx16": "cx16", "avx512vnni": "avx512_vnni",
                 "avx512bf16": "avx512_bf16", "avx512vbmi2": "avx512_vbmi2",
                 "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
                 "avx512fp16": "avx512_fp16", "avxvnni": "avx_vnni", "vpclmulqdq": "vpclmulqdq",
                 "sha": "sha_ni", "avx512vbmi": "avx512vbmi"}


def host_cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux /proc/cpuinfo), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def missing_features(required, flags: set[str] | None) -> list[str]:
    if flags is None:
        return []
    return [f for f in required if CPUINFO_NAMES.get(f, f) not in flags]


def _safe_name(name: str) -> bool:
    norm = posixpath.normpath(name)
    return (not name.startswith(("/", "\\")) and ".." not in norm.split("/") and
            "\\" not in name and ":" not in name and norm == name and name != ".")


class Model:
    """A loaded artifact: call it like the Compiled it came from."""

    def __init__(self, executable: Executable, manifest: dict, folder: str):
        self.executable = executable
        self.manifest = manifest
        self.signature = executable.signature
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)

    def __call__(self, *arrays):
        return self.executable(*arrays)

    @property
    def kernels(self) -> list[dict]:
        return self.manifest["kernels"]

    def __repr__(self) -> str:
        target = self.manifest["target"]
        return (f"graphc_runtime.Model {self.manifest.get('name')}{self.signature.describe()} "
                f"for {target.get('cpu') or target.get('arch')}")


def read_manifest(path: str) -> tuple[dict, dict[str, bytes]]:
    """The verified manifest and member bytes of an artifact (no native code is touched)."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, zlib.error, struct.error, OSError, ValueError, EOFError) as err:
        raise LoadError(f"{path}: not a graphc artifact (not a readable zip file: {err})") from None
    with archive:
        try:
            infos = archive.infolist()
            for info in infos:
                if not _safe_name(info.filename):
                    raise LoadError(f"{path}: member {info.filename!r} has an unsafe path "
                                    f"(absolute or escaping the artifact)")
                if info.file_size > MAX_MEMBER_BYTES:
                    raise LoadError(f"{path}: member {info.filename} claims {info.file_size} bytes")
            names = {i.filename for i in infos}
            if "manifest.json" not in names:
                raise LoadError(f"{path}: not a graphc artifact (no manifest.json)")
            data = {i.filename: archive.read(i) for i in infos}
        except LoadError:
            raise
        except (zipfile.BadZipFile, zlib.error, struct.error, OSError, ValueError, EOFError,
                KeyError, NotImplementedError, RuntimeError) as err:
            raise LoadError(f"{path}: corrupted artifact ({type(err).__name__}: {err})") from None
    try:
        manifest = json.loads(data.pop("manifest.json").decode("utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("the manifest is not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise LoadError(f"{path}: unreadable manifest.json: {err}") from None
    if manifest.get("format") != FORMAT:
        raise LoadError(f"{path}: not a graphc artifact (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise LoadError(f"{path}: artifact format version {version!r} is not supported by this "
                        f"runtime (it reads versions up to {FORMAT_VERSION}); upgrade graphc")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise LoadError(f"{path}: the manifest lists no member checksums")
    for name in data:
        if name not in files:
            raise LoadError(f"{path}: member {name} is not listed in the manifest")
    for name, digest in files.items():
        if name not in data:
            raise LoadError(f"{path}: member {name} is missing")
        if hashlib.sha256(data[name]).hexdigest() != digest:
            raise LoadError(f"{path}: checksum mismatch for {name} (the file is corrupted)")
    return manifest, data


def load(path: str) -> Model:
    """Loads a .gcx artifact; the result is called with numpy arrays like the original.

    >>> model = graphc_runtime.load("model.gcx")
    >>> probs = model(x)
    """
    manifest, data = read_manifest(path)
    try:
        target = manifest["target"]
        signature = Signature.from_json(manifest["signature"])
        constants = manifest["constants"]
        kind = target.get("kind", "cpu")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LoadError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
    weights = _weights(path, constants, data)
    if kind == "cuda":
        return _load_cuda(path, manifest, data, signature, weights)
    if kind != "cpu":
        raise LoadError(f"{path}: unknown target kind {kind!r}")
    try:
        library = manifest["library"]
        abi = manifest["abi_version"]
        required = list(target["features"])
    except (KeyError, TypeError, ValueError) as err:
        raise LoadError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
    if abi != ABI_VERSION:
        raise LoadError(f"{path}: native ABI version {abi}, this runtime speaks {ABI_VERSION}")
    machine = platform.machine().lower().replace("amd64", "x86_64")
    triple = str(target.get("triple", ""))
    if not triple.startswith(machine):
        raise LoadError(f"{path}: built for {triple}, this machine is {machine}")
    missing = missing_features(required, host_cpu_flags())
    if missing:
        raise LoadError(f"{path}: this CPU lacks {', '.join(missing)}, which the artifact's code "
                        f"uses (built for {target.get('cpu')})",
                        ) from None
    if library not in data:
        raise LoadError(f"{path}: the library {library!r} named by the manifest is missing")
    folder = tempfile.mkdtemp(prefix="graphc-model-")
    lib_path = os.path.join(folder, "graph.so")
    with open(lib_path, "wb") as f:
        f.write(data[library])
    try:
        executable = Executable(lib_path, signature, weights)
    except LoadError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise LoadError(f"{path}: {err}") from None
    return Model(executable, manifest, folder)


def _weights(path: str, constants, data: dict) -> list[np.ndarray]:
    weights = []
    for spec in constants:
        try:
            arr = np.load(io.BytesIO(data[spec["file"]]), allow_pickle=False)
        except (KeyError, ValueError, OSError, EOFError, TypeError) as err:
            raise LoadError(f"{path}: unreadable weights {spec}: {err}") from None
        if arr.dtype.name != spec.get("dtype") or list(arr.shape) != list(spec.get("shape", [])):
            raise LoadError(f"{path}: weights {spec['file']} are {arr.dtype}{list(arr.shape)}, "
                            f"the manifest says {spec.get('dtype')}{spec.get('shape')}")
        weights.append(arr)
    return weights


def _load_cuda(path: str, manifest: dict, data: dict, signature, weights) -> "Model":
    """A cuda artifact: PTX that the driver compiles for this GPU at load time."""
    from .cuda import CudaError, CudaExecutable, CudaUnavailable
    try:
        ptx = data[manifest["ptx"]].decode()
        launch = LaunchPlan.from_json(json.loads(data[manifest["launch"]].decode()))
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
        raise LoadError(f"{path}: malformed cuda artifact ({type(err).__name__}: {err})") from None
    try:
        executable = CudaExecutable(ptx, launch, signature, weights)
    except CudaUnavailable as err:
        raise LoadError(f"{path}: built for an NVIDIA GPU ({manifest['target'].get('arch')}): "
                        f"{err}") from None
    except CudaError as err:
        raise LoadError(f"{path}: the GPU refused the artifact's code: {err}") from None
    return Model(executable, manifest, tempfile.mkdtemp(prefix="graphc-model-"))
