"""The `graphc` command line. inspect / run / bench / profile / view / unpack need only the runtime;
`compile` imports the compiler."""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np

from .artifact import load, read_manifest
from .errors import LoadError, RuntimeErrorBase
from .signature import Signature, output_shape
from .tree import leaf_paths, path_str


MAX_BENCH_BYTES = 1 << 32   # bench makes its own random inputs: refuse absurd sizes


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_inspect(args) -> int:
    manifest, members = read_manifest(args.artifact)
    sig = manifest["signature"]
    print(f"{args.artifact}: graphc artifact v{manifest['format_version']} "
          f"(graphc {manifest.get('graphc_version')}), model {manifest.get('name')}")
    target = manifest["target"]
    if target.get("kind") == "cuda":
        print(f"target: {target['triple']}, NVIDIA {target.get('arch')} (PTX, compiled by the "
              f"driver at load time)")
    else:
        print(f"target: {target['triple']}, cpu {target['cpu']}, needs "
              f"{', '.join(target['features']) or 'nothing beyond the baseline'}")
    try:
        parsed = Signature.from_json(sig)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{args.artifact}: malformed signature in the manifest: {err}") from None
    print(f"arguments: ({', '.join(parsed.arg_names)}), structure {parsed.in_tree}")
    print("inputs:")
    for name, dtype, shape in sig["inputs"]:
        print(f"  {name}: {dtype}[{', '.join(map(str, shape))}]")
    print(f"outputs: structure {parsed.out_tree}")
    out_paths = [path_str(p, "result") for p in leaf_paths(parsed.out_tree)]
    for k, (dtype, shape) in enumerate(sig["outputs"]):
        dims = ", ".join(str(d) if isinstance(d, int) else
                         "*".join(([str(d[0])] if d[0] != 1 else []) + d[1]) for d in shape)
        print(f"  {k}: {dtype}[{dims}]" + (f"  {out_paths[k]}" if out_paths[k] != "result"
                                            else ""))
    print(f"kernels ({len(manifest['kernels'])}):")
    for k in manifest["kernels"]:
        print(f"  {k['name']:<40} {k['kind']:<7} {' '.join(k['ops'])}")
    if "profile" in manifest:
        print("per call (profile metadata; B etc. are the symbolic dims):")
        for row in manifest["profile"]["rows"]:
            steps = _terms([row["calls"]])
            per = "" if steps == "1" else f"  x {steps} steps"
            print(f"  {('  ' if row['inside'] else '') + row['kernel']:<40} bytes "
                  f"{_terms(row['bytes'])}, FLOPs {_terms(row['flops'])}{per}")
    weights = sum(len(members[c["file"]]) for c in manifest["constants"])
    code = manifest.get("library") or manifest.get("ptx")
    print(f"code: {_size(len(members[code]))}, weights: {_size(weights)} in "
          f"{len(manifest['constants'])} array(s)")
    return 0


def _terms(sizes) -> str:
    """A sum of JSON sizes as text, like terms added: "4096 + 2048*B"."""
    total: dict[tuple, int] = {}
    for size in sizes:
        coef, syms = (size, ()) if isinstance(size, int) else (size[0], tuple(size[1]))
        total[syms] = total.get(syms, 0) + coef
    parts = [str(c) if not syms else "*".join(([str(c)] if c != 1 else []) + list(syms))
             for syms, c in sorted(total.items(), key=lambda t: (len(t[0]), t[0])) if c]
    return " + ".join(parts) or "0"


def _parse_inputs(pairs, names) -> list[np.ndarray]:
    given = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--input {pair!r}: expected NAME=FILE.npy")
        name, path = pair.split("=", 1)
        if name not in names:
            raise ValueError(f"--input {name}: the model has no input {name!r} "
                             f"(inputs: {', '.join(names)})")
        given[name] = np.load(path, allow_pickle=False)
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"missing --input for {', '.join(missing)}")
    return [given[n] for n in names]


def cmd_run(args) -> int:
    model = load(args.artifact)
    names = [n for n, _, _ in model.signature.inputs]
    outs = model.executable.call_flat(*_parse_inputs(args.input, names))
    paths = args.output or []
    if paths and len(paths) != len(outs):
        raise ValueError(f"the model has {len(outs)} outputs; give one --output per output")
    for k, arr in enumerate(outs):
        if paths:
            np.save(paths[k], arr, allow_pickle=False)
            print(f"output {k}: {arr.dtype}{list(arr.shape)} -> {paths[k]}")
        else:
            print(f"output {k}: {arr.dtype}{list(arr.shape)}\n{arr}")
    return 0


def _random_inputs(sig, batch: int) -> list[np.ndarray]:
    """Inputs for bench and profile: every symbolic dim `batch`; floats normal, ints 0."""
    env = {s: batch for s in sig.symbols}
    rng = np.random.default_rng(0)
    arrays = []
    for name, dtype, shape in sig.inputs:
        dims = output_shape([d if isinstance(d, int) else [1, [d]] for d in shape], env)
        nbytes = np.dtype(dtype).itemsize
        for d in dims:
            nbytes *= d
        if nbytes > MAX_BENCH_BYTES:
            raise ValueError(f"--batch {batch}: input {name} would take {_size(nbytes)} "
                             f"(at most {_size(MAX_BENCH_BYTES)} per input); use a smaller batch")
        if dtype.startswith("float"):
            arrays.append(rng.standard_normal(dims).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.random(dims) < 0.5)
        else:
            arrays.append(np.zeros(dims, dtype))
    return arrays


def cmd_profile(args) -> int:
    model = load(args.artifact)
    arrays = _random_inputs(model.signature, args.batch)
    result = model.profile_flat(arrays, repeat=args.repeat)
    print(f"{args.artifact}: batch {args.batch}")
    print(result)
    if args.json:
        result.save_json(args.json)
    return 0


def cmd_view(args) -> int:
    from .view import artifact_view, write_html
    data = artifact_view(args.artifact)
    prof = None
    if args.profile:
        model = load(args.artifact)
        prof = model.profile_flat(_random_inputs(model.signature, args.batch), args.repeat)
    out = args.output or os.path.splitext(args.artifact)[0] + ".html"
    write_html(out, data, prof)
    print(f"{args.artifact}: wrote {out}" + (f" (profiled at batch {args.batch})" if prof else ""))
    return 0


def cmd_bench(args) -> int:
    model = load(args.artifact)
    arrays = _random_inputs(model.signature, args.batch)
    run = model.executable.call_flat
    run(*arrays)  # warm-up
    times = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < args.min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        run(*arrays)
        times.append(time.perf_counter() - start)
        if len(times) >= args.max_calls:
            break
    median = statistics.median(times)
    print(f"{args.artifact}: batch {args.batch}, {len(times)} calls, median {median * 1e3:.3f} ms "
          f"(min {min(times) * 1e3:.3f} ms), {args.batch / median:,.0f} samples/s")
    return 0


def cmd_unpack(args) -> int:
    """Writes the library, the C header and the weights (.npy and raw .bin) for use from C."""
    manifest, members = read_manifest(args.artifact)
    if "library" not in manifest:
        raise LoadError(f"{args.artifact}: a {manifest['target'].get('kind')} artifact has no "
                        f"native library to unpack for C (its code is kernels/module.ptx)")
    os.makedirs(os.path.join(args.directory, "weights"), exist_ok=True)
    for src, dst in ((manifest["library"], "graph.so"),
                     ("include/graphc_model.h", "graphc_model.h")):
        with open(os.path.join(args.directory, dst), "wb") as f:
            f.write(members[src])
    for k, c in enumerate(manifest["constants"]):
        arr = np.load(io.BytesIO(members[c["file"]]), allow_pickle=False)
        np.save(os.path.join(args.directory, "weights", f"{k}.npy"), arr, allow_pickle=False)
        arr.tofile(os.path.join(args.directory, "weights", f"{k}.bin"))
    print(f"unpacked {args.artifact} into {args.directory}: graph.so, graphc_model.h, "
          f"{len(manifest['constants'])} weight file(s)")
    return 0


SPEC_DTYPES = ("float32", "float64", "int32", "int64", "bool")


def _parse_spec(text: str):
    """NAME=DIM,DIM,...[:DTYPE] -> (name, shape, dtype); a DIM is an int >= 0 or a symbol
    (an identifier); no DIMs is a 0-d input (`lr=:float32`)."""
    usage = "expected NAME=DIM,DIM[:DTYPE], e.g. x=B,784:float32"
    name, eq, rest = text.partition("=")
    if not eq or not name.strip().isidentifier():
        raise ValueError(f"--spec {text!r}: {usage} (NAME must be an identifier)")
    dims, colon, dtype = rest.partition(":")
    if colon and dtype not in SPEC_DTYPES:
        raise ValueError(f"--spec {text!r}: dtype {dtype!r} is not one of "
                         f"{', '.join(SPEC_DTYPES)}")
    shape = []
    for d in (dims.split(",") if dims.strip() else []):
        d = d.strip()
        if d.isdigit():
            shape.append(int(d))
        elif d.isidentifier():
            shape.append(d)
        else:
            raise ValueError(f"--spec {text!r}: dimension {d!r} is neither a size >= 0 nor a "
                             f"symbol name; {usage}")
    return name.strip(), tuple(shape), dtype or "float32"


def _check_arity(fn, n_specs: int, where: str) -> None:
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if n_specs < len(required) or (n_specs > len(params) and not varargs):
        raise ValueError(f"{where} takes {len(required)} argument(s) "
                         f"({', '.join(p.name for p in params)}), got {n_specs} --spec")


def cmd_compile(args) -> int:
    import importlib

    import graphc  # the compiler: only this subcommand needs it

    if ":" not in args.target:
        raise ValueError(f"{args.target!r}: expected module:function")
    module_name, func_name = args.target.split(":", 1)
    sys.path.insert(0, os.getcwd())
    parsed = [_parse_spec(text) for text in args.spec]   # before importing user code
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure of the user's module
        raise ValueError(f"cannot import {module_name}: {type(err).__name__}: {err}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no function {func_name}")
    _check_arity(fn, len(parsed), args.target)
    specs = [graphc.tensor(shape, dtype, name) for name, shape, dtype in parsed]
    compiled = graphc.compile(fn, *specs, cpu=args.cpu)
    compiled.export(args.output)
    print(f"compiled {args.target} ({len(compiled.kernels)} kernels) -> {args.output}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit status 2, like every other error."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value >= 0 and value < 1e6):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in [0, 1e6), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphc", description="graphc compiled-model tool")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="show an artifact's signature, target and kernels")
    s.add_argument("artifact")
    s.set_defaults(run=cmd_inspect)
    s = sub.add_parser("run", help="run an artifact on .npy inputs")
    s.add_argument("artifact")
    s.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    s.add_argument("--output", action="append", metavar="FILE.npy")
    s.set_defaults(run=cmd_run)
    s = sub.add_parser("bench", help="time an artifact on random inputs")
    s.add_argument("artifact")
    s.add_argument("--batch", type=_positive_int, default=256, help="size of every symbolic dim")
    s.add_argument("--seconds", type=_seconds, default=2.0)
    s.add_argument("--min-calls", type=_positive_int, default=20)
    s.add_argument("--max-calls", type=_positive_int, default=100000)
    s.set_defaults(run=cmd_bench)
    s = sub.add_parser("profile", help="per-kernel times, bytes and FLOPs on random inputs")
    s.add_argument("artifact")
    s.add_argument("--batch", type=_positive_int, default=256, help="size of every symbolic dim")
    s.add_argument("--repeat", type=_positive_int, default=20, help="calls timed per build")
    s.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    s.set_defaults(run=cmd_profile)
    s = sub.add_parser("view", help="write a self-contained HTML page of the graph, its "
                       "kernels and buffer plan")
    s.add_argument("artifact")
    s.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="the page (default: the artifact's name with .html)")
    s.add_argument("--profile", action="store_true",
                   help="also time each kernel on random inputs and show time bars")
    s.add_argument("--batch", type=_positive_int, default=256, help="size of every symbolic dim")
    s.add_argument("--repeat", type=_positive_int, default=20, help="calls timed per build")
    s.set_defaults(run=cmd_view)
    s = sub.add_parser("unpack", help="write library, C header and weights for use from C")
    s.add_argument("artifact")
    s.add_argument("directory")
    s.set_defaults(run=cmd_unpack)
    s = sub.add_parser("compile", help="compile module:function into an artifact")
    s.add_argument("target", metavar="module:function")
    s.add_argument("--spec", action="append", default=[], metavar="NAME=DIMS[:DTYPE]",
                   help="one per argument, e.g. x=B,784:float32")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--cpu", default=None, help="x86-64-v2 / v3 / v4 for a portable artifact")
    s.set_defaults(run=cmd_compile)
    return p


def main(argv=None) -> int:
    """Every failure is one line on stderr and exit status 2 (usage errors included)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"graphc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - whatever went wrong, as one line
        print(f"graphc {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    known = isinstance(err, (RuntimeErrorBase, ValueError, OSError)) or \
        type(err).__module__.startswith("graphc")
    if not known or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
