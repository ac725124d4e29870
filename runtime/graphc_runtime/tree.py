"""Pytrees: nested tuples, lists, dicts (str keys, insertion order) and None around leaves.

A compiled graph takes and returns flat lists of arrays; its signature keeps the structure
(a TreeDef, stored as JSON in artifacts), so callers pass and get back the nested values they
traced with. The runtime owns this contract; the compiler's graphc.tree builds on it.
Every walk uses an explicit stack: a deeply nested value cannot exhaust Python's recursion.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

LEAF, NONE, TUPLE, LIST, DICT = "leaf", "none", "tuple", "list", "dict"


@dataclass(frozen=True, eq=False)
class TreeDef:
    """The structure of a pytree with its leaves taken out. Equal structures compare equal
    (by their text, so comparing deep structures needs no recursion)."""

    kind: str
    children: tuple["TreeDef", ...] = ()
    keys: tuple[str, ...] = ()       # dict keys, in insertion order
    num_leaves: int = 1

    @classmethod
    def node(cls, kind: str, children=(), keys=()) -> "TreeDef":
        children = tuple(children)
        count = 1 if kind == LEAF else sum(c.num_leaves for c in children)
        return cls(kind, children, tuple(keys), count)

    @classmethod
    def flat(cls, n: int) -> "TreeDef":
        """A tuple of n leaves: the structure of a plain argument list."""
        return cls.node(TUPLE, [LEAF_DEF] * n)

    @property
    def is_leaf(self) -> bool:
        return self.kind == LEAF

    @property
    def is_flat_tuple(self) -> bool:
        return self.kind == TUPLE and all(c.kind == LEAF for c in self.children)

    def __str__(self) -> str:
        text = self.__dict__.get("_text")
        if text is None:
            text = _describe(self)
            object.__setattr__(self, "_text", text)
        return text

    def __eq__(self, other) -> bool:
        return isinstance(other, TreeDef) and (self is other or str(self) == str(other))

    def __hash__(self) -> int:
        return hash(str(self))

    # -- JSON: a leaf is "*", None is null, containers are {"tuple"|"list": [...]} and
    # {"dict": [[key, child], ...]} (a list of pairs keeps the order).
    def to_json(self):
        return _to_json(self)

    @classmethod
    def from_json(cls, data) -> "TreeDef":
        """Parses to_json's output; raises ValueError on anything malformed."""
        return _from_json(data)


LEAF_DEF = TreeDef(LEAF)
NONE_DEF = TreeDef(NONE, num_leaves=0)


def _kind_of(value) -> str:
    if value is None:
        return NONE
    if isinstance(value, tuple):   # namedtuples too (they come back as plain tuples)
        return TUPLE
    if isinstance(value, list):
        return LIST
    if isinstance(value, dict):
        return DICT
    return LEAF


def _items(value, kind: str) -> list:
    if kind == DICT:
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"pytree dict keys must be str, got {type(key).__name__} "
                                f"{key!r}")
        return list(value.values())
    return list(value)


def flatten(tree, is_leaf=None) -> tuple[list, TreeDef]:
    """The leaves of `tree` in order (depth first, dicts in insertion order) and its TreeDef.

    `is_leaf(x)`, when given, can stop the walk at a container (treating it as a leaf).
    """
    leaves: list = []
    # post-order with an explicit stack: (value, kind, child defs built so far)
    done: list[TreeDef] = []
    stack: list = [(tree, None)]
    while stack:
        value, state = stack.pop()
        if state is None:
            kind = LEAF if (is_leaf is not None and is_leaf(value)) else _kind_of(value)
            if kind == LEAF:
                leaves.append(value)
                done.append(LEAF_DEF)
            elif kind == NONE:
                done.append(NONE_DEF)
            else:
                items = _items(value, kind)
                stack.append((value, (kind, len(items), len(done))))
                for item in reversed(items):
                    stack.append((item, None))
        else:
            kind, n, base = state
            children = done[base:base + n]
            del done[base:]
            keys = tuple(value) if kind == DICT else ()
            done.append(TreeDef.node(kind, children, keys))
    return leaves, done[0]


def unflatten(treedef: TreeDef, leaves) -> object:
    """Rebuilds the structure `treedef` around `leaves` (in flatten's order)."""
    leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(f"unflatten: the structure {treedef} has {treedef.num_leaves} leaves, "
                         f"got {len(leaves)} values")
    if treedef.kind == LEAF:
        return leaves[0]
    if treedef.kind == NONE:
        return None
    pos = 0
    stack: list = [[treedef, [], 0]]   # frames: container, its items so far, next child
    while True:
        frame = stack[-1]
        node, items, i = frame
        if i == len(node.children):
            stack.pop()
            value = _make(node, items)
            if not stack:
                return value
            stack[-1][1].append(value)
            continue
        frame[2] = i + 1
        child = node.children[i]
        if child.kind == LEAF:
            items.append(leaves[pos])
            pos += 1
        elif child.kind == NONE:
            items.append(None)
        else:
            stack.append([child, [], 0])


def _make(node: TreeDef, items: list):
    if node.kind == TUPLE:
        return tuple(items)
    if node.kind == LIST:
        return items
    return dict(zip(node.keys, items))


def _walk(treedef: TreeDef):
    """(path, node) for every node in flatten's order; a path is a tuple of keys/indices."""
    stack = [((), treedef)]
    while stack:
        path, node = stack.pop()
        yield path, node
        keys = node.keys if node.kind == DICT else range(len(node.children))
        for key, child in reversed(list(zip(keys, node.children))):
            stack.append((path + (key,), child))


def leaf_paths(treedef: TreeDef) -> list[tuple]:
    """The path (tuple of dict keys and sequence indices) of every leaf, in order."""
    return [path for path, node in _walk(treedef) if node.kind == LEAF]


def path_str(path: tuple, root: str = "", dotted: bool = False) -> str:
    """`params['w1'][0]` (Python syntax), or `params.w1.0` with dotted=True (C comments)."""
    text = root
    for key in path:
        if dotted:
            text += ("." if text else "") + str(key)
        else:
            text += f"[{key!r}]"
    return text


def arg_path(path: tuple, names) -> str:
    """The path of an argument-list leaf, its first key naming the argument: `params['w1']`."""
    if not names:
        return path_str(path, "tree")
    if not path:
        return "arguments"
    first = names[path[0]] if path[0] < len(names) else f"arg{path[0]}"
    return path_str(path[1:], first)


def flatten_as(treedef: TreeDef, tree, names=(), what: str = "input") -> list:
    """The leaves of `tree`, which must have the structure `treedef` (dicts matched by key;
    names: the top-level argument names used in messages). Raises InputError naming the
    first place where the structure differs."""
    leaves: list = []
    stack = [((), treedef, tree)]
    while stack:
        path, node, value = stack.pop()
        if node.kind == LEAF:
            leaves.append(value)
            continue
        got = _kind_of(value)
        where = arg_path(path, names)
        if node.kind == NONE:
            if value is not None:
                raise InputError(f"{what} {where}: expected None, got {type(value).__name__}")
            continue
        if got != node.kind:
            raise InputError(f"{what} {where}: expected {_article(node)}, got "
                             f"{type(value).__name__}")
        if node.kind == DICT:
            keys = list(value)
            if set(keys) != set(node.keys) or len(keys) != len(node.keys):
                missing = [k for k in node.keys if k not in value]
                extra = [k for k in keys if k not in node.keys]
                raise InputError(f"{what} {where}: expected a dict with keys "
                                 f"{list(node.keys)}, got keys {keys}"
                                 + (f" (missing {missing})" if missing else "")
                                 + (f" (unexpected {extra})" if extra else ""))
            items = [value[k] for k in node.keys]
            keys_or_index = node.keys
        else:
            items = list(value)
            if len(items) != len(node.children):
                raise InputError(f"{what} {where}: expected {_article(node)}, got a "
                                 f"{type(value).__name__} of length {len(items)}")
            keys_or_index = range(len(items))
        for key, child, item in reversed(list(zip(keys_or_index, node.children, items))):
            stack.append((path + (key,), child, item))
    return leaves


def _article(node: TreeDef) -> str:
    if node.kind == DICT:
        return f"a dict with keys {list(node.keys)}"
    if node.kind in (TUPLE, LIST):
        return f"a {node.kind} of length {len(node.children)}"
    return "None" if node.kind == NONE else "an array"


def _describe(treedef: TreeDef) -> str:
    """Compact text of a structure: `(*, {'w1': *, 'b1': *}, [*, None])`."""
    out: list[str] = []
    stack: list = [treedef]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if item.kind == LEAF:
            out.append("*")
            continue
        if item.kind == NONE:
            out.append("None")
            continue
        opening, closing = {TUPLE: ("(", ")"), LIST: ("[", "]"), DICT: ("{", "}")}[item.kind]
        parts: list = [opening]
        for k, child in enumerate(item.children):
            if k:
                parts.append(", ")
            if item.kind == DICT:
                parts.append(f"{item.keys[k]!r}: ")
            parts.append(child)
        if item.kind == TUPLE and len(item.children) == 1:
            parts.append(",")
        parts.append(closing)
        stack.extend(reversed(parts))
    return "".join(out)


def _to_json(treedef: TreeDef):
    # built bottom-up over a post-order walk, so deep structures need no recursion
    order = [node for _, node in _walk(treedef)]
    encoded: dict[int, object] = {}
    for node in reversed(order):
        if node.kind == LEAF:
            encoded[id(node)] = "*"
        elif node.kind == NONE:
            encoded[id(node)] = None
        elif node.kind == DICT:
            encoded[id(node)] = {DICT: [[k, encoded[id(c)]] for k, c in
                                        zip(node.keys, node.children)]}
        else:
            encoded[id(node)] = {node.kind: [encoded[id(c)] for c in node.children]}
    return encoded[id(treedef)]


def _from_json(data) -> TreeDef:
    # post-order over the JSON with an explicit stack
    done: list[TreeDef] = []
    stack: list = [(data, None)]
    while stack:
        item, state = stack.pop()
        if state is not None:
            kind, keys, base = state
            children = done[base:]
            del done[base:]
            done.append(TreeDef.node(kind, children, keys))
            continue
        if item == "*":
            done.append(LEAF_DEF)
        elif item is None:
            done.append(NONE_DEF)
        elif isinstance(item, dict) and len(item) == 1:
            (kind, body), = item.items()
            if kind not in (TUPLE, LIST, DICT) or not isinstance(body, list):
                raise ValueError(f"malformed tree structure: {str(item)[:80]}")
            if kind == DICT:
                if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                           for p in body):
                    raise ValueError(f"malformed dict in tree structure: {str(item)[:80]}")
                keys = tuple(p[0] for p in body)
                if len(set(keys)) != len(keys):
                    raise ValueError(f"duplicate dict keys in tree structure: {list(keys)}")
                children = [p[1] for p in body]
            else:
                keys, children = (), body
            stack.append((None, (kind, keys, len(done))))
            for child in reversed(children):
                stack.append((child, None))
        else:
            raise ValueError(f"malformed tree structure: {str(item)[:80]}")
    return done[0]
