"""The drafter protocol: propose(sequence, max_depth) -> Draft; observe(accepted path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.errors import NonFiniteLogitsError
from specdec.sampling import LogitsPipeline
from specdec.tree import Tree


@dataclass(frozen=True)
class Draft:
    """Candidate tokens for one step, as a tree (a chain is a tree whose node i has parent i - 1).

    tokens: [T] long on the target's device, in the tree's topological order.
    q: [T, V] float32, row i the draft distribution node i's token was drawn from; None when every
        node is deterministic (q is a point mass on its token) or the step is greedy.
    tree: the structure; default the chain of T nodes.
    kinds: [T] NodeKind per node (how it was proposed); default SAMPLED with q, else DETERMINISTIC.
    sources: optional names of the sources that proposed each node (per-source statistics).
    planned: optional, per node, whether it belongs to the run-time planned tree (the rest, e.g.
        n-gram nodes merged in, do not count in the planner's acceptance-per-rank statistics).
    valid: optional [] bool on the device, False when the draft model's logits were not finite; a
        drafter that did not read it itself leaves it to its caller's next host sync, which must
        raise NonFiniteLogitsError("draft") (the tokens are then meaningless).
    """

    tokens: torch.Tensor
    q: torch.Tensor | None = None
    tree: Tree | None = None
    kinds: torch.Tensor | None = None
    sources: list[tuple[str, ...]] | None = None
    planned: list[bool] | None = None
    valid: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tree is None:
            object.__setattr__(self, "tree", Tree.chain(int(self.tokens.shape[0])))
        if len(self.tree) != self.tokens.shape[0]:
            raise ValueError(f"draft has {self.tokens.shape[0]} tokens but its tree {len(self.tree)} nodes")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def draft_tokens_on_host(draft: Draft) -> list[int]:
    """The draft's tokens as host ints, its `valid` flag read in the same sync (raises
    NonFiniteLogitsError("draft") when the draft model's logits were not finite)."""
    if draft.valid is None:
        return draft.tokens.tolist()
    ok, *tokens = torch.cat([draft.valid.long().view(1), draft.tokens.to(draft.valid.device)]).tolist()
    if not ok:
        raise NonFiniteLogitsError("draft")
    return tokens


@runtime_checkable
class Drafter(Protocol):
    """A source of draft tokens: everything the engine calls. Implementations may keep state (a KV
    cache, a host copy of the committed ids) between steps."""

    name: str
    #: True when proposing costs model forward passes (its time is worth measuring per token).
    uses_model: bool
    #: Positions the drafter's model can hold (the engine caps the draft depth by it); None: no limit.
    context_length: int | None

    def begin(self) -> None:
        """Start a new generation (drop any state from a previous one)."""

    def free_candidates(self, sequence: torch.Tensor, do_sample: bool) -> list[float]:
        """Per position j of candidates that cost no draft pass (n-gram copies) after `sequence`
        ([1, N]): the chance the accepted path follows them past j, which a planner must beat with
        draft-model nodes. Empty when there are none."""

    def propose(
        self,
        sequence: torch.Tensor,
        max_depth: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> Draft:
        """Candidates following `sequence` ([1, N] committed tokens), at most `max_depth` deep; `tree`
        (a planned static shape) overrides the drafter's own shape for this step where it has one."""

    def observe(self, committed_length: int, path: tuple[int, ...]) -> None:
        """After verification: the first `committed_length` tokens were committed before this step and
        the draft nodes on `path` (root first) were accepted; anything else the drafter holds is stale."""

    def committed(self, token_ids: list[int]) -> None:
        """The step's committed tokens as host ints (read in the step's one sync), e.g. for n-gram
        search over a host copy of the sequence."""
