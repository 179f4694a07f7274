"""Batched speculative steps: B prompts, one target pass per step, ragged acceptance (layer L5).

Every row of the batch drafts the same token-tree shape (a chain of k tokens or a static tree, cut at
the step's depth), so the draft model feeds one depth of every row per pass and the target verifies
every row's tree in one pass. Rows then accept different numbers of tokens: each row keeps its own
cache length and positions in the runners (`LlamaRunner` rows are contiguous, of different lengths),
so no row ever attends to padding or to another row's rejected nodes. A row whose processors leave
fewer tokens than the shape asks for (e.g. top_k=1 under a 4-way branch) drops those nodes from its
own tree: the target still computes them, but they are never accepted or attended to.

Acceptance per row is the single-row rule (`engine.accept_draft`) on that row's tree, so every row is
exact: greedy rows equal the target's own greedy output; sampled rows follow its distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specdec.acceptance import Accepted, NodeKind
from specdec.adaptive import DraftLengthController
from specdec.drafters.base import Draft
from specdec.drafters.prompt_lookup import find_continuation
from specdec.engine import accept_draft
from specdec.errors import NonFiniteLogitsError
from specdec.models.llama_runner import LlamaRunner
from specdec.sampling import LogitsPipeline, probabilities, sample, sample_without_replacement
from specdec.stats import GenerationStats
from specdec.tree import Tree


@dataclass
class BatchRow:
    """One prompt of the batch: its committed tokens and its own logits pipeline."""

    sequence: torch.Tensor  # [N] committed tokens, no padding
    pipeline: LogitsPipeline


@dataclass(frozen=True)
class _Proposal:
    """The draft of every row for one step, on one shared tree shape."""

    tree: Tree
    tokens: torch.Tensor  # [B, T] long
    q: torch.Tensor | None  # [B, T, V] float32, or None when every node is deterministic
    kinds: torch.Tensor  # [T] NodeKind per node (shared by the rows)
    present: torch.Tensor  # [B, T] bool: the node belongs to the row's own tree
    fed: list[int]  # nodes the draft model has in its cache, in cache order after the row's prefix


class BatchSpeculativeEngine:
    """Owns a batch-capable target runner and draft runner for one batched generation.

    template: the tree every row drafts (`Tree.chain(k)` for chains); each step uses its nodes up to
    the depth the controller plans (0 = no draft: a plain batched decode step).
    lookup: (max_ngram, min_ngram) to draft each row's chain by prompt lookup instead of a draft model
    (draft=None): row b keeps the first L_b nodes, L_b its copy's length (0 when nothing matches).
    """

    def __init__(
        self,
        target: LlamaRunner,
        draft: LlamaRunner | None,
        template: Tree,
        controller: DraftLengthController,
        stats: GenerationStats,
        generator: torch.Generator | None = None,
        lookup: tuple[int, int] | None = None,
    ) -> None:
        self.target = target
        self.draft = draft
        self.lookup = lookup
        self.template = template
        self.controller = controller
        self.stats = stats
        stats.runtime = target.name
        self.generator = generator
        self._steps = 0

    def begin(self, rows: list[BatchRow]) -> None:
        """Prefill every row's prompt except its last token into both runners."""
        self._steps = 0
        for runner in (self.target, self.draft):
            if runner is None:
                continue
            runner.reset(len(rows))
            counts = [row.sequence.shape[0] - 1 for row in rows]
            if max(counts) > 0:
                runner.extend_rows(
                    *_pad([row.sequence[:-1] for row in rows], runner.device), None, None, _zeros(rows)
                )

    def end(self) -> None:
        """Release the rows (the preallocated caches stay for the next call)."""
        for runner in (self.target, self.draft):
            if runner is not None:
                runner.reset(1)

    def keep(self, indices: list[int]) -> None:
        """Continue with the rows `indices` only (finished rows stop costing compute)."""
        for runner in (self.target, self.draft):
            if runner is not None:
                runner.keep_rows(indices)

    # ------------------------------------------------------------------ one step
    def step(self, rows: list[BatchRow], budgets: list[int]) -> list[torch.Tensor]:
        """Advance every row by one target pass; return each row's committed tokens ([m_b] long).

        budgets[b]: tokens row b may still add. The shared depth is capped by the largest budget (a row
        with less left keeps only its first budget[b] tokens, which the caller cuts: exact, since every
        committed prefix is) and by the draft's context.
        """
        depth = self._depth(rows, budgets)
        tree = self._tree(depth)
        t0 = time.perf_counter()
        proposal = self._propose(rows, tree)
        t1 = time.perf_counter()
        logits = self._verify(rows, proposal)  # [B, T + 1, V]
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogitsError("target", self._steps)
        results = [self._accept_row(b, row, proposal, logits[b]) for b, row in enumerate(rows)]
        t2 = time.perf_counter()
        self._commit(rows, proposal, results)
        first = self._steps == 0
        self.stats.draft_time += t1 - t0
        self.stats.verify_time += t2 - t1
        depths = torch.tensor(tree.depths, dtype=torch.long)  # [T]
        row_depths = (proposal.present.long() * depths).amax(dim=1).tolist() if len(tree) else [0] * len(rows)
        timed_row = next((b for b, d in enumerate(row_depths) if d > 0), None)
        for b, accepted in enumerate(results):
            size = int(proposal.present[b].sum())
            self.stats.record_step(size, row_depths[b], accepted.num_accepted, accepted.num_accepted + 1)
            # acceptance counts each row at its own depth (a row without a copy drafted nothing); the
            # times count once per batched pass, except the first step's (warm-up)
            timed = not first and b == timed_row
            self.controller.observe(
                row_depths[b],
                accepted.num_accepted,
                t1 - t0 if timed else None,
                t2 - t1 if timed else None,
                num_nodes=len(tree),
            )
        self._steps += 1
        tokens = []
        for b, accepted in enumerate(results):
            path = torch.tensor(accepted.path, dtype=torch.long, device=proposal.tokens.device)
            row_tokens = proposal.tokens[b, path]
            tokens.append(torch.cat([row_tokens, row_tokens.new_tensor([accepted.next_token])]))
        return tokens

    def _depth(self, rows: list[BatchRow], budgets: list[int]) -> int:
        if self.draft is None and self.lookup is None:
            return 0
        depth = min(self.controller.plan().max_depth, self.template.depth, max(budgets) - 1)
        context = self.draft.context_length if self.draft is not None else None
        if context is not None:
            depth = min(depth, context - max(row.sequence.shape[0] for row in rows) + 1)
        return max(depth, 0)

    def _tree(self, depth: int) -> Tree:
        if depth >= self.template.depth:
            return self.template
        keep = [i for i, d in enumerate(self.template.depths) if d <= depth]
        return self.template.subtree(keep)[0]

    # ------------------------------------------------------------------ 1. propose
    def _propose(self, rows: list[BatchRow], tree: Tree) -> _Proposal:
        batch, size = len(rows), len(tree)
        device = self.target.device
        tokens = torch.zeros(batch, size, dtype=torch.long, device=device)  # [B, T]
        present = torch.ones(batch, size, dtype=torch.bool)  # [B, T]
        chain = tree.is_chain
        kind = NodeKind.SAMPLED if chain else NodeKind.SAMPLED_WITHOUT_REPLACEMENT
        do_sample = rows[0].pipeline.do_sample
        kinds = torch.full((size,), int(kind if do_sample else NodeKind.DETERMINISTIC), dtype=torch.long)
        q = torch.zeros(batch, size, self.target.vocab_size, device=device) if do_sample else None
        if size == 0:
            return _Proposal(tree, tokens, q, kinds, present, [])
        if self.lookup is not None:
            return self._propose_lookup(rows, tree, tokens, present)
        draft = self.draft
        pending = [row.sequence[length:] for row, length in zip(rows, draft.lengths, strict=True)]
        block, counts = _pad(pending, draft.device)
        last = torch.tensor([c - 1 for c in counts], device=draft.device)[:, None]  # [B, 1]
        parent_logits = {-1: draft.extend_rows(block, counts, None, None, last)[:, 0]}  # [B, V_draft]
        base = list(draft.lengths)  # every row's committed length N_b
        fed: list[int] = []
        for depth in range(1, tree.depth + 1):
            level = [i for i in range(size) if tree.depths[i] == depth]
            for parent in sorted({tree.parents[i] for i in level}):
                children = tree.children_of(parent)
                scores = self._draft_scores(rows, tree, tokens, parent, parent_logits[parent])  # [B, V]
                self._choose(scores, children, chain and do_sample, do_sample, tokens, q, present)
                if parent >= 0:
                    present[:, children] &= present[:, parent : parent + 1]
            to_feed = [i for i in level if tree.children_of(i)]
            if depth < tree.depth and to_feed:
                logits = self._feed(tree, tokens, to_feed, fed, base, depth)  # [B, n, V_draft]
                fed.extend(to_feed)
                parent_logits.update({node: logits[:, j] for j, node in enumerate(to_feed)})
        return _Proposal(tree, tokens, q, kinds, present, fed)

    def _propose_lookup(
        self, rows: list[BatchRow], tree: Tree, tokens: torch.Tensor, present: torch.Tensor
    ) -> _Proposal:
        """Each row's n-gram copy on the chain template: chosen tokens (q = a point mass on each)."""
        max_ngram, min_ngram = self.lookup
        for b, row in enumerate(rows):
            copy = find_continuation(row.sequence, len(tree), max_ngram, min_ngram)  # [L_b]
            tokens[b, : copy.shape[0]] = copy.to(tokens.device)
            present[b, copy.shape[0] :] = False
        kinds = torch.full((len(tree),), int(NodeKind.DETERMINISTIC), dtype=torch.long)
        return _Proposal(tree, tokens, None, kinds, present, [])

    def _draft_scores(
        self, rows: list[BatchRow], tree: Tree, tokens: torch.Tensor, parent: int, logits: torch.Tensor
    ) -> torch.Tensor:
        """Processed draft scores [B, V] below `parent`, each row through its own pipeline."""
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogitsError("draft", self._steps)
        logits = logits[:, : self.target.vocab_size].to(self.target.device)  # [B, V]
        if not rows[0].pipeline.processors:
            return logits.float()
        path = tree.path_to(parent) if parent >= 0 else []
        scores = []
        for b, row in enumerate(rows):
            context = torch.cat([row.sequence, tokens[b, path]])[None]  # [1, N + depth - 1]
            scores.append(row.pipeline.scores(context, logits[b : b + 1]))
        return torch.cat(scores)

    def _choose(
        self,
        scores: torch.Tensor,
        children: list[int],
        sample_one: bool,
        do_sample: bool,
        tokens: torch.Tensor,
        q: torch.Tensor | None,
        present: torch.Tensor,
    ) -> None:
        """Fill the tokens (and q rows) of `children` for every row from scores [B, V]."""
        count = len(children)
        log_q = torch.log_softmax(scores, dim=-1)  # [B, V]
        allowed = torch.isfinite(log_q).sum(dim=-1).cpu()  # [B]
        if do_sample:
            probs = probabilities(scores)  # [B, V]
            if sample_one:
                chosen = sample(probs, self.generator)[:, None]  # [B, 1]
            else:  # `count` draws without replacement from q
                chosen = sample_without_replacement(log_q, count, self.generator)  # [B, count]
            q[:, children] = probs[:, None, :]
        else:
            chosen = torch.topk(log_q, count, dim=-1).indices  # [B, count]
        tokens[:, children] = chosen.to(tokens.device)
        ranks = torch.arange(count)[None]  # [1, count]
        present[:, children] = ranks < allowed[:, None]

    def _feed(
        self,
        tree: Tree,
        tokens: torch.Tensor,
        to_feed: list[int],
        fed: list[int],
        base: list[int],
        depth: int,
    ) -> torch.Tensor:
        """Run the draft on the nodes `to_feed` (one depth) of every row, each seeing its committed
        tokens, its fed ancestors and itself. Returns [B, n, V_draft] logits."""
        draft = self.draft
        batch, n = tokens.shape[0], len(to_feed)
        slot = {node: i for i, node in enumerate(fed + to_feed)}  # node -> offset after the prefix
        width = max(base) + len(fed) + n
        mask = torch.zeros(batch, n, width, dtype=torch.bool)
        for b in range(batch):
            mask[b, :, : base[b]] = True
            for j, node in enumerate(to_feed):
                for ancestor in tree.path_to(node):
                    mask[b, j, base[b] + slot[ancestor]] = True
        positions = torch.tensor(base)[:, None] - 1 + depth  # [B, 1]
        block = tokens[:, to_feed].to(draft.device)  # [B, n]
        logit_rows = torch.arange(n, device=draft.device)[None].expand(batch, n)
        return draft.extend_rows(block, [n] * batch, positions.expand(batch, n), mask, logit_rows)

    # ------------------------------------------------------------------ 2. verify
    def _verify(self, rows: list[BatchRow], proposal: _Proposal) -> torch.Tensor:
        """Target logits [B, T + 1, V]: row 0 after the committed tokens, row i + 1 after node i."""
        target, tree = self.target, proposal.tree
        pending = [row.sequence[length:] for row, length in zip(rows, target.lengths, strict=True)]
        if any(p.shape[0] != 1 for p in pending):
            raise RuntimeError("every row must have exactly one committed token outside the target cache")
        block = torch.cat([torch.stack(pending), proposal.tokens.to(target.device)], dim=1)  # [B, 1 + T]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), tree.depth_tensor()])  # [1 + T]
        committed = torch.tensor([row.sequence.shape[0] for row in rows])  # [B]
        positions = committed[:, None] - 1 + offsets[None]  # [B, 1 + T]
        width = len(tree) + 1
        logit_rows = torch.arange(width, device=target.device)[None].expand(len(rows), width)
        attention = tree.block_attention(1)[None]  # [1, 1 + T, 1 + T]
        return target.extend_rows(block, [width] * len(rows), positions, attention, logit_rows)

    # ------------------------------------------------------------------ 3. accept, 4. commit
    def _accept_row(self, b: int, row: BatchRow, proposal: _Proposal, logits: torch.Tensor) -> Accepted:
        """The single-row rule on row b's own tree; the path is returned in template node indices."""
        present = proposal.present[b]
        if bool(present.all()):
            tree, kept = proposal.tree, list(range(len(proposal.tree)))
        else:
            tree, kept = proposal.tree.subtree(present.nonzero().flatten().tolist())
        index = torch.tensor(kept, dtype=torch.long)
        tokens = proposal.tokens[b, index]  # [T_b]
        rows = torch.cat([torch.zeros(1, dtype=torch.long), index + 1]).to(logits.device)
        context = row.sequence[None]  # [1, N]
        scores = row.pipeline.scores_tree(context, tokens, tree, logits[rows])  # [T_b + 1, V]
        q = None if proposal.q is None else proposal.q[b, index]
        draft = Draft(tokens, q, tree, proposal.kinds[index])
        accepted = accept_draft(draft, scores, row.pipeline.do_sample, self.generator)
        return Accepted(tuple(kept[node] for node in accepted.path), accepted.next_token)

    def _commit(self, rows: list[BatchRow], proposal: _Proposal, results: list[Accepted]) -> None:
        """Move every row's accepted path to contiguous cache rows in both runners."""
        starts = [row.sequence.shape[0] for row in rows]
        paths = [[start + node for node in r.path] for start, r in zip(starts, results, strict=True)]
        self.target.compact_rows(starts, paths)
        if self.draft is None or not proposal.tree:
            return
        slot = {node: i for i, node in enumerate(proposal.fed)}
        kept = []
        for start, accepted in zip(starts, results, strict=True):
            on_path = []
            for node in accepted.path:
                if node not in slot:
                    break
                on_path.append(start + slot[node])
            kept.append(on_path)
        self.draft.compact_rows(starts, kept)


def _pad(sequences: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Right-pad 1-D token tensors into [B, n] (n >= 1); return it and the real lengths."""
    counts = [int(s.shape[0]) for s in sequences]
    block = torch.zeros(len(sequences), max(max(counts), 1), dtype=torch.long, device=device)
    for b, s in enumerate(sequences):
        block[b, : counts[b]] = s.to(device)
    return block, counts


def _zeros(rows: list[BatchRow]) -> torch.Tensor:
    """[B, 1] logit row indices (the prefill's logits are not used)."""
    return torch.zeros(len(rows), 1, dtype=torch.long)
