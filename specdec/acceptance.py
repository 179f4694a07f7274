"""Acceptance rules as pure functions: no model, no cache, testable with hand-made distributions (L2).

Notation: `p` target distribution, `q` draft distribution (both after the same processors), `k` draft
length. A step keeps `n` drafted tokens (0 <= n <= k) and appends one token from the target: the
correction token after a rejection, or the bonus token when all k drafts were accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch

from specdec.sampling import residual, sample
from specdec.tree import Tree


class NodeKind(IntEnum):
    """How a draft token was proposed; the stochastic rule treats each kind exactly."""

    SAMPLED = 0  # drawn i.i.d. from q
    SAMPLED_WITHOUT_REPLACEMENT = 1  # drawn from q without replacement among its siblings
    DETERMINISTIC = 2  # chosen, not drawn (top-k, n-gram copy): q is a point mass on the token


@dataclass(frozen=True)
class Accepted:
    """Result of one verification: the drafted nodes on `path` (root first) are kept, then `next_token`.

    For a chain the path is (0, 1, ..., n - 1).
    """

    path: tuple[int, ...]
    next_token: int

    @property
    def num_accepted(self) -> int:
        return len(self.path)


def greedy_chain_outcome(draft_tokens: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """The greedy rule without leaving the device: [2] long (n accepted, the target's next token).

    draft_tokens: [k]; target_scores: [k + 1, V] processed target scores at each drafted position.
    """
    target_choice = target_scores.argmax(dim=-1)  # [k + 1]
    k = draft_tokens.shape[0]
    matches = (draft_tokens.to(target_choice.device) == target_choice[:k]).long()  # [k]
    n = matches.cumprod(dim=0).sum() if k else target_choice.new_zeros(())  # []
    return torch.stack([n, target_choice[n]])


def accept_greedy_chain(draft_tokens: torch.Tensor, target_scores: torch.Tensor) -> Accepted:
    """Greedy rule: the longest prefix equal to the target's argmax, plus the target's next token.

    draft_tokens: [k]; target_scores: [k + 1, V] processed target scores at each drafted position.
    """
    n, next_token = greedy_chain_outcome(draft_tokens, target_scores).tolist()
    return Accepted(tuple(range(n)), next_token)


def acceptance_probability(p_token: torch.Tensor, q_token: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)) elementwise; 0 where p(x) == 0 (q(x) > 0 whenever x was drawn from q)."""
    ratio = p_token / q_token.clamp_min(torch.finfo(q_token.dtype).tiny)
    return ratio.clamp(max=1.0)


def next_token_distribution(p: torch.Tensor, q: torch.Tensor, num_accepted: int) -> torch.Tensor:
    """Distribution of the token appended after `num_accepted` drafts were kept.

    p: [k + 1, V]; q: [k, V]. The residual norm(max(p_n - q_n, 0)) after a rejection at n < k, or the
    bonus distribution p_k when all k were accepted -> [V].
    """
    k = q.shape[0]
    if num_accepted < k:
        return residual(p[num_accepted], q[num_accepted])
    return p[k]


def one_hot_draft_probabilities(
    draft_tokens: torch.Tensor, vocab_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """q of a deterministic source: [k] tokens -> [k, V] one-hot rows."""
    return torch.nn.functional.one_hot(draft_tokens, vocab_size).to(dtype)


def accept_stochastic_chain(
    draft_tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> Accepted:
    """Exact speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023).

    draft_tokens: [k] with x_i ~ q_i; p: [k + 1, V] target probabilities; q: [k, V] draft
    probabilities, or None when the drafts came from a deterministic source (q_i is one-hot on x_i).

    1. accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), stopping at the first rejection;
    2. after a rejection at position n, draw the correction token from norm(max(p_n - q_n, 0));
    3. if all k were accepted, draw the bonus token from p_k.
    Each committed token is then distributed exactly as p given the tokens before it.
    """
    k = draft_tokens.shape[0]
    device = p.device
    drafts = draft_tokens.to(device)
    if q is None:
        q_rows = one_hot_draft_probabilities(drafts, p.shape[-1], p.dtype)  # [k, V]
    else:
        q_rows = q.to(device=device, dtype=p.dtype)  # [k, V]
    n = 0
    if k:
        p_draft = p[:k].gather(1, drafts[:, None]).squeeze(1)  # [k]
        q_draft = q_rows.gather(1, drafts[:, None]).squeeze(1)  # [k]
        # Step 1: one uniform draw per drafted position.
        u = torch.rand(k, generator=generator, device=device, dtype=p.dtype)  # [k]
        accepted = (u < acceptance_probability(p_draft, q_draft)).long()  # [k]
        n = int(accepted.cumprod(dim=0).sum().item())
    # Steps 2 and 3.
    token = sample(next_token_distribution(p, q_rows, n), generator)
    return Accepted(tuple(range(n)), int(token.item()))


def accept_greedy_tree(tree: Tree, tokens: torch.Tensor, target_scores: torch.Tensor) -> Accepted:
    """Greedy rule on a tree: from the root, follow the child whose token is the target's argmax.

    tokens: [T] node tokens; target_scores: [T + 1, V], row 0 at the root, row i + 1 at node i.
    Returns the longest such path and the target's argmax after its last node (one host sync).
    """
    return greedy_tree_outcome(tree, greedy_tree_values(tokens, target_scores).tolist())


def greedy_tree_values(tokens: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """What the greedy tree rule reads, still on the device: [2T + 1] long, the target's argmax at
    the root and after each node ([T + 1]), then the node tokens ([T])."""
    choice = target_scores.argmax(dim=-1)  # [T + 1]
    return torch.cat([choice, tokens.to(choice.device)])


def greedy_tree_outcome(tree: Tree, values: list[int]) -> Accepted:
    """The greedy tree rule on the host values of `greedy_tree_values`."""
    choice, tokens = values[: len(tree) + 1], values[len(tree) + 1 :]
    path: list[int] = []
    node = -1
    while True:
        wanted = choice[node + 1]
        child = next((c for c in tree.children_of(node) if tokens[c] == wanted), None)
        if child is None:
            return Accepted(tuple(path), wanted)
        path.append(child)
        node = child


def accept_stochastic_tree(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> Accepted:
    """Exact multi-candidate recursive rejection sampling over a token tree.

    tokens: [T]; p: [T + 1, V] target probabilities (row 0 at the root, row i + 1 at node i);
    q: [T, V] the draft distribution each node's token was drawn from (its parent's q), None when
    every node is deterministic; kinds: [T] NodeKind values (default: SAMPLED where q is given, else
    DETERMINISTIC).

    At a node with target distribution p, its children are tried in rank order. A child x with
    proposal distribution r (q for sampled kinds, the point mass on x for deterministic ones) is
    accepted with probability min(1, p(x) / r(x)); on rejection p <- norm(max(p - r, 0)), and for a
    child drawn without replacement its siblings' q loses x (q <- norm(q with x removed)). If every
    child is rejected the appended token is drawn from the last p; after an accepted leaf it is drawn
    from the leaf's p (bonus token).

    Why this is exact: for one candidate x ~ r, P(accept and output y) = min(p(y), r(y)) and
    P(reject) * norm(max(p - r, 0))(y) = max(p(y) - r(y), 0), which sum to p(y) (the chain argument of
    Leviathan et al.). Trying the next candidate against the residual is the same argument applied to
    the residual, provided that candidate's distribution, given the earlier candidates' tokens, is the
    r used: q again for i.i.d. draws, q without the earlier draws for draws without replacement, a
    point mass for chosen tokens. The rejection coins are independent of how the candidates were
    drawn, so conditioning on earlier rejections does not change that distribution. By induction
    over siblings the token leaving a node is distributed as p at that node; by induction over depth
    the whole committed sequence is distributed as the target's.

    One uniform is drawn per node up front, so a chain-shaped tree consumes randomness exactly like
    `accept_stochastic_chain` and gives the same result for the same generator.
    """
    u = (
        torch.rand(len(tree), generator=generator, device=p.device, dtype=p.dtype).tolist()
        if len(tree)
        else []
    )
    path, final = walk_tree(tree, tokens, p, q, kinds, lambda node, prob: u[node] < prob)
    return Accepted(path, int(sample(final, generator).item()))


def walk_tree(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    coin: Callable[[int, float], bool],
) -> tuple[tuple[int, ...], torch.Tensor]:
    """The deterministic part of `accept_stochastic_tree`: returns (accepted path, distribution [V] of
    the appended token). `coin(node, a)` decides whether `node` is accepted, which must happen with
    probability a; tests enumerate both outcomes to compute the rule's exact output distribution."""
    token_list = tokens.tolist()
    if kinds is None:
        kind_list = [NodeKind.SAMPLED if q is not None else NodeKind.DETERMINISTIC] * len(tree)
    else:
        kind_list = [NodeKind(int(k)) for k in kinds.tolist()]
    path: list[int] = []
    node = -1
    p_node = p[0]  # [V]
    while True:
        accepted_child = None
        q_without: torch.Tensor | None = None  # q of the siblings drawn without replacement, so far
        for child in tree.children_of(node):
            x = token_list[child]
            kind = kind_list[child]
            if kind == NodeKind.DETERMINISTIC:
                r = torch.zeros_like(p_node)
                r[x] = 1.0
            elif kind == NodeKind.SAMPLED_WITHOUT_REPLACEMENT:
                if q_without is None:
                    q_without = q[child].to(device=p.device, dtype=p.dtype)
                r = q_without
            else:
                r = q[child].to(device=p.device, dtype=p.dtype)
            if coin(child, float(acceptance_probability(p_node[x], r[x]))):
                accepted_child = child
                break
            p_node = residual(p_node, r)
            if kind == NodeKind.SAMPLED_WITHOUT_REPLACEMENT:
                q_without = r.clone()
                q_without[x] = 0.0
                mass = q_without.sum()
                q_without = q_without / mass if mass > 0 else q_without
        if accepted_child is None:
            return tuple(path), p_node
        path.append(accepted_child)
        node = accepted_child
        p_node = p[node + 1]
