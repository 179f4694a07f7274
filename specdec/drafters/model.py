"""A draft model proposing a chain, a static tree or a dynamic tree for B rows on its own KV cache.

The draft expands its proposal depth by depth: one forward pass per depth scores every node of that
depth that gets children, in every row, with an ancestor-only attention mask (as the target does when
verifying). Each row keeps its own tree (dynamic trees differ per row) and its own cache row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from specdec.core.acceptance import NodeKind
from specdec.core.sampling import LogitsPipeline, probabilities, sample, sample_without_replacement
from specdec.core.tree import Tree
from specdec.drafters.base import Draft, pipelines_scores
from specdec.errors import NonFiniteLogitsError
from specdec.runtime.factory import make_runner


@dataclass(frozen=True)
class TreeShape:
    """What the draft model proposes each step.

    mode: "chain" (k tokens in a line), "static" (the fixed `tree`, cut at the step's depth cap) or
    "dynamic" (EAGLE-2 style: at each depth expand the `beam` nodes of highest cumulative draft
    log-probability with their top `branch` tokens, then keep the best `budget` nodes). The depth
    is the step's cap, given to `propose`.
    """

    mode: str = "chain"
    tree: Tree | None = None
    budget: int = 32
    branch: int = 4
    beam: int = 4
    deterministic: bool = False  # always choose the top tokens, also when sampling (hybrid trees)


@dataclass
class _Node:
    parent: int  # index into the node list, -1 for the root's children
    token: int
    kind: NodeKind
    q_row: torch.Tensor | None  # [V] distribution the token was drawn from (its parent's q)
    log_prob: float  # cumulative draft log-probability from the root
    depth: int
    template: int = -1  # node of the static tree it instantiates


@dataclass(frozen=True)
class _Choice:
    """One parent's proposed children before the host has read them (its row of the level's packed
    values: finite, allowed, `width` tokens, their `width` log q)."""

    parent: int
    parent_lp: float
    count: int
    kind: NodeKind
    q_row: torch.Tensor | None  # [V] the distribution the children were drawn from
    template_kids: list[int] | None  # the static tree's nodes they instantiate
    width: int  # tokens packed per pair at this depth (count <= width)


class ModelDrafter:
    """Draft tokens from a small causal LM, for every row of a batch at once.

    target_vocab_size: ids at or past it are masked out of the draft's proposals (a draft may carry
    extra tokens, e.g. TinyLlama-Chat-v0.1's 32001 ids against Llama-2's 32000).
    """

    name = "draft-model"
    uses_model = True

    def __init__(
        self,
        model: PreTrainedModel,
        target_vocab_size: int,
        target_device: torch.device,
        shape: TreeShape | None = None,
        runtime: str = "auto",
        cuda_graphs: bool = False,
    ) -> None:
        self.runner = make_runner(model, runtime, cuda_graphs)
        self.target_vocab_size = target_vocab_size
        self.target_device = target_device
        self.shape = shape or TreeShape()
        self._node_rows: list[dict[int, int]] = [{}]  # per row: node -> draft cache row, fed this step

    @property
    def context_length(self) -> int | None:
        return self.runner.context_length

    def begin(self, batch_size: int = 1) -> None:
        self.runner.reset(batch_size)
        self._node_rows = [{} for _ in range(batch_size)]

    def keep(self, rows: list[int]) -> None:
        self.runner.keep_rows(rows)
        self._node_rows = [self._node_rows[b] for b in rows]

    def free_candidates(self, sequences: list[torch.Tensor], do_sample: bool) -> list[list[float]]:
        """Every candidate of a draft model costs a draft pass."""
        return [[] for _ in sequences]

    def committed(self, token_ids: list[list[int]]) -> None:
        """Nothing to keep: the draft's own cache holds the committed tokens."""

    # ------------------------------------------------------------------ propose
    def propose(
        self,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> list[Draft]:
        """Per row a tree of depth <= max_depth after sequences[b] ([1, N_b] committed tokens); `tree`
        overrides the drafter's own shape for this step (a static tree planned at run time)."""
        shape = self.shape
        if tree is not None:
            shape = TreeShape(mode="static", tree=tree, deterministic=self.shape.deterministic)
        return self.propose_shaped(shape, sequences, max_depth, pipelines, generator)

    def propose_shaped(
        self,
        shape: TreeShape,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
    ) -> list[Draft]:
        """`propose` with `shape` in place of the drafter's own shape."""
        if max_depth <= 0 or (shape.mode == "static" and len(shape.tree) == 0):
            return [Draft(s.new_empty(0)) for s in sequences]
        self._node_rows = [{} for _ in sequences]
        root_logits = self._catch_up(sequences)  # [B, V_draft]
        if shape.mode == "chain" or (shape.mode == "static" and shape.tree.is_chain):
            depth = max_depth if shape.mode == "chain" else min(max_depth, len(shape.tree))
            return self._propose_line(shape, sequences, depth, pipelines, generator, root_logits)
        return self._propose_tree(shape, sequences, max_depth, pipelines, generator, root_logits)

    def _catch_up(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        """Feed every row's committed tokens the draft has not seen; logits [B, V_draft] after them."""
        lengths = self.runner.lengths
        pending = [s[0, length:] for s, length in zip(sequences, lengths, strict=True)]  # [m_b] each
        counts = [int(p.shape[0]) for p in pending]
        if min(counts) == 0:
            raise RuntimeError("every row needs a committed token the draft model has not seen")
        width = max(counts)
        block = torch.zeros(len(pending), width, dtype=torch.long, device=self.runner.device)  # [B, m]
        for b, p in enumerate(pending):
            block[b, : counts[b]] = p.to(block.device)
        last = 1 if len(set(counts)) == 1 else torch.tensor(counts)[:, None] - 1  # [B, 1] rows
        return self.runner.extend_rows(block, counts, None, None, last)[:, 0]

    def _propose_line(
        self,
        shape: TreeShape,
        sequences: list[torch.Tensor],
        depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        logits: torch.Tensor,
    ) -> list[Draft]:
        """A chain of `depth` tokens per row without reading the device: each token is fed back as a
        device tensor, and whether every pass gave finite logits travels in `Draft.valid` (read by
        the caller with its own values). logits: [B, V_draft] after the committed sequences."""
        batch = len(sequences)
        sampled = pipelines[0].do_sample and not shape.deterministic
        contexts = list(sequences) if any(p.processors for p in pipelines) else None  # [1, N_b + d]
        tokens, q_rows, finite = [], [], []
        for d in range(1, depth + 1):
            finite.append(torch.isfinite(logits).all())  # []
            scores = pipelines_scores(pipelines, contexts, self._target_vocab(logits))  # [B, V]
            if sampled:
                q = probabilities(scores)  # [B, V]
                # a non-finite q is reported through `valid`; draw from something valid meanwhile
                usable = torch.isfinite(q).all(dim=-1, keepdim=True)  # [B, 1]
                token = sample(torch.where(usable, q, torch.ones_like(q)), generator)  # [B]
                q_rows.append(q)
            else:
                token = torch.topk(torch.log_softmax(scores, dim=-1), 1).indices[:, 0]  # [B]
            tokens.append(token)
            if contexts is not None:
                contexts = [
                    torch.cat([c, token[b].view(1, 1).to(c.device)], dim=1) for b, c in enumerate(contexts)
                ]
            if d < depth:
                for b, rows in enumerate(self._node_rows):
                    rows[d - 1] = self.runner.lengths[b]
                fed = token.view(batch, 1).to(self.runner.device)  # [B, 1]
                logits = self.runner.extend_rows(fed, [1] * batch, None, None, 1)[:, 0]  # [B, V_draft]
        kind = NodeKind.SAMPLED if sampled else NodeKind.DETERMINISTIC
        kinds = torch.full((depth,), int(kind), dtype=torch.long)
        drafted = torch.stack(tokens, dim=1)  # [B, depth]
        q = torch.stack(q_rows, dim=1) if sampled else None  # [B, depth, V]
        valid = torch.stack(finite).all()
        return [
            Draft(drafted[b].to(s.device), None if q is None else q[b], kinds=kinds, valid=valid)
            for b, s in enumerate(sequences)
        ]

    def _propose_tree(
        self,
        shape: TreeShape,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        root_logits: torch.Tensor,
    ) -> list[Draft]:
        """Static or dynamic trees, level by level: one host read and one draft pass per level for
        all rows. root_logits: [B, V_draft]."""
        batch = len(sequences)
        with_context = any(p.processors for p in pipelines)
        nodes: list[list[_Node]] = [[] for _ in range(batch)]
        contexts = [{-1: s} for s in sequences]  # per row: node -> [1, N_b + depth] tokens up to it
        committed = [int(s.shape[1]) for s in sequences]
        expand = [(b, -1) for b in range(batch)]  # (row, parent) pairs whose children come next
        level_logits = root_logits  # [P, V_draft], one row per pair
        for depth in range(1, max_depth + 1):
            choices, packed = self._choose_level(
                shape, expand, level_logits, nodes, pipelines, contexts if with_context else None, generator
            )
            values = packed.tolist()  # every pair's tokens, log-probabilities and flags: one host read
            created: list[list[int]] = [[] for _ in range(batch)]
            for (b, parent), choice, row in zip(expand, choices, values, strict=True):
                for child in self._children(choice, row, depth):
                    nodes[b].append(child)
                    created[b].append(len(nodes[b]) - 1)
                    if with_context:
                        token = torch.tensor([[child.token]], device=sequences[b].device)
                        contexts[b][len(nodes[b]) - 1] = torch.cat([contexts[b][parent], token], dim=1)
            if depth == max_depth or not any(created):
                break
            to_feed = [self._nodes_to_expand(shape, nodes[b], created[b]) for b in range(batch)]
            if not any(to_feed):
                break
            logits = self._feed(nodes, to_feed, committed, depth)  # [B, n, V_draft]
            expand = [(b, node) for b in range(batch) for node in to_feed[b]]
            rows = torch.tensor([b for b in range(batch) for _ in to_feed[b]], device=logits.device)
            slots = torch.tensor(
                [j for b in range(batch) for j in range(len(to_feed[b]))], device=logits.device
            )
            level_logits = logits[rows, slots]  # [P, V_draft]
        drafts = []
        for b in range(batch):
            row_nodes = nodes[b]
            if shape.mode == "dynamic" and len(row_nodes) > shape.budget:
                row_nodes = self._keep_best(b, row_nodes, shape.budget)
            drafts.append(self._draft(row_nodes, pipelines[0].do_sample, sequences[b].device))
        return drafts

    def _target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, : self.target_vocab_size].to(self.target_device)

    def _choose_level(
        self,
        shape: TreeShape,
        expand: list[tuple[int, int]],
        logits: torch.Tensor,
        nodes: list[list[_Node]],
        pipelines: list[LogitsPipeline],
        contexts: list[dict[int, torch.Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[_Choice], torch.Tensor]:
        """Every (row, parent) pair's children at one depth, chosen side by side on the device.

        logits: [P, V_draft], one row per pair of `expand`; contexts: per row, each node's tokens up to
        it (None when no pipeline has processors). Returns the pairs' choices and their packed values
        [P, 2 + 2c] double (finite, allowed, c tokens, their c log q; c the most children a pair has),
        for the caller's one host read."""
        finite = torch.isfinite(logits).all(dim=-1)  # [P]
        pair_contexts = None if contexts is None else [contexts[b][parent] for b, parent in expand]
        scores = pipelines_scores(
            [pipelines[b] for b, _ in expand], pair_contexts, self._target_vocab(logits)
        )  # [P, V]
        kids = [self._template_kids(shape, nodes[b], parent) for b, parent in expand]
        counts = [len(k) if k is not None else shape.branch for k in kids]
        width = min(max(counts), scores.shape[-1])
        log_q = torch.log_softmax(scores, dim=-1)  # [P, V]
        allowed = torch.isfinite(log_q).sum(dim=-1)  # [P]
        sampled = pipelines[0].do_sample and shape.mode != "dynamic" and not shape.deterministic
        if width == 0:
            tokens = log_q.new_zeros((len(expand), 0), dtype=torch.long)
        elif sampled:  # each pair's first `count` of `width` draws without replacement from its q
            tokens = sample_without_replacement(log_q, width, generator)  # [P, width]
        else:
            tokens = torch.topk(log_q, width, dim=-1).indices  # [P, width]
        q = probabilities(scores) if sampled else None  # [P, V]
        packed = torch.cat(
            [
                finite.double()[:, None],
                allowed.double()[:, None],
                tokens.double(),
                log_q.gather(1, tokens).double(),
            ],
            dim=1,
        )  # [P, 2 + 2 width]
        kind = NodeKind.SAMPLED_WITHOUT_REPLACEMENT if sampled else NodeKind.DETERMINISTIC
        choices = [
            _Choice(
                parent,
                nodes[b][parent].log_prob if parent >= 0 else 0.0,
                min(count, width),
                kind,
                None if q is None else q[i],
                template_kids,
                width,
            )
            for i, ((b, parent), count, template_kids) in enumerate(zip(expand, counts, kids, strict=True))
        ]
        return choices, packed

    @staticmethod
    def _template_kids(shape: TreeShape, nodes: list[_Node], parent: int) -> list[int] | None:
        """The static tree's nodes below `parent`'s template node (None for dynamic trees)."""
        if shape.mode != "static":
            return None
        return shape.tree.children_of(nodes[parent].template if parent >= 0 else -1)

    def _children(self, choice: _Choice, values: list[float], depth: int) -> list[_Node]:
        """The children of `choice` from its packed values read on the host."""
        if not values[0]:
            raise NonFiniteLogitsError("draft")
        width, kept = choice.width, min(choice.count, int(values[1]))
        return [
            _Node(
                parent=choice.parent,
                token=int(values[2 + rank]),
                kind=choice.kind,
                q_row=choice.q_row,
                log_prob=choice.parent_lp + values[2 + width + rank],
                depth=depth,
                template=choice.template_kids[rank] if choice.template_kids is not None else -1,
            )
            for rank in range(kept)
        ]

    @staticmethod
    def _nodes_to_expand(shape: TreeShape, nodes: list[_Node], created: list[int]) -> list[int]:
        """Nodes of this depth whose children the next depth proposes."""
        if shape.mode == "static":
            return [i for i in created if shape.tree.children_of(nodes[i].template)]
        best = sorted(created, key=lambda i: (-nodes[i].log_prob, i))
        return sorted(best[: shape.beam])

    def _feed(
        self, nodes: list[list[_Node]], to_feed: list[list[int]], committed: list[int], depth: int
    ) -> torch.Tensor:
        """Run the draft on every row's `to_feed` nodes (all of one depth) with ancestor-only
        attention; returns [B, n, V_draft], n the most nodes a row feeds (padding past a row's own)."""
        batch, n = len(to_feed), max(len(f) for f in to_feed)
        starts = list(self.runner.lengths)
        tokens = torch.zeros(batch, n, dtype=torch.long)  # [B, n]
        for b, feed in enumerate(to_feed):
            tokens[b, : len(feed)] = torch.tensor([nodes[b][i].token for i in feed], dtype=torch.long)
        positions = (torch.tensor(committed) - 1 + depth)[:, None].expand(batch, n)  # [B, n]
        ancestors = [[self._ancestors(nodes[b], node) for node in feed] for b, feed in enumerate(to_feed)]
        device = self.runner.device
        if n == 1 and all(
            len(feed) == 1 and set(self._node_rows[b]) == set(ancestors[b][0])
            for b, feed in enumerate(to_feed)
        ):
            # a line in every row (one node wide so far): everything cached is visible, the runner's
            # plain causal pass (no mask to build; a fixed-shape pass a CUDA graph can replay)
            for b, feed in enumerate(to_feed):
                self._node_rows[b][feed[0]] = starts[b]
            return self.runner.extend_rows(tokens.to(device), [1] * batch, positions, None, 1)
        width = max(starts) + n
        mask = torch.zeros(batch, n, width, dtype=torch.bool)  # [B, n, W] over absolute cache columns
        for b, feed in enumerate(to_feed):
            mask[b, :, : committed[b]] = True
            for j in range(n):
                mask[b, j, starts[b] + j] = True  # every node (and padding) sees itself
            for j, node in enumerate(feed):
                mask[b, j, [self._node_rows[b][a] for a in ancestors[b][j]]] = True
                self._node_rows[b][node] = starts[b] + j
            mask[b, len(feed) :, : committed[b]] = False  # padding sees only itself
        counts = [len(feed) for feed in to_feed]
        return self.runner.extend_rows(tokens.to(device), counts, positions, mask, n)

    @staticmethod
    def _ancestors(nodes: list[_Node], node: int) -> list[int]:
        """The node's ancestors, nearest first (the root excluded)."""
        ancestors = []
        parent = nodes[node].parent
        while parent >= 0:
            ancestors.append(parent)
            parent = nodes[parent].parent
        return ancestors

    def _keep_best(self, b: int, nodes: list[_Node], budget: int) -> list[_Node]:
        """Row b's `budget` nodes of highest cumulative log-probability (ancestor-closed: a child never
        scores above its parent, and ties go to the earlier, shallower node)."""
        ranked = sorted(range(len(nodes)), key=lambda i: (-nodes[i].log_prob, i))[:budget]
        kept = sorted(ranked)
        new_index = {old: new for new, old in enumerate(kept)}
        self._node_rows[b] = {new_index[o]: row for o, row in self._node_rows[b].items() if o in new_index}
        result = []
        for old in kept:
            node = nodes[old]
            parent = new_index[node.parent] if node.parent >= 0 else -1
            result.append(_Node(parent, node.token, node.kind, node.q_row, node.log_prob, node.depth))
        return result

    def _draft(self, nodes: list[_Node], do_sample: bool, device: torch.device) -> Draft:
        tree = Tree.from_parents([n.parent for n in nodes])
        tokens = torch.tensor([n.token for n in nodes], dtype=torch.long, device=device)  # [T]
        kinds = torch.tensor([int(n.kind) for n in nodes], dtype=torch.long)  # [T]
        q = None
        if do_sample and any(n.q_row is not None for n in nodes):
            vocab = next(n.q_row for n in nodes if n.q_row is not None).shape[0]
            zeros = torch.zeros(vocab, device=self.target_device)
            q = torch.stack([n.q_row if n.q_row is not None else zeros for n in nodes])  # [T, V]
        return Draft(tokens, q, tree, kinds)

    # ------------------------------------------------------------------ observe
    def observe(self, committed_lengths: list[int], paths: list[tuple[int, ...]]) -> None:
        """Per row keep the committed rows and the fed rows of the accepted path; drop every other
        node."""
        lengths = self.runner.lengths
        if all(held <= c for held, c in zip(lengths, committed_lengths, strict=True)):
            self._node_rows = [{} for _ in lengths]
            return
        starts, kept = [], []
        for b, (held, committed, path) in enumerate(zip(lengths, committed_lengths, paths, strict=True)):
            rows = []
            for node in path:
                row = self._node_rows[b].get(node)
                if row is None:
                    break
                rows.append(row)
            starts.append(min(committed, held))
            kept.append(rows if held > committed else [])
        self.runner.compact_rows(starts, kept)
        self._node_rows = [{} for _ in lengths]
