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

from specdec.core.sampling import probabilities, residual, sample
from specdec.core.tree import Tree

#: The stochastic tree rule walks node by node on the host when p is on the CPU (see
#: `stochastic_tree_outcome`); tests switch this off to run the device form there.
WALK_ON_CPU = True


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


def acceptance_probability(p_token: torch.Tensor, q_token: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)) elementwise; 0 where p(x) == 0 (q(x) > 0 whenever x was drawn from q)."""
    ratio = p_token / q_token.clamp_min(torch.finfo(q_token.dtype).tiny)
    return ratio.clamp(max=1.0)


def one_hot_draft_probabilities(
    draft_tokens: torch.Tensor, vocab_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """q of a deterministic source: [k] tokens -> [k, V] one-hot rows."""
    return torch.nn.functional.one_hot(draft_tokens, vocab_size).to(dtype)


def stochastic_chain_outcome(
    draft_tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023).

    draft_tokens: [k] with x_i ~ q_i; p: [k + 1, V] target probabilities; q: [k, V] draft
    probabilities, or None when the drafts came from a deterministic source (q_i is one-hot on x_i).

    1. accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), stopping at the first rejection;
    2. after a rejection at position n, draw the correction token from norm(max(p_n - q_n, 0));
    3. if all k were accepted, draw the bonus token from p_k.
    Each committed token is then distributed exactly as p given the tokens before it.

    Returns [2] long (n accepted, appended token) without leaving the device: the appended token's
    distribution is picked on the device (the residual at n, or p_k when n = k), so the whole rule
    costs the host nothing until its caller reads the result.
    """
    k = draft_tokens.shape[0]
    device = p.device
    drafts = draft_tokens.to(device)
    if q is None:
        q_rows = one_hot_draft_probabilities(drafts, p.shape[-1], p.dtype)  # [k, V]
    else:
        q_rows = q.to(device=device, dtype=p.dtype)  # [k, V]
    n = torch.zeros((), dtype=torch.long, device=device)
    if k:
        p_draft = p[:k].gather(1, drafts[:, None]).squeeze(1)  # [k]
        q_draft = q_rows.gather(1, drafts[:, None]).squeeze(1)  # [k]
        # Step 1: one uniform draw per drafted position.
        u = torch.rand(k, generator=generator, device=device, dtype=p.dtype)  # [k]
        n = (u < acceptance_probability(p_draft, q_draft)).long().cumprod(dim=0).sum()  # []
    # Steps 2 and 3: the residual at n < k, else p_k (q padded with a row that is never used).
    at_n = n.view(1)
    p_n = p.index_select(0, at_n)[0]  # [V]
    q_n = torch.cat([q_rows, q_rows.new_zeros(1, p.shape[-1])]).index_select(0, at_n)[0]  # [V]
    token = sample(torch.where(n < k, residual(p_n, q_n), p_n), generator)  # []
    return torch.stack([n, token.to(n.dtype)])


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


def stochastic_tree_outcome(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    generator: torch.Generator | None = None,
    parallel: bool | None = None,
) -> torch.Tensor:
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
    `stochastic_chain_outcome` and gives the same result for the same generator.

    Returns a tensor on p's device: [depth + 1] long, the accepted path's nodes root first (-1 after
    its end), then the appended token (`stochastic_tree_result` reads it).

    parallel (default: off on CPU, on elsewhere) evaluates the rule without leaving the device:
    a node's target distribution does not depend on how the walk reached it, so each parent's
    children can be judged in rank order (a coin per child against the residual left by its elder
    siblings), all parents side by side; the walk then follows, from the root, each node's first
    accepted child. Same uniforms, same arithmetic as `walk_tree`, which runs instead on CPU, where
    reading values costs nothing and only the visited nodes' residuals are computed.
    """
    if parallel is None:
        parallel = p.device.type != "cpu" or not WALK_ON_CPU
    if not parallel:
        return _walked_outcome(tree, tokens, p, q, kinds, generator)
    t = len(tree)
    if t == 0:
        return sample(p[0], generator).to(torch.long).view(1)
    device, dtype = p.device, p.dtype
    u = torch.rand(t, generator=generator, device=device, dtype=dtype)  # [T]
    if kinds is None:
        kind_list = [NodeKind.SAMPLED if q is not None else NodeKind.DETERMINISTIC] * t
    else:
        kind_list = [NodeKind(int(k)) for k in kinds.tolist()]  # kinds live on the host
    x = tokens.to(device)  # [T]
    q_dev = q.to(device=device, dtype=dtype) if q is not None else None  # [T, V]
    p_left = p.clone()  # [T + 1, V] row i + 1: p at node i, after its children judged so far
    q_without = torch.zeros_like(p)  # [T + 1, V] per parent: q less its siblings drawn so far
    accepted = torch.zeros(t + 1, dtype=torch.bool, device=device)  # [T + 1]; the last stays False
    table = tree.children_table  # [T + 1, C] host: row i + 1 lists node i's children, -1 padded
    families = [(parent + 1, kids) for parent, kids in tree.children.items() if kids]  # host lists
    for rank in range(table.shape[1]):
        rows = [row for row, kids in families if len(kids) > rank]
        children = [kids[rank] for _, kids in families if len(kids) > rank]
        rows_t = torch.tensor(rows, device=device)  # [R]
        children_t = torch.tensor(children, device=device)  # [R]
        x_r = x[children_t]  # [R]
        proposal = q_dev[children_t] if q_dev is not None else p.new_zeros(len(rows), p.shape[-1])  # [R, V]
        drawn_without = [
            i for i, c in enumerate(children) if kind_list[c] == NodeKind.SAMPLED_WITHOUT_REPLACEMENT
        ]
        chosen = [i for i, c in enumerate(children) if kind_list[c] == NodeKind.DETERMINISTIC]
        if drawn_without:
            w = torch.tensor(drawn_without, device=device)
            first = [i for i in drawn_without if _first_drawn_without(tree, kind_list, children[i])]
            if first:
                f = torch.tensor(first, device=device)
                q_without[rows_t[f]] = proposal[f]
            proposal[w] = q_without[rows_t[w]]
        if chosen:
            c = torch.tensor(chosen, device=device)
            proposal[c] = torch.nn.functional.one_hot(x_r[c], p.shape[-1]).to(dtype)
        p_rows = p_left[rows_t]  # [R, V]
        a = acceptance_probability(
            p_rows.gather(1, x_r[:, None])[:, 0], proposal.gather(1, x_r[:, None])[:, 0]
        )
        accepted[children_t] = u[children_t] < a
        p_left[rows_t] = residual(p_rows, proposal)
        if drawn_without:  # the next sibling drawn without replacement cannot be this token
            kept = proposal[w].scatter(1, x_r[w, None], 0.0)  # [W, V]
            mass = kept.sum(dim=-1, keepdim=True)
            q_without[rows_t[w]] = torch.where(mass > 0, kept / mass, kept)
    # Each node's first accepted child (-1: none), then the walk from the root.
    table_dev = table.to(device)  # [T + 1, C]
    judged = accepted[table_dev]  # [T + 1, C] (-1 reads the final False)
    first_rank = judged.int().argmax(dim=1, keepdim=True)  # [T + 1, 1]
    next_node = torch.where(judged.any(dim=1), table_dev.gather(1, first_rank)[:, 0], -1)  # [T + 1]
    node = torch.full((), -1, dtype=torch.long, device=device)
    path = []
    for _ in range(tree.depth):
        step = next_node[node + 1]
        path.append(step)
        node = torch.where(step >= 0, step, node)
    token = sample(p_left[node + 1], generator)  # []
    return torch.stack([*path, token.to(torch.long)])


def _walked_outcome(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """`stochastic_tree_outcome` by `walk_tree` on the host (the same draws, in the same order)."""
    t = len(tree)
    u = torch.rand(t, generator=generator, device=p.device, dtype=p.dtype).tolist() if t else []
    path, final = walk_tree(tree, tokens, p, q, kinds, lambda node, prob: u[node] < prob)
    token = sample(final, generator)  # []
    padded = torch.tensor(list(path) + [-1] * (tree.depth - len(path)), dtype=torch.long, device=p.device)
    return torch.cat([padded, token.to(device=p.device, dtype=torch.long).view(1)])


def stochastic_tree_result(values: list[int]) -> Accepted:
    """Read `stochastic_tree_outcome`'s host values: the path (up to its first -1) and the token."""
    path = []
    for node in values[:-1]:
        if node < 0:
            break
        path.append(node)
    return Accepted(tuple(path), values[-1])


def _first_drawn_without(tree: Tree, kinds: list[NodeKind], node: int) -> bool:
    """Whether `node` is the first of its siblings drawn without replacement."""
    for sibling in tree.children_of(tree.parents[node]):
        if kinds[sibling] == NodeKind.SAMPLED_WITHOUT_REPLACEMENT:
            return sibling == node
    return False


def walk_tree(
    tree: Tree,
    tokens: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    coin: Callable[[int, float], bool],
) -> tuple[tuple[int, ...], torch.Tensor]:
    """The deterministic part of `stochastic_tree_outcome`, node by node on the host: returns (accepted
    path, distribution [V] of the appended token). `coin(node, a)` decides whether `node` is accepted,
    which must happen with probability a. This is the rule's reference form: the tests enumerate both
    outcomes of every coin to compute its exact output distribution, and replay each outcome through
    `stochastic_tree_outcome` (the same rule for all nodes at once), which must agree."""
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


# ---------------------------------------------------------------------- dispatch
def outcome_values(
    tree: Tree,
    tokens: torch.Tensor,
    q: torch.Tensor | None,
    kinds: torch.Tensor | None,
    scores: torch.Tensor,
    do_sample: bool,
    generator: torch.Generator | None,
    finite: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rule for one draft (greedy or exact stochastic, chain or tree), still on the device: a
    long tensor that `outcome_from_values` reads once it is on the host.

    tokens: [T] draft tokens; q: [T, V] or None (point masses / greedy); kinds: [T] NodeKind on the
    host or None; scores: [T + 1, V] processed target scores (row 0 at the root, row i + 1 after
    node i). finite: [] bool, whether the target's logits were finite; when False the sampled
    distributions are replaced by uniform ones so that sampling stays defined (the caller raises).
    """
    if not do_sample:
        if tree.is_chain:
            return greedy_chain_outcome(tokens, scores)  # [2]
        return greedy_tree_values(tokens, scores)  # [2T + 1]
    p = probabilities(scores)  # [T + 1, V]
    if finite is not None:
        p = torch.where(finite, p, torch.full_like(p, 1.0 / p.shape[-1]))
    if _is_uniform_chain(tree, kinds):
        deterministic = kinds is not None and len(kinds) and int(kinds[0]) == NodeKind.DETERMINISTIC
        return stochastic_chain_outcome(tokens, p, None if deterministic else q, generator)  # [2]
    return stochastic_tree_outcome(tree, tokens, p, q, kinds, generator)  # [depth + 1]


def outcome_from_values(
    tree: Tree, kinds: torch.Tensor | None, values: list[int], do_sample: bool
) -> Accepted:
    """The accepted path and appended token from the host values of `outcome_values`."""
    if tree.is_chain and (not do_sample or _is_uniform_chain(tree, kinds)):
        n, next_token = values
        return Accepted(tuple(range(n)), next_token)
    if not do_sample:
        return greedy_tree_outcome(tree, values)
    return stochastic_tree_result(values)


def _is_uniform_chain(tree: Tree, kinds: torch.Tensor | None) -> bool:
    """A chain whose nodes were all proposed the same way (kinds live on the host)."""
    return tree.is_chain and (kinds is None or bool((kinds == kinds[:1]).all()))
