"""Acceptance rules on hand-made distributions; exactness of the stochastic chain rule by enumeration."""

import itertools

import pytest
import torch

from specdec.core.acceptance import (
    acceptance_probability,
    one_hot_draft_probabilities,
)
from tests.acceptance_helpers import accept_greedy_chain, accept_stochastic_chain, next_token_distribution

V = 3  # vocabulary of the enumeration
K = 2  # draft length of the enumeration


def test_greedy_keeps_longest_matching_prefix_plus_target_token():
    scores = torch.full((4, 5), -1.0)
    for row, best in enumerate([3, 1, 4, 0]):
        scores[row, best] = 2.0
    result = accept_greedy_chain(torch.tensor([3, 1, 2]), scores)
    assert (result.num_accepted, result.next_token) == (2, 4)
    result = accept_greedy_chain(torch.tensor([3, 1, 4]), scores)
    assert (result.num_accepted, result.next_token) == (3, 0)
    result = accept_greedy_chain(torch.tensor([0, 1, 4]), scores)
    assert (result.num_accepted, result.next_token) == (0, 3)
    result = accept_greedy_chain(torch.tensor([], dtype=torch.long), scores[:1])
    assert (result.num_accepted, result.next_token) == (0, 3)


def _random_tables(seed: int, kind: str):
    """p(.|prefix) and q(.|prefix) for every prefix of length <= K over V tokens (float64)."""
    g = torch.Generator().manual_seed(seed)
    p, q = {}, {}
    for length in range(K + 1):
        for prefix in itertools.product(range(V), repeat=length):
            p_row = torch.rand(V, generator=g, dtype=torch.float64) ** 3
            q_row = torch.rand(V, generator=g, dtype=torch.float64) ** 3
            if kind == "q-zeros":  # q misses tokens p allows
                q_row[int(torch.randint(V, (1,), generator=g))] = 0.0
            if kind == "p-zeros":  # p truncated (top-k) where q is not
                p_row[int(torch.randint(V, (1,), generator=g))] = 0.0
            if kind == "one-hot-p":
                p_row = torch.zeros(V, dtype=torch.float64)
                p_row[int(torch.randint(V, (1,), generator=g))] = 1.0
            if kind == "deterministic-q":
                q_row = torch.zeros(V, dtype=torch.float64)
                q_row[int(torch.randint(V, (1,), generator=g))] = 1.0
            p[prefix] = p_row / p_row.sum()
            q[prefix] = q_row / q_row.sum()
    return p, q


def _exact_output_distribution(p, q):
    """P(first K + 1 committed tokens) of one chain step followed by exact target steps.

    Enumerates every draft outcome and every acceptance branch with the library's acceptance
    probabilities and next-token distributions; tokens after the step come from p (induction).
    """
    out = torch.zeros((V,) * (K + 1), dtype=torch.float64)
    for drafts in itertools.product(range(V), repeat=K):
        weight = 1.0
        for i in range(K):
            weight *= float(q[drafts[:i]][drafts[i]])
        if weight == 0.0:
            continue
        p_rows = torch.stack([p[drafts[:i]] for i in range(K + 1)])  # [K + 1, V]
        q_rows = torch.stack([q[drafts[:i]] for i in range(K)])  # [K, V]
        idx = torch.tensor(drafts)
        p_draft = p_rows[:K].gather(1, idx[:, None])[:, 0]
        accept = acceptance_probability(p_draft, q_rows.gather(1, idx[:, None])[:, 0])  # [K]
        reach = 1.0  # P(the first n drafts were accepted)
        for n in range(K + 1):
            branch = reach * (1.0 - float(accept[n])) if n < K else reach
            nxt = next_token_distribution(p_rows, q_rows, n)  # [V]
            for y in range(V):
                for tail in itertools.product(range(V), repeat=K - n):
                    seq = drafts[:n] + (y,) + tail
                    prob = float(nxt[y])
                    for j in range(n + 1, K + 1):
                        prob *= float(p[seq[:j]][seq[j]])
                    out[seq] += weight * branch * prob
            if n < K:
                reach *= float(accept[n])
    return out


def target_distribution(p, vocab=V, length=K + 1):
    """P(first `length` tokens) under p(.|prefix) tables, enumerated (float64)."""
    out = torch.zeros((vocab,) * length, dtype=torch.float64)
    for seq in itertools.product(range(vocab), repeat=length):
        prob = 1.0
        for j in range(length):
            prob *= float(p[seq[:j]][seq[j]])
        out[seq] = prob
    return out


@pytest.mark.parametrize("kind", ["dense", "q-zeros", "p-zeros", "one-hot-p", "deterministic-q"])
@pytest.mark.parametrize("seed", range(4))
def test_chain_acceptance_output_equals_target_distribution_exactly(kind, seed):
    p, q = _random_tables(seed, kind)
    produced = _exact_output_distribution(p, q)
    expected = target_distribution(p)
    assert float(produced.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(produced, expected, atol=1e-12, rtol=0), (produced - expected).abs().max()


def test_a_wrong_rule_is_caught_by_the_enumeration():
    """Guard: drawing the correction token from p instead of the residual must break exactness."""
    p, q = _random_tables(0, "dense")
    original = globals()["next_token_distribution"]
    try:
        globals()["next_token_distribution"] = lambda p_rows, q_rows, n: p_rows[n]
        produced = _exact_output_distribution(p, q)
    finally:
        globals()["next_token_distribution"] = original
    assert not torch.allclose(produced, target_distribution(p), atol=1e-6)


def test_sampler_follows_the_enumerated_branch_probabilities():
    """accept_stochastic_chain draws n and the token with the probabilities the enumeration uses."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.6, 0.2], [0.6, 0.2, 0.2]], dtype=torch.float64)
    drafts = torch.tensor([1, 0])
    trials = 20000
    counts = torch.zeros(K + 1, V)
    for _ in range(trials):
        r = accept_stochastic_chain(drafts, p, q, g)
        counts[r.num_accepted, r.next_token] += 1
    a = acceptance_probability(p[[0, 1], drafts], q[[0, 1], drafts])
    reach = [1 - a[0], a[0] * (1 - a[1]), a[0] * a[1]]
    expected = torch.stack([reach[n] * next_token_distribution(p, q, n) for n in range(K + 1)]).float()
    assert torch.allclose(counts / trials, expected, atol=0.015)


def test_deterministic_draft_q_is_one_hot():
    q = one_hot_draft_probabilities(torch.tensor([2, 0]), 4, torch.float32)
    assert q.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    # p(x) = 0 on a deterministic draft: always rejected, correction from p itself
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        r = accept_stochastic_chain(torch.tensor([2, 0]), p, None, g)
        assert r.num_accepted == 0 and r.next_token in (0, 1)
