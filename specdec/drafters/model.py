"""A draft model proposing a chain, a static tree or a dynamic tree on its own KV cache.

The draft expands its proposal depth by depth: one forward pass per depth scores every node of that
depth that gets children, with an ancestor-only attention mask (as the target does when verifying).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from specdec.acceptance import NodeKind
from specdec.drafters.base import Draft
from specdec.errors import NonFiniteLogitsError
from specdec.models.llama_runner import make_runner
from specdec.sampling import LogitsPipeline, probabilities, sample, sample_without_replacement
from specdec.tree import Tree


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
    """One parent's proposed children before the host has read them."""

    parent: int
    parent_lp: float
    count: int
    kind: NodeKind
    q_row: torch.Tensor | None  # [V] the distribution the children were drawn from
    template_kids: list[int] | None  # the static tree's nodes they instantiate
    packed: torch.Tensor  # [2 + 2 count] double on the device: finite, allowed, tokens, log q


class ModelDrafter:
    """Draft tokens from a small causal LM.

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
        self._node_rows: dict[int, int] = {}  # node index -> draft cache row, for nodes fed this step

    @property
    def context_length(self) -> int | None:
        return self.runner.context_length

    def begin(self) -> None:
        self.runner.reset()
        self._node_rows = {}

    def free_candidates(self, sequence: torch.Tensor, do_sample: bool) -> list[float]:
        """Every candidate of a draft model costs a draft pass."""
        return []

    def committed(self, token_ids: list[int]) -> None:
        """Nothing to keep: the draft's own cache holds the committed tokens."""

    # ------------------------------------------------------------------ propose
    def propose(
        self,
        sequence: torch.Tensor,
        max_depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> Draft:
        """A tree of depth <= max_depth after `sequence` ([1, N] committed tokens); `tree` overrides
        the drafter's own shape for this step (a static tree planned at run time)."""
        if tree is None:
            return self._propose(sequence, max_depth, pipeline, generator)
        shape = TreeShape(mode="static", tree=tree, deterministic=self.shape.deterministic)
        return self.propose_shaped(shape, sequence, max_depth, pipeline, generator)

    def propose_shaped(
        self,
        shape: TreeShape,
        sequence: torch.Tensor,
        max_depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
    ) -> Draft:
        """`propose` with `shape` in place of the drafter's own shape, for this call only."""
        if shape.mode == "static" and len(shape.tree) == 0:
            return Draft(sequence.new_empty(0))
        saved, self.shape = self.shape, shape
        try:
            return self._propose(sequence, max_depth, pipeline, generator)
        finally:
            self.shape = saved

    def _propose(
        self,
        sequence: torch.Tensor,
        max_depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
    ) -> Draft:
        self._node_rows = {}
        pending = sequence[0, self.runner.length :]  # [m] committed tokens the draft has not seen
        root_logits = self.runner.extend(pending, num_logits=1)  # [1, V_draft]
        if self.shape.mode == "chain" or (self.shape.mode == "static" and self.shape.tree.is_chain):
            depth = max_depth if self.shape.mode == "chain" else min(max_depth, len(self.shape.tree))
            return self._propose_line(sequence, depth, pipeline, generator, root_logits)
        nodes: list[_Node] = []
        contexts: dict[int, torch.Tensor] = {-1: sequence}  # node -> [1, N + depth] tokens up to it
        expand = [(-1, root_logits)]  # nodes whose children are chosen at this depth, with logits
        for depth in range(1, max_depth + 1):
            created: list[int] = []
            choices = []
            for parent, logits in expand:
                finite = torch.isfinite(logits).all()  # [] on the device, read with the choices below
                scores = pipeline.scores(contexts[parent], self._target_vocab(logits))  # [1, V]
                choices.append(self._choose(parent, nodes, scores, pipeline.do_sample, generator, finite))
            # every parent's choice, log-probabilities and finiteness flag reach the host in one sync
            values = torch.cat([choice.packed for choice in choices]).tolist()
            offset = 0
            for choice in choices:
                size = choice.packed.shape[0]
                children = self._children(choice, values[offset : offset + size], depth)
                offset += size
                for child in children:
                    nodes.append(child)
                    index = len(nodes) - 1
                    created.append(index)
                    contexts[index] = torch.cat(
                        [contexts[parent], torch.tensor([[child.token]], device=sequence.device)], dim=1
                    )
            if depth == max_depth or not created:
                break
            to_feed = self._nodes_to_expand(nodes, created, depth)
            if not to_feed:
                break
            logits = self._feed(nodes, to_feed, sequence.shape[1])  # [len(to_feed), V_draft]
            expand = [(node, logits[i : i + 1]) for i, node in enumerate(to_feed)]
        if self.shape.mode == "dynamic" and len(nodes) > self.shape.budget:
            nodes = self._keep_best(nodes)
        return self._draft(nodes, pipeline.do_sample, sequence.device)

    def _propose_line(
        self,
        sequence: torch.Tensor,
        depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
        logits: torch.Tensor,
    ) -> Draft:
        """A chain of `depth` tokens without reading the device: each token is fed back as a device
        tensor, and whether every pass gave finite logits travels in `Draft.valid` (read by the
        caller with its own values). logits: [1, V_draft] after the committed sequence."""
        if depth <= 0:
            return Draft(sequence.new_empty(0))
        committed = sequence.shape[1]
        sampled = pipeline.do_sample and not self.shape.deterministic
        context = sequence  # [1, N + d]
        tokens, q_rows, finite = [], [], []
        for d in range(1, depth + 1):
            finite.append(torch.isfinite(logits).all())  # []
            scores = pipeline.scores(context, self._target_vocab(logits))  # [1, V]
            if sampled:
                q = probabilities(scores)[0]  # [V]
                # a non-finite q is reported through `valid`; draw from something valid meanwhile
                token = sample(torch.where(torch.isfinite(q).all(), q, torch.ones_like(q)), generator).view(1)
                q_rows.append(q)
            else:
                token = torch.topk(torch.log_softmax(scores[0], dim=-1), 1).indices  # [1]
            tokens.append(token)
            context = torch.cat([context, token.view(1, 1).to(context.device)], dim=1)
            if d < depth:
                self._node_rows[d - 1] = self.runner.length
                position = torch.tensor([committed - 1 + d], device=self.runner.device)
                logits = self.runner.extend(token.to(self.runner.device), num_logits=1, positions=position)
        kind = NodeKind.SAMPLED if sampled else NodeKind.DETERMINISTIC
        return Draft(
            torch.cat(tokens).to(sequence.device),  # [depth]
            torch.stack(q_rows) if sampled else None,  # [depth, V]
            kinds=torch.full((depth,), int(kind), dtype=torch.long),
            valid=torch.stack(finite).all(),
        )

    def _target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, : self.target_vocab_size].to(self.target_device)

    def _choose(
        self,
        parent: int,
        nodes: list[_Node],
        scores: torch.Tensor,
        do_sample: bool,
        generator: torch.Generator | None,
        finite: torch.Tensor,
    ) -> _Choice:
        """Tokens proposed below `parent` from its processed draft scores ([1, V]), still on the
        device; `finite` ([] bool) says whether the draft's logits were finite."""
        mode = self.shape.mode  # "static" or "dynamic" (chains are drafted by `_propose_line`)
        parent_lp = nodes[parent].log_prob if parent >= 0 else 0.0
        if mode == "static":
            template = nodes[parent].template if parent >= 0 else -1
            template_kids = self.shape.tree.children_of(template)
            count = len(template_kids)
        else:
            count, template_kids = self.shape.branch, None
        if count == 0:
            packed = torch.stack([finite.double(), finite.new_zeros((), dtype=torch.double)])  # [2]
            return _Choice(parent, parent_lp, 0, NodeKind.DETERMINISTIC, None, None, packed)
        log_q = torch.log_softmax(scores[0], dim=-1)  # [V]
        count = min(count, log_q.shape[0])
        allowed = torch.isfinite(log_q).sum()  # []
        if do_sample and mode != "dynamic" and not self.shape.deterministic:
            # `count` draws without replacement from q (the first `allowed` kept)
            tokens = sample_without_replacement(log_q, count, generator)  # [count]
            kind, q_row = NodeKind.SAMPLED_WITHOUT_REPLACEMENT, probabilities(scores)[0]  # q: [V]
        else:
            tokens = torch.topk(log_q, count).indices
            kind, q_row = NodeKind.DETERMINISTIC, None
        flags = torch.stack([finite.double(), allowed.double()])  # [2]
        packed = torch.cat([flags, tokens.double(), log_q[tokens].double()])  # [2 + 2 count]
        return _Choice(parent, parent_lp, count, kind, q_row, template_kids, packed)

    def _children(self, choice: _Choice, values: list[float], depth: int) -> list[_Node]:
        """The children of `choice` from its packed values read on the host."""
        if not values[0]:
            raise NonFiniteLogitsError("draft")
        n, kept = choice.count, min(choice.count, int(values[1]))
        return [
            _Node(
                parent=choice.parent,
                token=int(values[2 + rank]),
                kind=choice.kind,
                q_row=choice.q_row,
                log_prob=choice.parent_lp + values[2 + n + rank],
                depth=depth,
                template=choice.template_kids[rank] if choice.template_kids is not None else -1,
            )
            for rank in range(kept)
        ]

    def _nodes_to_expand(self, nodes: list[_Node], created: list[int], depth: int) -> list[int]:
        """Nodes of this depth whose children the next depth proposes."""
        if self.shape.mode == "static":
            return [i for i in created if self.shape.tree.children_of(nodes[i].template)]
        best = sorted(created, key=lambda i: (-nodes[i].log_prob, i))
        return sorted(best[: self.shape.beam])

    def _feed(self, nodes: list[_Node], to_feed: list[int], committed: int) -> torch.Tensor:
        """Run the draft on `to_feed` nodes (all of one depth) with ancestor-only attention."""
        start = self.runner.length
        fed_rows = dict(self._node_rows)
        tokens = torch.tensor([nodes[n].token for n in to_feed], device=self.runner.device)
        positions = torch.tensor([committed - 1 + nodes[n].depth for n in to_feed], device=self.runner.device)
        if len(to_feed) == 1 and set(fed_rows) == set(self._ancestors(nodes, to_feed[0])):
            # a line (a tree that is one node wide so far): everything cached is visible, the runner's
            # plain causal pass
            # (no mask to build; a fixed-shape pass a CUDA graph can replay)
            self._node_rows[to_feed[0]] = start
            return self.runner.extend(tokens, num_logits=1, positions=positions)
        width = start + len(to_feed)
        mask = torch.zeros(len(to_feed), width, dtype=torch.bool)
        mask[:, :committed] = True
        for i, node in enumerate(to_feed):
            mask[i, start + i] = True
            mask[i, [fed_rows[a] for a in self._ancestors(nodes, node)]] = True
            self._node_rows[node] = start + i
        return self.runner.extend(tokens, num_logits=len(to_feed), positions=positions, attention=mask)

    @staticmethod
    def _ancestors(nodes: list[_Node], node: int) -> list[int]:
        """The node's ancestors, nearest first (the root excluded)."""
        ancestors = []
        parent = nodes[node].parent
        while parent >= 0:
            ancestors.append(parent)
            parent = nodes[parent].parent
        return ancestors

    def _keep_best(self, nodes: list[_Node]) -> list[_Node]:
        """The `budget` nodes of highest cumulative log-probability (ancestor-closed: a child never
        scores above its parent, and ties go to the earlier, shallower node)."""
        ranked = sorted(range(len(nodes)), key=lambda i: (-nodes[i].log_prob, i))[: self.shape.budget]
        kept = sorted(ranked)
        new_index = {old: new for new, old in enumerate(kept)}
        self._node_rows = {new_index[o]: row for o, row in self._node_rows.items() if o in new_index}
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
    def observe(self, committed_length: int, path: tuple[int, ...]) -> None:
        """Keep the committed rows and the fed rows of the accepted path; drop every other node."""
        if self.runner.length <= committed_length:
            return
        rows = []
        for node in path:
            row = self._node_rows.get(node)
            if row is None:
                break
            rows.append(row)
        self.runner.compact(committed_length, rows)
        self._node_rows = {}
