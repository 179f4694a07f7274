"""Hybrid drafting: n-gram (prompt lookup) and draft-model candidates merged into one token tree.

Every node of a hybrid tree is DETERMINISTIC (chosen, not drawn): the draft model contributes its top
tokens, the n-gram source its copied continuations. Exactness under sampling follows from the tree
rule for chosen candidates: a chosen token x is a point-mass proposal, accepted with probability p(x)
(= min(1, p(x) / 1)); after a rejection p becomes p with x removed and renormalised, and the next
sibling is judged against that residual. Because no node is a random draw, merging the two sources,
dropping duplicates where their paths share a prefix, and ordering siblings in any way changes no
proposal distribution, so the committed tokens are still distributed exactly as the target's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specdec.core.acceptance import NodeKind
from specdec.core.sampling import LogitsPipeline
from specdec.core.tree import Tree
from specdec.drafters.base import Draft, drafts_on_host
from specdec.drafters.model import ModelDrafter, TreeShape
from specdec.drafters.prompt_lookup import PromptLookupDrafter, find_continuations

MODEL, NGRAM = "draft-model", "prompt-lookup"
DECAY = 0.9  # weight of the past in the per-source and copy acceptance statistics (per step)
GAIN_DECAY = 0.8  # weight of the past in the mean n-gram-only accepted run (per row and step)


class HybridDrafter:
    """Merges a draft model's tree with n-gram continuations, per row; skips the model when every
    row's n-gram branch is long and has been accepted reliably in this generation.

    model_budget: nodes of the draft model's dynamic tree at an even split; the split follows the
    sources' measured acceptance (accepted / proposed nodes, decayed), between 2 and 2 * model_budget.
    trust / skip_length: the draft model is skipped on steps whose n-gram continuation has at least
    skip_length tokens while n-gram runs of at least `trust` tokens have been accepted per step
    recently (decayed mean). The statistics are shared by the rows of a batch.
    """

    name = "hybrid"
    uses_model = True

    def __init__(
        self,
        model: ModelDrafter,
        lookup: PromptLookupDrafter,
        model_budget: int = 16,
        trust: float = 2.0,
        skip_length: int = 4,
        max_candidates: int = 2,
        merge_when_sampling: bool = True,
        model_depth: int = 4,
        free_depth: int = 8,
    ) -> None:
        """merge_when_sampling=False: when sampling, propose the draft model's own tree unmerged (its
        nodes stay random draws, which accept more often than chosen tokens); used by strategy=auto."""
        self.model = model
        self.merge_when_sampling = merge_when_sampling
        self.model_depth = model_depth  # draft passes per step for the model's dynamic tree
        self.free_depth = free_depth  # longest n-gram copy a planner is offered
        self.lookup = lookup
        self.model_budget = model_budget
        self.trust = trust
        self.skip_length = skip_length
        self.max_candidates = max_candidates
        self.begin(1)

    @property
    def context_length(self) -> int | None:
        return self.model.context_length

    def begin(self, batch_size: int = 1) -> None:
        self.model.begin(batch_size)
        self.lookup.begin(batch_size)
        self._model_ran = False
        self._passthrough = False
        self._ngram_gain = 0.5  # decayed mean n-gram-only accepted length per step (with a prior)
        self._rates = {MODEL: [1.0, 2.0], NGRAM: [1.0, 2.0]}  # decayed [accepted, proposed]
        self._copy_accepted = 1.0  # decayed: copied tokens the target accepted (prior 1/2 of 2)
        self._copy_judged = 2.0  # decayed: copied tokens the target judged (accepted + first rejected)
        self._rows = [_RowState() for _ in range(batch_size)]

    def keep(self, rows: list[int]) -> None:
        self.model.keep(rows)
        self.lookup.keep(rows)
        self._rows = [self._rows[b] for b in rows]

    def free_candidates(self, sequences: list[torch.Tensor], do_sample: bool) -> list[list[float]]:
        """Per row, per position j of this step's longest n-gram copy: the chance that the accepted
        path follows the copy past position j, alpha^(j + 1), where alpha is the measured share of
        judged copied tokens that were accepted (decayed per step, prior 1/2), as prompt lookup's own
        length controller models it. What a planner must beat with draft-model nodes. Empty when
        nothing matches, or when sampling without merging."""
        if do_sample and not self.merge_when_sampling:
            return [[] for _ in sequences]
        alpha = min(self._copy_accepted / self._copy_judged, 0.999)
        reach = []
        for b, sequence in enumerate(sequences):
            longest = max((c.numel() for c in self._continuations(b, sequence, self.free_depth)), default=0)
            reach.append([alpha ** (j + 1) for j in range(longest)])
        return reach

    def committed(self, token_ids: list[list[int]]) -> None:
        """The tokens the step committed in each row (host ids, from the engine's sync)."""
        self.lookup.committed(token_ids)

    def _continuations(self, b: int, sequence: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """Row b's n-gram continuations this step (cached for the row's sequence and depth)."""
        row = self._rows[b]
        key = (sequence.shape[1], depth)
        if row.cached_key != key:
            ids = self.lookup.histories[b].view(sequence)  # [N] host
            row.cached = find_continuations(
                ids, depth, self.lookup.max_ngram, self.lookup.min_ngram, self.max_candidates
            )
            row.cached_key = key
        return row.cached

    def rate(self, source: str) -> float:
        accepted, proposed = self._rates[source]
        return accepted / proposed

    def propose(
        self,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> list[Draft]:
        """Merged candidates per row; `tree` (a run-time plan) shapes the draft model's part instead
        of the dynamic tree sized from the sources' measured acceptance."""
        if pipelines[0].do_sample and not self.merge_when_sampling:
            self._model_ran, self._passthrough = True, True
            for row in self._rows:
                row.sources, row.model_nodes = [], []
            return self.model.propose(sequences, max_depth, pipelines, generator, tree=tree)
        self._passthrough = False
        candidates = [self._continuations(b, s, max_depth) for b, s in enumerate(sequences)]
        longest = [max((c.numel() for c in found), default=0) for found in candidates]
        reliable = self._ngram_gain >= self.trust
        skip_model = reliable and all(n >= min(self.skip_length, max_depth) for n in longest)
        skip_model = skip_model or (tree is not None and len(tree) == 0)  # the plan has no model nodes
        self._model_ran = not skip_model
        model_tokens: list[list[int]] = [[] for _ in sequences]
        model_trees: list[Tree] = [Tree.chain(0) for _ in sequences]
        if not skip_model:
            if tree is not None:
                shape = TreeShape(mode="static", tree=tree, deterministic=True)
                model_depth = max_depth
            else:
                share = self.rate(MODEL) / (self.rate(MODEL) + self.rate(NGRAM))
                budget = max(2, round(2 * self.model_budget * share))
                shape = TreeShape(mode="dynamic", budget=budget, branch=4, beam=4, deterministic=True)
                model_depth = min(max_depth, self.model_depth)
            drafts = self.model.propose_shaped(shape, sequences, model_depth, pipelines, generator)
            model_tokens = drafts_on_host(drafts)  # one read for every row
            model_trees = [d.tree for d in drafts]
        merged_drafts = []
        for b, sequence in enumerate(sequences):
            row = self._rows[b]
            row.copy_length = longest[b]
            merged = _Merged()
            index: dict[int, int] = {}
            for i, (parent, token) in enumerate(zip(model_trees[b].parents, model_tokens[b], strict=True)):
                index[i] = merged.insert(index[parent] if parent >= 0 else -1, token, MODEL, i)
            for continuation in candidates[b]:
                node = -1
                for token in continuation.tolist():
                    node = merged.insert(node, token, NGRAM, None)
            row.sources = [tuple(sorted(s)) for s in merged.sources]
            row.model_nodes = merged.model_nodes
            kinds = torch.full((len(merged.tokens),), int(NodeKind.DETERMINISTIC), dtype=torch.long)
            ids = torch.tensor(merged.tokens, dtype=torch.long, device=sequence.device)  # [T_b]
            planned = [node is not None for node in merged.model_nodes]
            merged_drafts.append(
                Draft(
                    ids, None, Tree.from_parents(merged.parents), kinds, sources=row.sources, planned=planned
                )
            )
        return merged_drafts

    def observe(self, committed_lengths: list[int], paths: list[tuple[int, ...]]) -> None:
        if self._passthrough:
            self.model.observe(committed_lengths, paths)
            return
        for source in self._rates:
            self._rates[source] = [v * DECAY for v in self._rates[source]]
        model_paths = []
        for row, path in zip(self._rows, paths, strict=True):
            self._observe_row(row, path)
            model_path = []
            for node in path if row.sources else ():
                model_node = row.model_nodes[node]
                if model_node is None:
                    break
                model_path.append(model_node)
            model_paths.append(tuple(model_path) if self._model_ran else ())
            row.sources = []
        self.model.observe(committed_lengths, model_paths)

    def _observe_row(self, row: _RowState, path: tuple[int, ...]) -> None:
        """Fold one row's verified step into the shared source and copy statistics."""
        for node_sources in row.sources:
            for source in node_sources:
                self._rates[source][1] += 1.0
        for node in path:
            for source in row.sources[node]:
                self._rates[source][0] += 1.0
        ngram_run = 0
        for node in path:
            if NGRAM not in row.sources[node]:
                break
            ngram_run += 1
        self._ngram_gain = GAIN_DECAY * self._ngram_gain + (1 - GAIN_DECAY) * ngram_run
        if row.copy_length:  # the copy's tokens judged: those accepted and the first rejected one
            accepted = min(ngram_run, row.copy_length)
            judged = accepted + (1 if accepted < row.copy_length else 0)
            self._copy_accepted = DECAY * self._copy_accepted + accepted
            self._copy_judged = DECAY * self._copy_judged + judged
        row.copy_length = 0


@dataclass
class _RowState:
    """One row's hybrid draft of this step: each merged node's sources and draft-model node."""

    sources: list[tuple[str, ...]] = field(default_factory=list)
    model_nodes: list[int | None] = field(default_factory=list)  # merged node -> the model's node
    copy_length: int = 0
    cached_key: tuple[int, int] | None = None
    cached: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Merged:
    """A merged tree under construction: one node per distinct (parent, token)."""

    parents: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sources: list[set[str]] = field(default_factory=list)
    model_nodes: list[int | None] = field(default_factory=list)
    children: dict[tuple[int, int], int] = field(default_factory=dict)

    def insert(self, parent: int, token: int, source: str, model_node: int | None) -> int:
        """The node for `token` below `parent` (made when new), credited to `source`."""
        key = (parent, token)
        if key in self.children:
            node = self.children[key]
            self.sources[node].add(source)
            if model_node is not None:
                self.model_nodes[node] = model_node
            return node
        self.parents.append(parent)
        self.tokens.append(token)
        self.sources.append({source})
        self.model_nodes.append(model_node)
        self.children[key] = len(self.parents) - 1
        return len(self.parents) - 1
