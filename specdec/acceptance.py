"""Acceptance rules as pure functions: no model, no cache, testable with hand-made distributions (L2).

Notation: `p` target distribution, `q` draft distribution (both after the same processors), `k` draft
length. A step keeps `n` drafted tokens (0 <= n <= k) and appends one token from the target: the
correction token after a rejection, or the bonus token when all k drafts were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.sampling import residual, sample


@dataclass(frozen=True)
class Accepted:
    """Result of one verification: the first `num_accepted` drafts are kept, then `next_token`."""

    num_accepted: int
    next_token: int


def accept_greedy_chain(draft_tokens: torch.Tensor, target_scores: torch.Tensor) -> Accepted:
    """Greedy rule: the longest prefix equal to the target's argmax, plus the target's next token.

    draft_tokens: [k]; target_scores: [k + 1, V] processed target scores at each drafted position.
    """
    target_choice = target_scores.argmax(dim=-1)  # [k + 1]
    k = draft_tokens.shape[0]
    matches = (draft_tokens.to(target_choice.device) == target_choice[:k]).long()  # [k]
    n = int(matches.cumprod(dim=0).sum().item()) if k else 0
    return Accepted(n, int(target_choice[n].item()))


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
    return Accepted(n, int(token.item()))
