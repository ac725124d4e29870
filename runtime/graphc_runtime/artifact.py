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
import stat
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
from .profile import Profile, check_meta, profile_call
from .signature import Signature

FORMAT = "graphc-artifact"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 1 << 32  # refuse absurd sizes before reading (a corrupted header)
MAX_ARTIFACT_BYTES = 1 << 36
MAX_MANIFEST_BYTES = 1 << 24
WEIGHT_DTYPES = ("float32", "float64", "int32", "int64", "bool")

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

    def __init__(self, executable: Executable, manifest: dict, folder: str,
                 profile_library: str | None = None, weights=()):
        self.executable = executable
        self.manifest = manifest
        self.signature = executable.signature
        self._profile_library, self._weights = profile_library, weights
        self._instrumented = None
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)

    def __call__(self, *arrays):
        return self.executable(*arrays)

    def profile(self, *inputs, repeat: int = 20) -> Profile:
        """Per-kernel times, bytes and FLOPs of a call on `inputs` (as Compiled.profile):
        from the instrumented library a CPU artifact carries, or a CUDA module's events."""
        return self.profile_flat(self.signature.flatten_args(inputs), repeat)

    def profile_flat(self, arrays, repeat: int = 20) -> Profile:
        """profile() with the input leaves as one flat list."""
        if "profile" not in self.manifest:
            raise LoadError("this artifact carries no profile data (it was exported before "
                            "profiles existed); export it again")
        rows = self.manifest["profile"]["rows"]
        if self._profile_library is None:   # CUDA: the module times its own launches
            return profile_call(self.signature, self.executable, self.executable, arrays,
                                rows, repeat, ceilings=False)
        if self._instrumented is None:
            self._instrumented = Executable(self._profile_library, self.signature,
                                            self._weights)
        return profile_call(self.signature, self._instrumented, self.executable, arrays,
                            rows, repeat)

    @property
    def kernels(self) -> list[dict]:
        return self.manifest["kernels"]

    def __repr__(self) -> str:
        target = self.manifest["target"]
        return (f"graphc_runtime.Model {self.manifest.get('name')}{self.signature.describe()} "
                f"for {target.get('cpu') or target.get('arch')}")


def read_manifest(path: str) -> tuple[dict, dict[str, bytes]]:
    """The verified manifest and member bytes of an artifact (no native code is touched).

    Sizes are checked before anything is inflated: the manifest itself is read first (at
    most MAX_MANIFEST_BYTES), every member's declared size must match the size the manifest
    records for it (and stay under a cap), and members are read in bounded chunks."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except (OSError, ValueError, TypeError) as err:
        raise LoadError(f"{path}: cannot read: {err}") from None
    if not stat.S_ISREG(info.st_mode):
        # a FIFO, a device (/dev/zero) or a folder: reading it could block or never end
        raise LoadError(f"{path}: not a regular file")
    if info.st_size > MAX_ARTIFACT_BYTES:
        raise LoadError(f"{path}: {info.st_size} bytes is more than an artifact may hold "
                        f"({MAX_ARTIFACT_BYTES})")
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except _ZIP_ERRORS as err:
        raise LoadError(f"{path}: not a graphc artifact (not a readable zip file: {err})") from None
    with archive:
        try:
            infos = archive.infolist()
            by_name = {}
            for item in infos:
                if not _safe_name(item.filename):
                    raise LoadError(f"{path}: member {item.filename!r} has an unsafe path "
                                    f"(absolute or escaping the artifact)")
                if item.filename in by_name:
                    raise LoadError(f"{path}: member {item.filename} appears twice")
                if item.file_size > MAX_MEMBER_BYTES:
                    raise LoadError(f"{path}: member {item.filename} claims {item.file_size} "
                                    f"bytes")
                by_name[item.filename] = item
            if "manifest.json" not in by_name:
                raise LoadError(f"{path}: not a graphc artifact (no manifest.json)")
            if by_name["manifest.json"].file_size > MAX_MANIFEST_BYTES:
                raise LoadError(f"{path}: manifest.json claims "
                                f"{by_name['manifest.json'].file_size} bytes")
            raw = _read_member(archive, by_name["manifest.json"])
            manifest = _parse_manifest(path, raw)
            files, sizes = manifest["files"], manifest.get("sizes")
            for name, item in by_name.items():
                if name != "manifest.json" and name not in files:
                    raise LoadError(f"{path}: member {name} is not listed in the manifest")
            data = {}
            for name, digest in files.items():
                item = by_name.get(name)
                if item is None:
                    raise LoadError(f"{path}: member {name} is missing")
                if sizes is not None and item.file_size != sizes.get(name):
                    raise LoadError(f"{path}: member {name} holds {item.file_size} bytes, the "
                                    f"manifest says {sizes.get(name)}")
                blob = _read_member(archive, item)
                if hashlib.sha256(blob).hexdigest() != digest:
                    raise LoadError(f"{path}: checksum mismatch for {name} (the file is "
                                    f"corrupted)")
                data[name] = blob
        except LoadError:
            raise
        except _ZIP_ERRORS + (KeyError, RuntimeError) as err:
            raise LoadError(f"{path}: corrupted artifact ({type(err).__name__}: {err})") from None
    check_manifest(path, manifest, data)
    return manifest, data


# zipfile raises NotImplementedError for a zip version or compression it does not read
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, OSError, ValueError, EOFError,
               OverflowError, NotImplementedError)


def _read_member(archive: zipfile.ZipFile, item: zipfile.ZipInfo) -> bytes:
    """A member's bytes, read in chunks: never more than its declared size."""
    out = bytearray()
    with archive.open(item) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            out += chunk
            if len(out) > item.file_size:
                raise ValueError(f"member {item.filename} inflates beyond its declared size")
    return bytes(out)


def _parse_manifest(path: str, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise LoadError(f"{path}: unreadable manifest.json: {err}") from None
    if not isinstance(manifest, dict):
        raise LoadError(f"{path}: unreadable manifest.json: not a JSON object")
    if manifest.get("format") != FORMAT:
        raise LoadError(f"{path}: not a graphc artifact (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or \
            version > FORMAT_VERSION or version < 1:
        raise LoadError(f"{path}: artifact format version {version!r} is not supported by this "
                        f"runtime (it reads versions up to {FORMAT_VERSION}); upgrade graphc")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise LoadError(f"{path}: the manifest lists no member checksums (files: name -> "
                        f"sha256)")
    sizes = manifest.get("sizes")
    if sizes is not None and not (isinstance(sizes, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_MEMBER_BYTES
            for v in sizes.values())):
        raise LoadError(f"{path}: malformed manifest: sizes must map members to byte counts")
    return manifest


def check_manifest(path: str, manifest: dict, data: dict[str, bytes]) -> None:
    """Checks every field load() and `graphc inspect` use, before they are used: types,
    ranges, members that exist, weights whose .npy headers agree with the manifest and with
    their byte sizes. Anything wrong is a LoadError naming the field."""
    def need(condition, what):
        if not condition:
            raise LoadError(f"{path}: malformed manifest: {what}")

    need(isinstance(manifest.get("name", ""), str), "name is not a string")
    try:
        Signature.from_json(manifest.get("signature"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        raise LoadError(f"{path}: malformed manifest: signature: {err}") from None
    kernels = manifest.get("kernels")
    need(isinstance(kernels, list) and all(
        isinstance(k, dict) and isinstance(k.get("name"), str) and
        isinstance(k.get("kind"), str) and isinstance(k.get("ops"), list) and
        all(isinstance(o, str) for o in k["ops"]) for k in kernels),
        "kernels must be a list of {name, kind, ops}")
    constants = manifest.get("constants")
    need(isinstance(constants, list), "constants must be a list")
    for k, spec in enumerate(constants):
        need(isinstance(spec, dict) and isinstance(spec.get("file"), str) and
             spec.get("dtype") in WEIGHT_DTYPES and isinstance(spec.get("shape"), list) and
             all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                 for d in spec["shape"]),
             f"constants[{k}] must be {{file, dtype, shape}} with a known dtype and sizes >= 0")
        need(spec["file"] in data, f"constants[{k}]: member {spec['file']} is missing")
        _check_npy(path, spec, data[spec["file"]])
    target = manifest.get("target")
    need(isinstance(target, dict) and isinstance(target.get("kind"), str),
         "target must be an object with a kind")
    for key in ("triple", "cpu", "arch"):
        need(isinstance(target.get(key, ""), str), f"target.{key} is not a string")
    if target["kind"] in ("cpu", "wasm32"):
        need(isinstance(target.get("features"), list) and
             all(isinstance(f, str) for f in target["features"]),
             "target.features must be a list of names")
        need(isinstance(manifest.get("abi_version"), int), "abi_version is not an int")
        need(manifest.get("library") in data, "library must name a member")
    elif target["kind"] == "cuda":
        need(manifest.get("ptx") in data and manifest.get("launch") in data,
             "ptx and launch must name members")
    if "view" in manifest:   # the HTML view's data; read and checked by `graphc view`
        need(isinstance(manifest["view"], str) and manifest["view"] in data,
             "view must name a member")
    if "profile" in manifest:
        prof = manifest["profile"]
        cuda = target["kind"] == "cuda"   # (timed by the module's events: no library)
        need(isinstance(prof, dict) and (("library" not in prof) if cuda else
                                         (prof.get("library") in data)) and
             check_meta(prof.get("rows")),
             "profile must be {library: a member (CPU only), rows: per-kernel metadata}")


def _check_npy(path: str, spec: dict, blob: bytes) -> None:
    """The .npy header must describe exactly the manifest's dtype and shape, and the member
    must hold exactly that many bytes after it (a header claiming a huge shape is refused
    before numpy tries to allocate it)."""
    try:
        f = io.BytesIO(blob)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
        raise LoadError(f"{path}: unreadable weights {spec['file']}: {err}") from None
    if dtype.name != spec["dtype"] or list(shape) != list(spec["shape"]) or fortran or \
            dtype.hasobject:
        raise LoadError(f"{path}: weights {spec['file']} are {dtype}{list(shape)}, the manifest "
                        f"says {spec['dtype']}{spec['shape']}")
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    if len(blob) - f.tell() != nbytes:
        raise LoadError(f"{path}: weights {spec['file']} hold {len(blob) - f.tell()} bytes of "
                        f"data, {spec['dtype']}{spec['shape']} needs {nbytes}")


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
    if kind == "wasm32":
        return _load_wasm(path, manifest, data, signature, weights)
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
    profile_path = None
    if "profile" in manifest:
        profile_path = os.path.join(folder, "graph-profile.so")
        with open(profile_path, "wb") as f:
            f.write(data[manifest["profile"]["library"]])
    return Model(executable, manifest, folder, profile_path, weights)


def _load_wasm(path, manifest, data, signature, weights) -> "Model":
    """A wasm32 build runs on any host, in wasmtime's sandbox (graphc_runtime.wasm)."""
    from .wasm import WasmExecutable
    if manifest.get("abi_version") != ABI_VERSION:
        raise LoadError(f"{path}: native ABI version {manifest.get('abi_version')}, this "
                        f"runtime speaks {ABI_VERSION}")
    library = manifest.get("library")
    if library not in data:
        raise LoadError(f"{path}: the module {library!r} named by the manifest is missing")
    try:
        executable = WasmExecutable(data[library], signature, weights, f"{path}:{library}")
    except LoadError as err:
        raise LoadError(f"{path}: {err}") from None
    return Model(executable, manifest, tempfile.mkdtemp(prefix="graphc-model-"), None, weights)


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
