"""split_module: one generated LLVM module as two, so LLVM optimizes and emits them on two
cores at once (llvmlite releases the GIL while LLVM runs; each part gets its own context).

Works on the text llvmlite prints: globals, declarations and metadata one line each, function
definitions from their `define` line to a line holding only `}`. Part 1 takes the biggest
movable functions (internal kernels and helpers that touch no global variable other than
constants) until it holds about half of the lines; part 0 keeps the rest, the entry points and
every global. A function one part calls in the other is made `hidden` (external to the
module, not exported from the library) and declared where it is called; the rest stay
internal, so LLVM still sees all their callers. Internal constants are copied into both
parts (unused copies are dropped by LLVM).
"""
from __future__ import annotations

import re

_NAME = re.compile(r'@"([^"]+)"')
_DEFINE = re.compile(r'^define (internal )?(.*?)@"([^"]+)"\(')
_GLOBAL = re.compile(r'^@"([^"]+)" = (internal )?(unnamed_addr )?(constant|global) ')


def split_module(text: str, min_lines: int = 2000) -> list[str]:
    """[text] when the module is small (a second part would cost more than it saves) or has
    nothing to move; else two module texts that link into the same program."""
    lines = text.splitlines()
    if len(lines) < min_lines:
        return [text]
    header, globals_, declares, meta, functions = [], [], [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DEFINE.match(line)
        if m:
            end = i
            while lines[end] != "}":
                end += 1
            functions.append((m.group(3), bool(m.group(1)), lines[i:end + 1]))
            i = end + 1
            continue
        if line.startswith("@"):
            globals_.append(line)
        elif line.startswith("declare "):
            declares.append(line)
        elif line.startswith(("!", "attributes ")):
            meta.append(line)
        elif line.strip():
            header.append(line)
        i += 1
    constants = {}   # internal constant name -> its line (copied into both parts)
    variables = set()
    for g in globals_:
        m = _GLOBAL.match(g)
        if m and m.group(2) and m.group(4) == "constant":
            constants[m.group(1)] = g
        else:
            variables.add(m.group(1) if m else g)
    names = {name for name, _, _ in functions}
    uses = {name: set(_NAME.findall("\n".join(body[1:]))) for name, _, body in functions}

    def movable(name, internal, body):
        return internal and not name.endswith(".task") and not (uses[name] & variables)

    total = sum(len(body) for _, _, body in functions)
    moved: set[str] = set()
    size = 0
    for name, internal, body in sorted(functions, key=lambda f: -len(f[2])):
        if movable(name, internal, body) and size + len(body) <= total / 2:
            moved.add(name)
            size += len(body)
    if not moved:
        return [text]
    part_of = {name: 1 if name in moved else 0 for name in names}
    crossing = {callee for name in names for callee in uses[name] & names
                if part_of[callee] != part_of[name]}

    def definition(body):
        first = body[0]
        name = _DEFINE.match(first).group(3)
        if name in crossing:
            first = first.replace("define internal ", "define hidden ", 1)
        return [first] + body[1:]

    def declaration(body):
        first = body[0].replace("define internal ", "define hidden ", 1)
        return "declare " + first[len("define "):]

    parts = []
    for p in (0, 1):
        out = list(header) + (globals_ if p == 0 else list(constants.values()))
        out += declares
        for name, _, body in functions:
            if part_of[name] == p:
                out += definition(body)
            elif any(name in uses[n] for n in names if part_of[n] == p):
                out.append(declaration(body))
        parts.append("\n".join(out + meta) + "\n")
    return parts


__all__ = ["split_module"]
