"""Pytrees: a tensor (or array), or a tuple, list or dict (str keys, insertion order) of
pytrees, or None. The structure type and its JSON form live in the runtime (it rebuilds
results without the compiler); this module adds the helpers traced code uses.

>>> leaves, treedef = graphc.tree.flatten({"w": w, "b": b})
>>> graphc.tree.unflatten(treedef, [2 * x for x in leaves])
"""
from __future__ import annotations

from graphc_runtime.tree import (TreeDef, arg_path, flatten, flatten_as, leaf_paths,  # noqa: F401
                                 path_str, unflatten)


def tree_map(fn, tree, *rest, is_leaf=None):
    """fn applied to every leaf (with the matching leaves of `rest`, same structure)."""
    leaves, treedef = flatten(tree, is_leaf)
    others = [flatten_as(treedef, r, what="tree_map argument") for r in rest] if rest else []
    return unflatten(treedef, [fn(*xs) for xs in zip(leaves, *others)])


def leaves(tree) -> list:
    """The leaves of `tree`, in order."""
    return flatten(tree)[0]


__all__ = ["TreeDef", "flatten", "unflatten", "tree_map", "leaves", "leaf_paths", "path_str"]
