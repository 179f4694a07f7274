"""Token trees: the structure of a step's draft, independent of its tokens (layer L1).

A tree holds T draft nodes in topological order (every parent before its children). Node i has a
parent (-1: a child of the root, where the root is the last committed token), a depth (1 for the
root's children) and a rank among its siblings (0 = proposed first). The ancestor mask says which
nodes each node may attend to: its ancestors and itself. A chain of k tokens is the tree whose node i
has parent i - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

#: The largest tree accepted from a user specification.
MAX_TREE_NODES = 512


@dataclass(frozen=True)
class Tree:
    """Structure of T draft nodes; build with `from_parents`, `chain`, `from_branching` or `from_paths`."""

    parents: tuple[int, ...]
    depths: tuple[int, ...] = field(init=False)
    ranks: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        depths, ranks, seen = [], [], {}
        for i, parent in enumerate(self.parents):
            if not -1 <= parent < i:
                raise ValueError(
                    f"not a tree in topological order: node {i} has parent {parent} "
                    "(a parent must be -1 for the root or an earlier node)."
                )
            depths.append(1 if parent < 0 else depths[parent] + 1)
            ranks.append(seen.get(parent, 0))
            seen[parent] = ranks[-1] + 1
        object.__setattr__(self, "depths", tuple(depths))
        object.__setattr__(self, "ranks", tuple(ranks))

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_parents(cls, parents: Sequence[int]) -> Tree:
        return cls(tuple(int(p) for p in parents))

    @classmethod
    def chain(cls, k: int) -> Tree:
        """k nodes in a line."""
        return cls(tuple(range(-1, k - 1)))

    @classmethod
    def from_branching(cls, branching: Sequence[int]) -> Tree:
        """Every node at depth d has branching[d] children, e.g. (4, 2, 2, 1): 4 + 8 + 16 + 16 nodes."""
        if not branching or any(int(b) < 1 for b in branching):
            raise ValueError(
                f"a branching tree needs one or more factors >= 1 per depth, got {tuple(branching)}."
            )
        total, width = 0, 1
        for b in branching:
            width *= int(b)
            total += width
        if total > MAX_TREE_NODES:
            raise ValueError(f"branching {tuple(branching)} makes {total} nodes, more than {MAX_TREE_NODES}.")
        parents: list[int] = []
        frontier = [-1]
        for b in branching:
            next_frontier = []
            for parent in frontier:
                for _ in range(int(b)):
                    parents.append(parent)
                    next_frontier.append(len(parents) - 1)
            frontier = next_frontier
        return cls(tuple(parents))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> Tree:
        """Medusa-style choices: each path is a sequence of sibling ranks from the root, e.g.
        [(0,), (1,), (0, 0), (0, 1)]. Every prefix of a path must itself be a path; ranks of the children
        of one node must be 0, 1, ... without gaps."""
        unique = sorted({tuple(int(r) for r in path) for path in paths}, key=lambda p: (len(p), p))
        if not unique or any(len(p) == 0 for p in unique):
            raise ValueError("a tree needs at least one non-empty path.")
        if len(unique) > MAX_TREE_NODES:
            raise ValueError(f"the tree has {len(unique)} nodes, more than {MAX_TREE_NODES}.")
        index = {}
        parents = []
        for path in unique:
            parent_path = path[:-1]
            if parent_path and parent_path not in index:
                raise ValueError(f"not a tree: path {path} has no parent path {parent_path}.")
            if path[-1] > 0 and path[:-1] + (path[-1] - 1,) not in index:
                raise ValueError(f"not a tree: path {path} skips sibling rank {path[-1] - 1}.")
            index[path] = len(parents)
            parents.append(index[parent_path] if parent_path else -1)
        return cls(tuple(parents))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        """Depth of the deepest node (0 for an empty tree)."""
        return max(self.depths, default=0)

    @cached_property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    @cached_property
    def children(self) -> dict[int, list[int]]:
        """parent (-1 = root) -> its children in rank order."""
        kids: dict[int, list[int]] = {-1: []}
        for i, parent in enumerate(self.parents):
            kids.setdefault(parent, []).append(i)
        return kids

    def children_of(self, node: int) -> list[int]:
        return self.children.get(node, [])

    @cached_property
    def children_table(self) -> torch.Tensor:
        """[T + 1, C] long, C the most children of any node: row 0 lists the root's children, row
        i + 1 node i's, in rank order, padded with -1."""
        width = max((len(kids) for kids in self.children.values()), default=0)
        table = torch.full((len(self) + 1, width), -1, dtype=torch.long)
        for parent, kids in self.children.items():
            table[parent + 1, : len(kids)] = torch.tensor(kids, dtype=torch.long)
        return table

    @cached_property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self)) if not self.children_of(i))

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node`."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    @cached_property
    def paths(self) -> tuple[tuple[int, ...], ...]:
        """Root-to-leaf paths, one per leaf."""
        return tuple(tuple(self.path_to(leaf)) for leaf in self.leaves)

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """[T, T] bool: row i is True at i and at every ancestor of i."""
        t = len(self)
        mask = torch.eye(t, dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                mask[i] |= mask[parent]
        return mask

    def block_attention(self, num_pending: int) -> torch.Tensor:
        """[m + T, m + T] bool attention of a verification block: m pending committed tokens
        (causal among themselves, visible to every node), then the T nodes (ancestors and self)."""
        m, t = num_pending, len(self)
        attention = torch.zeros(m + t, m + t, dtype=torch.bool)
        attention[:, :m] = torch.tril(torch.ones(m + t, m, dtype=torch.bool))
        attention[m:, m:] = self.ancestor_mask
        return attention

    def depth_tensor(self) -> torch.Tensor:
        """[T] long depths."""
        return torch.tensor(self.depths, dtype=torch.long)

    def subtree(self, keep: Sequence[int]) -> tuple[Tree, list[int]]:
        """The tree restricted to `keep` (ancestor-closed node indices), and the kept old indices in
        the new order."""
        kept = sorted(set(int(i) for i in keep))
        new_index = {old: new for new, old in enumerate(kept)}
        parents = []
        for old in kept:
            parent = self.parents[old]
            if parent >= 0 and parent not in new_index:
                raise ValueError(f"subtree is not ancestor-closed: node {old} lacks its parent {parent}.")
            parents.append(new_index[parent] if parent >= 0 else -1)
        return Tree(tuple(parents)), kept


def parse_tree_spec(spec: object) -> Tree:
    """A user's tree: a Tree, a branching tuple like (4, 2, 2, 1), or a list of rank paths."""
    if isinstance(spec, Tree):
        if len(spec) == 0:
            raise ValueError("the tree is empty; give at least one node.")
        return spec
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, int) for s in spec):
        return Tree.from_branching(spec)
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, (list, tuple)) for s in spec):
        return Tree.from_paths(spec)
    raise ValueError(
        f"tree={spec!r} is not a tree specification; give a branching tuple such as (4, 2, 2, 1), "
        "a list of rank paths such as [(0,), (1,), (0, 0)], or a specdec.core.tree.Tree."
    )
