"""Tree acceptance: exactness by enumerating every proposal and every coin of one tree step."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.core.acceptance import (
    NodeKind,
    stochastic_tree_outcome,
    stochastic_tree_result,
    walk_tree,
)
from specdec.core.tree import Tree
from tests.acceptance_helpers import accept_greedy_tree, accept_stochastic_chain, accept_stochastic_tree
from tests.test_acceptance import target_distribution

V = 3
# root -> nodes 0, 1; node 0 -> nodes 2, 3; node 1 -> node 4 (depth 2)
TREE = Tree.from_parents([-1, -1, 0, 0, 1])
DEPTH = 2


class _NeedCoin(Exception):
    def __init__(self, prob):
        self.prob = prob


def enumerate_walk(tree, tokens, p, q, kinds):
    """[(probability, path, final distribution)] over every outcome of the acceptance coins."""
    outcomes = []

    def run(script):
        position = iter(script)

        def coin(node, prob):
            try:
                return next(position)[0]
            except StopIteration:
                raise _NeedCoin(prob) from None

        try:
            path, final = walk_tree(tree, tokens, p, q, kinds, coin)
        except _NeedCoin as need:
            run(script + [(True, need.prob)])
            run(script + [(False, 1.0 - need.prob)])
            return
        weight = 1.0
        for _, prob in script:
            weight *= prob
        if weight > 0:
            outcomes.append((weight, path, final))

    run([])
    return outcomes


def _tables(seed, support_zero=False):
    g = torch.Generator().manual_seed(seed)
    p, q = {}, {}
    for length in range(DEPTH + 1):
        for prefix in itertools.product(range(V), repeat=length):
            p_row = torch.rand(V, generator=g, dtype=torch.float64) ** 2 + 0.02
            q_row = torch.rand(V, generator=g, dtype=torch.float64) ** 2 + 0.02
            if support_zero and torch.rand(1, generator=g) < 0.5:
                p_row[int(torch.randint(V, (1,), generator=g))] = 0.0
            p[prefix] = p_row / p_row.sum()
            q[prefix] = q_row / q_row.sum()
    return p, q


def _sibling_proposals(kind, count, q_row, det_tokens):
    """[(probability, tokens)] for `count` siblings of one kind drawn from q_row."""
    if kind == NodeKind.DETERMINISTIC:
        return [(1.0, tuple(det_tokens[:count]))]
    if kind == NodeKind.SAMPLED:
        return [
            (float(torch.prod(q_row[list(toks)])), toks) for toks in itertools.product(range(V), repeat=count)
        ]
    result = []
    for toks in itertools.permutations(range(V), count):
        prob, left = 1.0, 1.0
        for t in toks:
            prob *= float(q_row[t]) / left
            left -= float(q_row[t])
        result.append((prob, toks))
    return result


def exact_tree_step_distribution(p, q, kinds_by_parent):
    """P(first DEPTH + 1 committed tokens) of one tree step (then exact target steps)."""
    kinds = torch.tensor([kinds_by_parent[TREE.parents[i]][TREE.ranks[i]] for i in range(len(TREE))])
    out = torch.zeros((V,) * (DEPTH + 1), dtype=torch.float64)

    def proposals(node, prefix):
        """Assign tokens to the subtree below `node`: yields (prob, {node: token})."""
        kids = TREE.children_of(node)
        if not kids:
            yield 1.0, {}
            return
        kid_kinds = kinds_by_parent[node]
        det = [int(t) for t in torch.argsort(q[prefix], descending=True)]  # chosen: the top tokens
        # siblings may mix kinds: group them, deterministic first (as listed), then sampled ones
        groups = {}
        for kid, kind in zip(kids, kid_kinds, strict=True):
            groups.setdefault(kind, []).append(kid)
        group_lists = []
        for kind, members in groups.items():
            group_lists.append(
                [
                    (prob, dict(zip(members, toks, strict=True)))
                    for prob, toks in _sibling_proposals(kind, len(members), q[prefix], det)
                ]
            )
        for combo in itertools.product(*group_lists):
            prob = 1.0
            assign = {}
            for part_prob, part in combo:
                prob *= part_prob
                assign.update(part)
            sub = [proposals(kid, prefix + (assign[kid],)) for kid in kids]
            for subcombo in itertools.product(*[list(s) for s in sub]):
                total = prob
                merged = dict(assign)
                for sub_prob, sub_assign in subcombo:
                    total *= sub_prob
                    merged.update(sub_assign)
                yield total, merged

    for prob, assign in proposals(-1, ()):
        if prob == 0:
            continue
        tokens = torch.tensor([assign[i] for i in range(len(TREE))])
        prefixes = [tuple(int(tokens[j]) for j in TREE.path_to(i)) for i in range(len(TREE))]
        p_rows = torch.stack([p[()]] + [p[pre] for pre in prefixes])  # [T + 1, V]
        q_rows = torch.stack([q[pre[:-1]] for pre in prefixes])  # [T, V]: the parent's q
        for weight, path, final in enumerate_walk(TREE, tokens, p_rows, q_rows, kinds):
            head = tuple(int(tokens[i]) for i in path)
            for y in range(V):
                for tail in itertools.product(range(V), repeat=DEPTH - len(head)):
                    seq = head + (y,) + tail
                    mass = prob * weight * float(final[y])
                    for j in range(len(head) + 1, DEPTH + 1):
                        mass *= float(p[seq[:j]][seq[j]])
                    out[seq] += mass
    return out


S, W, D = NodeKind.SAMPLED, NodeKind.SAMPLED_WITHOUT_REPLACEMENT, NodeKind.DETERMINISTIC
KIND_SETS = {
    "iid": {-1: [S, S], 0: [S, S], 1: [S]},
    "without-replacement": {-1: [W, W], 0: [W, W], 1: [W]},
    "deterministic": {-1: [D, D], 0: [D, D], 1: [D]},
    "mixed": {-1: [D, W], 0: [W, S], 1: [D]},
}


@pytest.mark.parametrize("kinds", sorted(KIND_SETS))
@pytest.mark.parametrize("seed", range(3))
def test_tree_step_output_equals_target_distribution(kinds, seed):
    p, q = _tables(seed, support_zero=seed == 2)
    produced = exact_tree_step_distribution(p, q, KIND_SETS[kinds])
    assert float(produced.sum()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(produced, target_distribution(p, V, DEPTH + 1), atol=1e-9, rtol=0)


def test_enumeration_catches_a_wrong_kind():
    """Treating without-replacement draws as i.i.d. (q not updated) is not exact: the test can fail."""
    p, q = _tables(0)
    kinds = KIND_SETS["without-replacement"]
    wrong = {parent: [S] * len(k) for parent, k in kinds.items()}

    # propose without replacement, but judge as i.i.d.
    original = _sibling_proposals

    def propose_without_replacement(kind, count, q_row, det):
        return original(W, count, q_row, det)

    globals()["_sibling_proposals"] = propose_without_replacement
    try:
        produced = exact_tree_step_distribution(p, q, wrong)
    finally:
        globals()["_sibling_proposals"] = original
    assert not torch.allclose(produced, target_distribution(p, V, DEPTH + 1), atol=1e-6)


def test_chain_shaped_tree_equals_chain_rule_draw_for_draw():
    g = torch.Generator().manual_seed(0)
    k, vocab = 4, 7
    for trial in range(200):
        p = torch.softmax(torch.randn(k + 1, vocab, generator=g), -1)
        q = torch.softmax(torch.randn(k, vocab, generator=g), -1)
        drafts = torch.multinomial(q, 1, generator=g)[:, 0]
        g1 = torch.Generator().manual_seed(trial)
        g2 = torch.Generator().manual_seed(trial)
        assert accept_stochastic_tree(Tree.chain(k), drafts, p, q, None, g1) == accept_stochastic_chain(
            drafts, p, q, g2
        )


def _walk_reference(tree, tokens, p, q, kinds, generator):
    """The rule node by node (`walk_tree`), drawing the same uniforms and token as the library."""
    u = torch.rand(len(tree), generator=generator, dtype=p.dtype).tolist()
    path, final = walk_tree(tree, tokens, p, q, kinds, lambda node, prob: u[node] < prob)
    return path, int(torch.multinomial(final, 1, generator=generator))


@pytest.mark.parametrize("seed", range(6))
def test_stochastic_tree_rule_on_the_device_equals_the_node_by_node_walk(seed):
    """At a realistic size (V 2000, up to 40 nodes, mixed proposal kinds among siblings), the rule
    evaluated for all nodes at once (what runs on GPUs) takes the same path and draws the same token
    as `walk_tree`."""
    g = torch.Generator().manual_seed(seed)
    vocab = 2000
    for trial in range(25):
        parents = [-1]
        for i in range(1, int(torch.randint(1, 40, (), generator=g))):
            parents.append(int(torch.randint(-1, i, (), generator=g)))
        tree = Tree.from_parents(parents)
        t = len(tree)
        kinds = torch.randint(0, 3, (t,), generator=g)
        # siblings drawn without replacement share their parent's q
        p = torch.softmax(torch.randn(t + 1, vocab, generator=g) * 3, -1)
        parent_q = torch.softmax(torch.randn(t + 1, vocab, generator=g) * 3, -1)  # row i + 1: at node i
        q = parent_q[torch.tensor(parents) + 1]  # [T, V] each node's parent's q
        # tokens from near the target's top so that acceptances happen
        tokens = torch.multinomial(p[torch.tensor(parents) + 1], 1, generator=g)[:, 0]
        g1 = torch.Generator().manual_seed(1000 * seed + trial)
        g2 = torch.Generator().manual_seed(1000 * seed + trial)
        values = stochastic_tree_outcome(tree, tokens, p, q, kinds, g1, parallel=True).tolist()
        got = stochastic_tree_result(values)
        path, token = _walk_reference(tree, tokens, p, q, kinds, g2)
        assert (got.path, got.next_token) == (path, token), (seed, trial, parents)


def test_greedy_tree_follows_target_argmax():
    # root children tokens [5, 7]; node 1 (7) -> node 2 (3), node 3 (4)
    tree = Tree.from_parents([-1, -1, 1, 1])
    tokens = torch.tensor([5, 7, 3, 4])
    scores = torch.zeros(5, 9)
    scores[0, 7] = 1  # at root the target wants 7 -> node 1
    scores[2, 4] = 1  # after node 1 the target wants 4 -> node 3
    scores[4, 8] = 1  # after node 3: 8
    result = accept_greedy_tree(tree, tokens, scores)
    assert result.path == (1, 3) and result.next_token == 8
    scores[0] = 0
    scores[0, 2] = 1  # nothing matches at the root
    assert accept_greedy_tree(tree, tokens, scores).path == ()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kinds=st.sampled_from(sorted(KIND_SETS)), zeros=st.booleans())
def test_tree_step_exact_for_random_distributions(seed, kinds, zeros):
    """Hypothesis: random p and q (with zeros in p where q has mass) and every proposal kind."""
    p, q = _tables(seed, support_zero=zeros)
    produced = exact_tree_step_distribution(p, q, KIND_SETS[kinds])
    assert torch.allclose(produced, target_distribution(p, V, DEPTH + 1), atol=1e-9, rtol=0)
