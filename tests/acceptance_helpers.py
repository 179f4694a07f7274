"""The acceptance rules as host-reading functions, for tests: each reads the package's device form
(`specdec.core.acceptance`) once and returns an `Accepted`; the engine itself reads every row's outcome
in its one read per step."""

from __future__ import annotations

import torch

from specdec.core.acceptance import (
    Accepted,
    greedy_chain_outcome,
    greedy_tree_outcome,
    greedy_tree_values,
    stochastic_chain_outcome,
    stochastic_tree_outcome,
    stochastic_tree_result,
)
from specdec.core.sampling import residual
from specdec.core.tree import Tree


def accept_greedy_chain(draft_tokens: torch.Tensor, target_scores: torch.Tensor) -> Accepted:
    """Greedy rule: draft_tokens [k]; target_scores [k + 1, V]."""
    n, next_token = greedy_chain_outcome(draft_tokens, target_scores).tolist()
    return Accepted(tuple(range(n)), next_token)


def accept_stochastic_chain(
    draft_tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> Accepted:
    """Exact speculative sampling on a chain (see `stochastic_chain_outcome`)."""
    n, token = stochastic_chain_outcome(draft_tokens, p, q, generator).tolist()
    return Accepted(tuple(range(n)), token)


def next_token_distribution(p: torch.Tensor, q: torch.Tensor, num_accepted: int) -> torch.Tensor:
    """Distribution of the token appended after `num_accepted` drafts were kept: p [k + 1, V],
    q [k, V]; the residual norm(max(p_n - q_n, 0)) after a rejection at n < k, else p_k -> [V]."""
    k = q.shape[0]
    if num_accepted < k:
        return residual(p[num_accepted], q[num_accepted])
    return p[k]


def accept_greedy_tree(tree: Tree, tokens: torch.Tensor, target_scores: torch.Tensor) -> Accepted:
    """Greedy rule on a tree: tokens [T]; target_scores [T + 1, V]."""
    return greedy_tree_outcome(tree, greedy_tree_values(tokens, target_scores).tolist())


def accept_stochastic_tree(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> Accepted:
    """Exact recursive rejection sampling over a token tree (see `stochastic_tree_outcome`)."""
    return stochastic_tree_result(stochastic_tree_outcome(tree, tokens, p, q, kinds, generator).tolist())
