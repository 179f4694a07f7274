"""Tree structure: builders, invariants (hypothesis), and bad specifications."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.core.tree import MAX_TREE_NODES, Tree, parse_tree_spec


@st.composite
def trees(draw):
    size = draw(st.integers(1, 40))
    parents = [draw(st.integers(-1, i - 1)) for i in range(size)]
    return Tree.from_parents(parents)


@settings(max_examples=150, deadline=None)
@given(trees())
def test_tree_invariants(tree):
    mask = tree.ancestor_mask
    t = len(tree)
    for i, parent in enumerate(tree.parents):
        assert parent < i  # parents before children
        assert tree.depths[i] == (1 if parent < 0 else tree.depths[parent] + 1)
        assert mask[i, i]
        # ancestor-closed: i sees j => i sees every ancestor of j
        for j in range(t):
            if mask[i, j]:
                assert j == i or mask[i, tree.parents[j]] or tree.parents[j] < 0
                assert j <= i
        assert int(mask[i].sum()) == tree.depths[i]  # exactly its ancestors and itself
    # paths cover the leaves and every node lies on some path
    assert {path[-1] for path in tree.paths} == set(tree.leaves)
    assert set().union(*[set(path) for path in tree.paths]) == set(range(t))
    for path in tree.paths:
        assert [tree.depths[n] for n in path] == list(range(1, len(path) + 1))
    # sibling ranks are 0, 1, ... in order
    for kids in tree.children.values():
        assert [tree.ranks[k] for k in kids] == list(range(len(kids)))


def test_builders():
    chain = Tree.chain(4)
    assert chain.is_chain and chain.parents == (-1, 0, 1, 2) and chain.depth == 4
    assert torch.equal(chain.ancestor_mask, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    branching = Tree.from_branching((4, 2, 2, 1))
    assert len(branching) == 4 + 8 + 16 + 16 and branching.depth == 4 and not branching.is_chain
    assert len(branching.children_of(-1)) == 4 and all(len(branching.children_of(i)) == 2 for i in range(4))
    paths = Tree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert paths.parents == (-1, -1, 0, 0, 1, 2)
    assert parse_tree_spec((2, 1)).parents == (-1, -1, 0, 1)
    assert parse_tree_spec([(0,), (0, 0)]).is_chain
    sub, kept = branching.subtree([0, 4, 5])
    assert sub.parents == (-1, 0, 0) and kept == [0, 4, 5]


@pytest.mark.parametrize(
    "spec, message",
    [
        ((), "not a tree specification"),
        ([], "not a tree specification"),
        ((3, 0), "factors >= 1"),
        ([(0,), (1, 0, 0)], "no parent path"),
        ([(0,), (2,)], "skips sibling rank"),
        ((8, 8, 8, 8), f"more than {MAX_TREE_NODES}"),
        ("chain", "not a tree specification"),
        (Tree.from_parents([]), "empty"),
    ],
)
def test_bad_tree_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_tree_spec(spec)


def test_parents_out_of_order():
    with pytest.raises(ValueError, match="not a tree in topological order"):
        Tree.from_parents([-1, 2, 0])
