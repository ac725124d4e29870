"""The on-disk build cache every backend uses: one folder per key under cache_root().

Assumes a backend's build writes only into the folder it is given. Guarantees: an entry is
complete when it is visible (a build fills a private `.build-*` folder, writes the `done`
marker last and renames the folder into place); two processes or threads that build the same
key at once publish one complete entry (the first rename wins, the other drops its copy,
which is identical); a folder left by an interrupted build (no marker) is replaced.
`cache=False` builds into a private folder outside the cache, removed with its result.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from typing import Callable

import llvmlite
import numpy as np

from .ir.graph import Graph
from .ops.registry import OPS

DONE = "done"


def _compiler_fingerprint() -> str:
    """Hash of the compiler's own sources: editing the code generator invalidates the cache."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith((".py", ".c")):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


COMPILER_FINGERPRINT = _compiler_fingerprint()


def cache_root() -> str:
    return os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphc")


def graph_key(graph: Graph, target: str, fused: bool) -> str:
    """The cache key: compiler, LLVM, target (e.g. "cpu|<triple>|<cpu>|" or "cuda|sm_80"),
    fusion, the graph and its constants."""
    h = hashlib.sha256()
    for part in (COMPILER_FINGERPRINT, llvmlite.__version__, target, str(fused),
                 graph.canonical()):
        h.update(part.encode())
        h.update(b"\0")
    for node in graph.nodes:
        if OPS[node.op].source == "constant":
            h.update(np.ascontiguousarray(node.attrs["value"]).tobytes())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    """A built binary's folder: `hit` when it came from the cache, `private` for cache=False."""

    key: str
    directory: str
    hit: bool = False
    private: bool = False

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def read(self, name: str) -> str:
        with open(self.path(name)) as f:
            return f.read()

    def write(self, name: str, text: str) -> None:
        """Adds a file made after the build (assembly on request), atomically."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path(name))


def lookup(key: str) -> Entry | None:
    directory = os.path.join(cache_root(), key)
    if os.path.exists(os.path.join(directory, DONE)):
        return Entry(key, directory, hit=True)
    return None


def fetch(key: str, build: Callable[[str], None], cache: bool = True) -> Entry:
    """The entry for `key`: from the cache, or made by build(folder) and published."""
    if cache:
        entry = lookup(key)
        if entry is not None:
            return entry
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=root) if cache else \
        tempfile.mkdtemp(prefix=f"graphc-uncached-{key[:8]}-")
    try:
        build(tmp)
        with open(os.path.join(tmp, DONE), "w") as f:
            f.write("ok\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not cache:
        return Entry(key, tmp, private=True)
    try:
        return Entry(key, _publish(tmp, os.path.join(root, key)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # renamed into place, or not needed


def _publish(tmp: str, directory: str) -> str:
    for _ in range(3):
        try:
            os.replace(tmp, directory)
            return directory
        except OSError:
            if os.path.exists(os.path.join(directory, DONE)):
                return directory   # another build of the same key won: theirs is identical
            # an interrupted build's leftover (or a loser of another race is removing it)
            shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)   # the error, if the folder still cannot be replaced
    return directory


def release_with(owner, entry: Entry) -> None:
    """Removes a private (cache=False) entry's folder when `owner` is collected."""
    if entry.private:
        weakref.finalize(owner, shutil.rmtree, entry.directory, True)


__all__ = ["Entry", "cache_root", "graph_key", "fetch", "lookup", "release_with",
           "COMPILER_FINGERPRINT"]
