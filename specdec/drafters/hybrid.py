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

import torch

from specdec.acceptance import NodeKind
from specdec.drafters.base import Draft, draft_tokens_on_host
from specdec.drafters.model import ModelDrafter, TreeShape
from specdec.drafters.prompt_lookup import PromptLookupDrafter, find_continuations
from specdec.sampling import LogitsPipeline
from specdec.tree import Tree

MODEL, NGRAM = "draft-model", "prompt-lookup"
DECAY = 0.9  # weight of the past in the per-source and copy acceptance statistics


class HybridDrafter:
    """Merges a draft model's tree with n-gram continuations; skips the model when the n-gram branch
    is long and has been accepted reliably in this generation.

    model_budget: nodes of the draft model's dynamic tree at an even split; the split follows the
    sources' measured acceptance (accepted / proposed nodes, decayed), between 2 and 2 * model_budget.
    trust / skip_length: the draft model is skipped on steps whose n-gram continuation has at least
    skip_length tokens while n-gram runs of at least `trust` tokens have been accepted per step
    recently (decayed mean).
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
        self._model_nodes: list[int | None] = []  # merged node -> the model's node index
        self._model_ran = False
        self._sources: list[tuple[str, ...]] = []
        self._passthrough = False
        self._ngram_gain = 0.5  # decayed mean n-gram-only accepted length per step (with a prior)
        self._rates = {MODEL: [1.0, 2.0], NGRAM: [1.0, 2.0]}  # decayed [accepted, proposed]
        self._reset_copy_statistics()

    def _reset_copy_statistics(self) -> None:
        self._copy_accepted = 1.0  # decayed: copied tokens the target accepted (prior 1/2 of 2)
        self._copy_judged = 2.0  # decayed: copied tokens the target judged (accepted + first rejected)
        self._copy_length = 0
        self._cached_key: tuple[int, int] | None = None
        self._cached: list[torch.Tensor] = []

    @property
    def context_length(self) -> int | None:
        return self.model.context_length

    def begin(self) -> None:
        self.model.begin()
        self.lookup.begin()
        self._sources = []
        self._passthrough = False
        self._ngram_gain = 0.5
        self._rates = {MODEL: [1.0, 2.0], NGRAM: [1.0, 2.0]}
        self._reset_copy_statistics()

    def free_candidates(self, sequence: torch.Tensor, do_sample: bool) -> list[float]:
        """Per position j of this step's longest n-gram copy after `sequence` ([1, N]): the chance
        that the accepted path follows the copy past position j, alpha^(j + 1), where alpha is the
        measured share of judged copied tokens that were accepted (decayed per step, prior 1/2), as
        prompt lookup's own length controller models it. What a planner must beat with draft-model
        nodes. Empty when nothing matches, or when sampling without merging."""
        if do_sample and not self.merge_when_sampling:
            return []
        candidates = self._continuations(sequence, self.free_depth)
        longest = max((c.numel() for c in candidates), default=0)
        alpha = min(self._copy_accepted / self._copy_judged, 0.999)
        return [alpha ** (j + 1) for j in range(longest)]

    def committed(self, token_ids: list[int]) -> None:
        """The tokens the step committed (host ids, from the engine's sync)."""
        self.lookup.committed(token_ids)

    def _continuations(self, sequence: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """This step's n-gram continuations (cached for the step's sequence and depth)."""
        key = (sequence.shape[1], depth)
        if self._cached_key != key:
            ids = self.lookup.history.view(sequence)  # [N] host
            self._cached = find_continuations(
                ids, depth, self.lookup.max_ngram, self.lookup.min_ngram, self.max_candidates
            )
            self._cached_key = key
        return self._cached

    def rate(self, source: str) -> float:
        accepted, proposed = self._rates[source]
        return accepted / proposed

    def propose(
        self,
        sequence: torch.Tensor,
        max_depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> Draft:
        """Merged candidates; `tree` (a run-time plan) shapes the draft model's part instead of the
        dynamic tree sized from the sources' measured acceptance."""
        if pipeline.do_sample and not self.merge_when_sampling:
            self._model_ran, self._sources, self._model_nodes = True, [], []
            self._passthrough = True
            return self.model.propose(sequence, max_depth, pipeline, generator, tree=tree)
        self._passthrough = False
        candidates = self._continuations(sequence, max_depth)
        longest = max((c.numel() for c in candidates), default=0)
        self._copy_length = longest
        skip_model = longest >= min(self.skip_length, max_depth) and self._ngram_gain >= self.trust
        skip_model = skip_model or (tree is not None and len(tree) == 0)  # the plan has no model nodes
        self._model_ran = not skip_model
        parents: list[int] = []
        tokens: list[int] = []
        sources: list[set[str]] = []
        self._model_nodes = []
        children: dict[tuple[int, int], int] = {}  # (parent, token) -> merged node

        def insert(parent: int, token: int, source: str, model_node: int | None) -> int:
            key = (parent, token)
            if key in children:
                node = children[key]
                sources[node].add(source)
                if model_node is not None:
                    self._model_nodes[node] = model_node
                return node
            parents.append(parent)
            tokens.append(token)
            sources.append({source})
            self._model_nodes.append(model_node)
            children[key] = len(parents) - 1
            return len(parents) - 1

        if not skip_model:
            if tree is not None:
                shape = TreeShape(mode="static", tree=tree, deterministic=True)
                model_depth = max_depth
            else:
                share = self.rate(MODEL) / (self.rate(MODEL) + self.rate(NGRAM))
                budget = max(2, round(2 * self.model_budget * share))
                shape = TreeShape(mode="dynamic", budget=budget, branch=4, beam=4, deterministic=True)
                model_depth = min(max_depth, self.model_depth)
            draft = self.model.propose_shaped(shape, sequence, model_depth, pipeline, generator)
            model_tokens = draft_tokens_on_host(draft)
            merged: dict[int, int] = {}
            for i, (parent, token) in enumerate(zip(draft.tree.parents, model_tokens, strict=True)):
                merged[i] = insert(merged[parent] if parent >= 0 else -1, token, MODEL, i)
        for continuation in candidates:
            node = -1
            for token in continuation.tolist():
                node = insert(node, token, NGRAM, None)
        merged_tree = Tree.from_parents(parents)
        kinds = torch.full((len(tokens),), int(NodeKind.DETERMINISTIC), dtype=torch.long)
        ids = torch.tensor(tokens, dtype=torch.long, device=sequence.device)
        self._sources = [tuple(sorted(s)) for s in sources]
        planned = [node is not None for node in self._model_nodes]
        return Draft(ids, None, merged_tree, kinds, sources=self._sources, planned=planned)

    def observe(self, committed_length: int, path: tuple[int, ...]) -> None:
        if self._passthrough:
            self.model.observe(committed_length, path)
            return
        for source in self._rates:
            self._rates[source] = [v * DECAY for v in self._rates[source]]
        for node_sources in self._sources:
            for source in node_sources:
                self._rates[source][1] += 1.0
        for node in path:
            for source in self._sources[node]:
                self._rates[source][0] += 1.0
        ngram_run = 0
        for node in path:
            if NGRAM not in self._sources[node]:
                break
            ngram_run += 1
        self._ngram_gain = 0.8 * self._ngram_gain + 0.2 * ngram_run
        if self._copy_length:  # the copy's tokens judged: those accepted and the first rejected one
            accepted = min(ngram_run, self._copy_length)
            judged = accepted + (1 if accepted < self._copy_length else 0)
            self._copy_accepted = DECAY * self._copy_accepted + accepted
            self._copy_judged = DECAY * self._copy_judged + judged
        self._copy_length = 0
        model_path = []
        for node in path if self._sources else ():
            model_node = self._model_nodes[node]
            if model_node is None:
                break
            model_path.append(model_node)
        self.model.observe(committed_length, tuple(model_path) if self._model_ran else ())
        self._sources = []
