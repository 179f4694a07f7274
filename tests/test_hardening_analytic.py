"""Analytic exactness of the acceptance rules: hypothesis draws p and q, enumeration proves the output.

For a random target p(.|prefix) and draft q(.|prefix) over a vocabulary of 3..6 tokens (float64;
dense, top-k or top-p truncated, with zeros, one-hot), every draft outcome and every acceptance
branch of one step is enumerated with its exact probability. The tokens the step emits, completed
by the target itself after the step (induction over steps), must follow the target's own joint
distribution of the first depth + 1 tokens to 1e-9; that joint contains the distribution of the first
emitted token and of the first two.

The library's functions run for real: `accept_stochastic_chain` and `accept_stochastic_tree` draw
their uniforms with `torch.rand` and their last token with `sample`; the tests replace those two
names inside `specdec.core.acceptance` by scripted uniforms placed just inside each branch and by a hook
that records the distribution handed to `sample`. For the chain the branch probabilities are the
test's own min(1, p / q), so a wrong threshold in the library shows up as a branch it did not take.
For trees `walk_tree(coin)` exposes each coin; the tree's draft tokens are enumerated lazily (only
nodes the walk visits get a token), and every enumerated outcome is replayed through
`accept_stochastic_tree`, which must take the same path and hand the same distribution to `sample`,
and through the rule's all-nodes-at-once form (`stochastic_tree_outcome(parallel=True)`, the GPU path).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from specdec.core import acceptance
from specdec.core.acceptance import (
    NodeKind,
    stochastic_tree_outcome,
    stochastic_tree_result,
    walk_tree,
)
from specdec.core.tree import Tree
from tests.acceptance_helpers import accept_stochastic_chain, accept_stochastic_tree

TOL = 1e-9
EPS = 1e-9  # relative margin that places a scripted uniform inside a branch
DTYPE = torch.float64
MODES = ("dense", "top-k", "top-p", "zeros", "one-hot")
S, W, D = NodeKind.SAMPLED, NodeKind.SAMPLED_WITHOUT_REPLACEMENT, NodeKind.DETERMINISTIC
HYPOTHESIS = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# ---------------------------------------------------------------------------------------------- tables
class Tables:
    """p(.|prefix) and q(.|prefix) for every prefix up to `depth` tokens, and chosen tokens.

    p and q: prefix tuple -> [V] float64; chosen: prefix -> [V] a deterministic source's ranking (an
    n-gram copy or a top-k pick: it may name tokens where p or q is 0).
    """

    def __init__(self, vocab: int, depth: int, seed: int, p_spec: dict, q_spec: dict, min_q_support: int = 1):
        self.vocab = vocab
        g = torch.Generator().manual_seed(seed)
        self.p: dict[tuple[int, ...], torch.Tensor] = {}
        self.q: dict[tuple[int, ...], torch.Tensor] = {}
        self.chosen: dict[tuple[int, ...], list[int]] = {}
        for length in range(depth + 1):
            for prefix in itertools.product(range(vocab), repeat=length):
                self.p[prefix] = _row(g, vocab, p_spec, 1)
                self.q[prefix] = _row(g, vocab, q_spec, min_q_support)
                self.chosen[prefix] = torch.randperm(vocab, generator=g).tolist()
        self._future: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def future(self, prefix: tuple[int, ...], m: int) -> np.ndarray:
        """[V] * m: P(the next m tokens | prefix) when the target generates them alone."""
        key = (prefix, m)
        if key not in self._future:
            if m == 0:
                self._future[key] = np.ones(())
            else:
                row = self.p[prefix].numpy()
                self._future[key] = np.stack(
                    [row[y] * self.future(prefix + (y,), m - 1) for y in range(self.vocab)]
                )
        return self._future[key]


def _row(g: torch.Generator, vocab: int, spec: dict, min_support: int) -> torch.Tensor:
    """One distribution [V] float64 built as generate() builds it: logits -> temperature -> truncation
    -> softmax. spec: mode (MODES), temperature, top_k, top_p; min_support: tokens always kept."""
    logits = torch.randn(1, vocab, generator=g, dtype=DTYPE) / spec["temperature"]  # [1, V]
    mode = spec["mode"]
    if mode == "one-hot":
        row = torch.zeros(vocab, dtype=DTYPE)
        row[int(torch.randint(vocab, (1,), generator=g))] = 1.0
        return row
    if mode == "top-k":
        logits = TopKLogitsWarper(spec["top_k"], min_tokens_to_keep=min_support)(None, logits)
    elif mode == "top-p":
        logits = TopPLogitsWarper(spec["top_p"], min_tokens_to_keep=min_support)(None, logits)
    elif mode == "zeros" and vocab > min_support:
        count = int(torch.randint(1, vocab - min_support + 1, (1,), generator=g))
        logits[0, torch.randperm(vocab, generator=g)[:count]] = -float("inf")
    return torch.softmax(logits[0], dim=-1)


def distribution_specs(vocab: int, modes=MODES):
    """Hypothesis strategy for one side's processing (mode, temperature, top_k, top_p)."""
    return st.fixed_dictionaries(
        {
            "mode": st.sampled_from(modes),
            "temperature": st.sampled_from([0.5, 1.0, 2.0]),
            "top_k": st.integers(1, vocab),
            "top_p": st.floats(0.2, 0.95),
        }
    )


# ----------------------------------------------------------------------------- scripted randomness
class _ScriptedTorch:
    """Stands in for `torch` inside specdec.core.acceptance: `rand` returns the scripted uniforms."""

    def __init__(self, uniforms: list[float]) -> None:
        self._uniforms = uniforms

    def rand(self, n: int, **kwargs) -> torch.Tensor:
        return torch.tensor(self._uniforms[:n], dtype=kwargs.get("dtype") or DTYPE)  # [n]

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextmanager
def scripted(uniforms: list[float], handed_to_sample: list[torch.Tensor]):
    """Run specdec.core.acceptance on `uniforms`; record each distribution ([V]) given to `sample`."""

    def record(probs: torch.Tensor, generator) -> torch.Tensor:
        handed_to_sample.append(probs.clone())
        return torch.tensor(0)

    with (
        mock.patch.object(acceptance, "torch", _ScriptedTorch(uniforms)),
        mock.patch.object(acceptance, "sample", record),
    ):
        yield


def inside(accept: bool, prob: float) -> float:
    """A uniform u that takes the branch: u < prob accepts, u >= prob rejects."""
    return prob * (1 - EPS) if accept else min(1.0, prob * (1 + EPS))


# --------------------------------------------------------------------------------------- chain rule
def library_chain(drafts: tuple[int, ...], p_rows, q_rows, uniforms: list[float]):
    """accept_stochastic_chain on scripted uniforms -> (accepted count, distribution [V] of the
    appended token). p_rows: [k + 1, V]; q_rows: [k, V] or None (deterministic drafts)."""
    handed: list[torch.Tensor] = []
    with scripted(uniforms, handed):
        result = accept_stochastic_chain(torch.tensor(drafts, dtype=torch.long), p_rows, q_rows)
    assert result.path == tuple(range(result.num_accepted))
    assert len(handed) == 1
    return result.num_accepted, handed[0]


def wrong_chain(drafts: tuple[int, ...], p_rows, q_rows, uniforms: list[float]):
    """A wrong rule for the guard test: accepts with min(1, p / q) but draws the correction token
    from p instead of the residual norm(max(p - q, 0))."""
    n = 0
    for i, x in enumerate(drafts):
        q_x = 1.0 if q_rows is None else float(q_rows[i, x])
        if not uniforms[i] < min(1.0, float(p_rows[i, x]) / q_x):
            break
        n += 1
    return n, p_rows[n]


def chain_step_joint(tables: Tables, k: int, deterministic: bool, rule=library_chain) -> np.ndarray:
    """[V] * (k + 1): exact P(first k + 1 tokens) of one chain step of k drafts, then the target.

    Drafts are drawn x_i ~ q(.|x_<i) (or are the deterministic source's first choice, q=None); branch
    n (the first n drafts kept) has probability prod_{i<n} a_i * (1 - a_n) with a_i = min(1, p/q)
    computed here; the rule must take that branch on uniforms just inside it.
    """
    vocab = tables.vocab
    out = np.zeros((vocab,) * (k + 1))
    if deterministic:
        drafts: tuple[int, ...] = ()
        for _ in range(k):
            drafts += (tables.chosen[drafts][0],)
        outcomes = [(1.0, drafts)]
    else:
        outcomes = []
        for drafts in itertools.product(range(vocab), repeat=k):
            weight = float(np.prod([float(tables.q[drafts[:i]][drafts[i]]) for i in range(k)]))
            if weight > 0:
                outcomes.append((weight, drafts))
    for weight, drafts in outcomes:
        p_rows = torch.stack([tables.p[drafts[:i]] for i in range(k + 1)])  # [k + 1, V]
        q_rows = None if deterministic else torch.stack([tables.q[drafts[:i]] for i in range(k)])  # [k, V]
        a = [
            min(1.0, float(p_rows[i, x]) / (1.0 if q_rows is None else float(q_rows[i, x])))
            for i, x in enumerate(drafts)
        ]
        for n in range(k + 1):
            branch = float(np.prod(a[:n])) * (1.0 - a[n] if n < k else 1.0)
            if branch == 0.0:
                continue
            uniforms = [inside(True, a[i]) for i in range(n)]
            uniforms += [inside(False, a[n])] if n < k else []
            uniforms += [0.5] * (k - len(uniforms))
            kept, final = rule(drafts, p_rows, q_rows, uniforms)
            assert kept == n, f"drafts {drafts}: took branch {kept}, expected {n} (acceptance {a})"
            _add(out, tables, drafts[:n], final.numpy(), weight * branch, k + 1)
    return out


def _add(out: np.ndarray, tables: Tables, head: tuple[int, ...], final: np.ndarray, mass: float, length: int):
    """Add the step's outcome `head` + y (y ~ final, [V]), completed by the target, to `out`."""
    for y in range(tables.vocab):
        if final[y] > 0:
            seq = head + (y,)
            out[seq] += mass * final[y] * tables.future(seq, length - len(seq))


def assert_exact(out: np.ndarray, tables: Tables) -> None:
    """The step's joint over the first `out.ndim` tokens equals the target's, and so do the
    distributions of the first token and of the first two."""
    expected = tables.future((), out.ndim)
    assert abs(out.sum() - 1.0) < TOL, out.sum()
    first = tuple(range(1, out.ndim))
    assert np.abs(out.sum(axis=first) - expected.sum(axis=first)).max() < TOL
    assert np.abs(out.sum(axis=first[1:]) - expected.sum(axis=first[1:])).max() < TOL
    assert np.abs(out - expected).max() < TOL, np.abs(out - expected).max()


@st.composite
def chain_cases(draw):
    vocab = draw(st.integers(3, 6))
    k = draw(st.integers(1, 3 if vocab <= 5 else 2))
    return dict(
        vocab=vocab,
        k=k,
        seed=draw(st.integers(0, 2**31 - 1)),
        p_spec=draw(distribution_specs(vocab)),
        q_spec=draw(distribution_specs(vocab)),
        deterministic=draw(st.booleans()),
    )


@HYPOTHESIS
@given(chain_cases())
def test_chain_step_is_exact_for_random_truncated_distributions(case):
    tables = Tables(case["vocab"], case["k"], case["seed"], case["p_spec"], case["q_spec"])
    assert_exact(chain_step_joint(tables, case["k"], case["deterministic"]), tables)


@pytest.mark.parametrize("p_mode", MODES)
@pytest.mark.parametrize("q_mode", MODES)
def test_chain_step_is_exact_for_every_pair_of_processings(p_mode, q_mode):
    """Every pair of target / draft processings, with different top-k and top-p on each side."""
    p_spec = dict(mode=p_mode, temperature=1.0, top_k=2, top_p=0.6)
    q_spec = dict(mode=q_mode, temperature=0.5, top_k=3, top_p=0.8)
    tables = Tables(5, 2, 7, p_spec, q_spec)
    p_only = any(bool(((tables.p[x] > 0) & (tables.q[x] == 0)).any()) for x in tables.p)
    q_only = any(bool(((tables.q[x] > 0) & (tables.p[x] == 0)).any()) for x in tables.p)
    if q_mode in ("top-k", "zeros", "one-hot"):
        assert p_only, "the case should have tokens that p allows and q excludes"
    if p_mode in ("top-k", "zeros", "one-hot"):
        assert q_only, "the case should have tokens that q allows and p excludes"
    assert_exact(chain_step_joint(tables, 2, deterministic=False), tables)


def test_chain_guard_correction_from_p_is_caught():
    """The enumeration can fail: min(1, p / q) acceptance with the correction drawn from p (not the
    residual) gives a distribution different from the target's."""
    spec = dict(mode="dense", temperature=1.0, top_k=3, top_p=0.9)
    tables = Tables(4, 2, 3, spec, spec)
    right = chain_step_joint(tables, 2, deterministic=False)
    wrong = chain_step_joint(tables, 2, deterministic=False, rule=wrong_chain)
    expected = tables.future((), 3)
    assert np.abs(right - expected).max() < TOL
    assert abs(wrong.sum() - 1.0) < TOL  # still a distribution, just not the target's
    assert np.abs(wrong - expected).max() > 1e-3


# ---------------------------------------------------------------------------------------- tree rule
class _NeedToken(Exception):
    def __init__(self, node: int) -> None:
        self.node = node


class _NeedCoin(Exception):
    def __init__(self, node: int, prob: float) -> None:
        self.node, self.prob = node, prob


def _token_choices(tree: Tree, kinds: list[NodeKind], tables: Tables, assign: dict, node: int):
    """[(token, probability)] of node's draft token given its path and its earlier siblings."""
    parent = tree.parents[node]
    prefix = tuple(assign[i] for i in tree.path_to(parent)) if parent >= 0 else ()
    earlier = [c for c in tree.children_of(parent) if c < node]
    kind = kinds[node]
    if kind == D:  # the deterministic source's next choice among the D siblings
        rank = sum(kinds[c] == D for c in earlier)
        return [(tables.chosen[prefix][rank], 1.0)]
    q = tables.q[prefix].numpy().copy()  # [V]
    if kind == W:  # without replacement among the W siblings drawn before it
        for c in earlier:
            if kinds[c] == W:
                q[assign[c]] = 0.0
        q = q / q.sum()
    return [(x, float(q[x])) for x in range(tables.vocab) if q[x] > 0]


def _rows(tree: Tree, tables: Tables, assign: dict):
    """Tokens [T] (0 where not drawn yet), p [T + 1, V] (row i + 1 after node i), q [T, V] (each
    node's parent's q)."""
    tokens = [assign.get(i, 0) for i in range(len(tree))]
    paths = [tuple(tokens[j] for j in tree.path_to(i)) for i in range(len(tree))]
    p_rows = torch.stack([tables.p[()]] + [tables.p[path] for path in paths])  # [T + 1, V]
    q_rows = torch.stack([tables.q[path[:-1]] for path in paths])  # [T, V]
    return torch.tensor(tokens, dtype=torch.long), p_rows, q_rows


def tree_step_joint(tree: Tree, kinds: list[NodeKind], tables: Tables, replay: bool = True) -> np.ndarray:
    """[V] * (depth + 1): exact P(first depth + 1 tokens) of one tree step, then the target.

    Enumerates the walk of `walk_tree`: a visited node's token (from its proposal distribution)
    and then its coin; nodes the walk never visits are marginalised out. Each outcome is replayed
    through `accept_stochastic_tree` (same path, same distribution handed to `sample`).
    """
    kinds_t = torch.tensor([int(k) for k in kinds])  # [T]
    depth = tree.depth
    out = np.zeros((tables.vocab,) * (depth + 1))
    stack: list[tuple[dict, list, float]] = [({}, [], 1.0)]  # (tokens drawn, coins [(node, bool, a)], prob)
    while stack:
        assign, coins, weight = stack.pop()
        tokens, p_rows, q_rows = _rows(tree, tables, assign)
        script = iter(coins)

        def coin(node: int, prob: float, assign=assign, script=script) -> bool:
            if node not in assign:
                raise _NeedToken(node)
            step = next(script, None)
            if step is None:
                raise _NeedCoin(node, prob)
            assert step[0] == node
            return step[1]

        try:
            path, final = walk_tree(tree, tokens, p_rows, q_rows, kinds_t, coin)  # final: [V]
        except _NeedToken as need:
            for token, prob in _token_choices(tree, kinds, tables, assign, need.node):
                stack.append(({**assign, need.node: token}, coins, weight * prob))
            continue
        except _NeedCoin as need:
            assert 0.0 <= need.prob <= 1.0
            for accepted, prob in ((True, need.prob), (False, 1.0 - need.prob)):
                if prob > 0:
                    stack.append((assign, coins + [(need.node, accepted, need.prob)], weight * prob))
            continue
        if replay:
            uniforms = [0.5] * len(tree)
            for node, accepted, prob in coins:
                uniforms[node] = inside(accepted, prob)
            handed: list[torch.Tensor] = []
            with scripted(uniforms, handed):
                result = accept_stochastic_tree(tree, tokens, p_rows, q_rows, kinds_t)
            assert result.path == path and len(handed) == 1 and torch.equal(handed[0], final)
            # the same outcome from the rule's all-nodes-at-once form (what runs on GPUs)
            handed = []
            with scripted(uniforms, handed):
                values = stochastic_tree_outcome(tree, tokens, p_rows, q_rows, kinds_t, parallel=True)
            assert stochastic_tree_result(values.tolist()).path == path
            assert len(handed) == 1 and torch.equal(handed[0], final)
        _add(out, tables, tuple(assign[i] for i in path), final.numpy(), weight, depth + 1)
    return out


@st.composite
def tree_cases(draw):
    """A tree of <= 7 nodes and depth <= 3, a proposal kind per node, vocab 3..6, p and q specs."""
    vocab = draw(st.integers(3, 6))
    parents = [-1] * draw(st.integers(1, 3))
    frontier = list(range(len(parents)))
    for depth in (2, 3):
        grown = []
        for node in frontier:
            for _ in range(min(draw(st.integers(0, 2 if depth == 2 else 1)), 7 - len(parents))):
                parents.append(node)
                grown.append(len(parents) - 1)
        frontier = grown
    tree = Tree.from_parents(parents)
    kinds = [S] * len(tree)
    for kids in tree.children.values():
        group = draw(st.sampled_from(["sampled", "without-replacement", "deterministic", "mixed"]))
        for kid in kids:
            if group == "mixed":
                kinds[kid] = draw(st.sampled_from([S, W, D]))
            else:
                kinds[kid] = {"sampled": S, "without-replacement": W, "deterministic": D}[group]
    # siblings drawn without replacement need as many tokens in q's support
    most_w = max(sum(kinds[c] == W for c in kids) for kids in tree.children.values())
    q_modes = tuple(m for m in MODES if m != "one-hot" or most_w <= 1)
    return dict(
        vocab=vocab,
        tree=tree,
        kinds=kinds,
        min_q_support=max(most_w, 1),
        seed=draw(st.integers(0, 2**31 - 1)),
        p_spec=draw(distribution_specs(vocab)),
        q_spec=draw(distribution_specs(vocab, q_modes)),
    )


@HYPOTHESIS
@given(tree_cases())
def test_tree_step_is_exact_for_random_trees_kinds_and_truncations(case):
    tree = case["tree"]
    tables = Tables(
        case["vocab"], tree.depth, case["seed"], case["p_spec"], case["q_spec"], case["min_q_support"]
    )
    assert_exact(tree_step_joint(tree, case["kinds"], tables), tables)


TREES = {
    # two i.i.d. sampled chains of depth 2 sharing the root
    "sampled-chains": (Tree.from_parents([-1, -1, 0, 1]), [S, S, S, S]),
    # three root candidates without replacement, two of the first one's children too
    "without-replacement": (Tree.from_parents([-1, -1, -1, 0, 0]), [W, W, W, W, W]),
    # chosen tokens (top-k or n-gram copies), a chain below the first
    "deterministic": (Tree.from_parents([-1, -1, 0, 2]), [D, D, D, D]),
    # chosen then drawn siblings at the root, a without-replacement pair below
    "mixed": (Tree.from_parents([-1, -1, 0, 0, 1]), [D, W, W, W, S]),
}


@pytest.mark.parametrize("name", sorted(TREES))
@pytest.mark.parametrize(
    "p_mode, q_mode", [("top-k", "top-p"), ("top-p", "top-k"), ("one-hot", "dense"), ("zeros", "zeros")]
)
def test_tree_step_is_exact_for_named_shapes(name, p_mode, q_mode):
    tree, kinds = TREES[name]
    p_spec = dict(mode=p_mode, temperature=1.0, top_k=2, top_p=0.7)
    q_spec = dict(mode=q_mode, temperature=2.0, top_k=3, top_p=0.5)
    tables = Tables(4, tree.depth, 11, p_spec, q_spec, min_q_support=3)
    assert_exact(tree_step_joint(tree, kinds, tables), tables)


def test_tree_guard_correction_from_p_is_caught():
    """The tree enumeration can fail: a walk whose rejection leaves p unchanged (correction and later
    siblings judged against p, not the residual) is not exact."""
    tree, kinds = TREES["mixed"]
    spec = dict(mode="dense", temperature=1.0, top_k=3, top_p=0.9)
    tables = Tables(4, tree.depth, 5, spec, spec, min_q_support=3)
    with mock.patch.object(acceptance, "residual", lambda p, q: p):
        wrong = tree_step_joint(tree, kinds, tables, replay=False)
    expected = tables.future((), tree.depth + 1)
    assert abs(wrong.sum() - 1.0) < TOL
    assert np.abs(wrong - expected).max() > 1e-3
