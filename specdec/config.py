"""Options of a speculative model, validated once at construction (layer L0)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from specdec.core.tree import MAX_TREE_NODES, Tree, parse_tree_spec

STRATEGIES = ("chain", "tree", "dynamic-tree", "prompt-lookup", "hybrid", "auto", "none")


def _is_int(value: object) -> bool:
    """A Python or NumPy integer that is not a bool (True would pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_INTEGER_FIELDS = (
    "num_draft_tokens",
    "max_draft_tokens",
    "tree_budget",
    "tree_branch",
    "tree_depth",
    "prompt_lookup_max_ngram",
    "prompt_lookup_min_ngram",
)


def strategy_needs_draft(strategy: str) -> bool:
    """Whether a strategy drafts with a draft model (prompt lookup and "none" do not)."""
    return strategy not in ("prompt-lookup", "none")


#: The static tree used by strategy="tree" when none is given: 4 + 8 + 16 + 16 = 44 nodes.
DEFAULT_TREE = (4, 2, 2, 1)


@dataclass(frozen=True)
class SpecConfig:
    """How drafts are proposed.

    strategy: "chain" (a draft model proposes k tokens autoregressively), "tree" (a static token
        tree), "dynamic-tree" (EAGLE-2 style, best `tree_budget` nodes by draft probability) or
        "prompt-lookup" (n-gram matches in the prompt and generated text, no draft model), "hybrid"
        (n-gram and draft-model candidates merged into one tree) or "auto"
        (chain or tree, shape and size chosen every step from measured acceptance per rank and the
        measured cost of drafting and verifying on this hardware) or "none" (no drafting: the target
        alone through specdec's runner, a baseline that separates runtime gains from speculation).
    num_draft_tokens: a fixed chain length k, or None to choose k every step from the measured
        acceptance rate and draft/verify costs (Leviathan et al., 2023, section 3.5).
    max_draft_tokens: the largest k the adaptive choice may take.
    tree: strategy="tree" only: a branching tuple such as (4, 2, 2, 1), a list of rank paths such
        as [(0,), (1,), (0, 0)], or a specdec.core.tree.Tree.
    tree_budget / tree_branch / tree_depth: strategy="dynamic-tree" only: nodes kept per step,
        children per expanded node (also the number of nodes expanded per depth), deepest level.
    prompt_lookup_max_ngram / prompt_lookup_min_ngram: the n-gram sizes tried, longest first.
    """

    strategy: str = "chain"
    num_draft_tokens: int | None = None
    max_draft_tokens: int = 8
    tree: object = None
    tree_budget: int | None = None
    tree_branch: int = 4
    tree_depth: int = 6
    prompt_lookup_max_ngram: int = 3
    prompt_lookup_min_ngram: int = 1

    def __post_init__(self) -> None:
        for name in _INTEGER_FIELDS:  # NumPy / other integral types become plain ints
            value = getattr(self, name)
            if _is_int(value) and type(value) is not int:
                object.__setattr__(self, name, int(value))
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={self.strategy!r} is not supported; choose one of {', '.join(STRATEGIES)}."
            )
        if self.num_draft_tokens is not None:
            if not _is_int(self.num_draft_tokens) or self.num_draft_tokens < 1:
                raise ValueError(
                    f"num_draft_tokens must be an integer >= 1 (or None for adaptive), "
                    f"got {self.num_draft_tokens!r}."
                )
        if not _is_int(self.max_draft_tokens) or self.max_draft_tokens < 1:
            raise ValueError(f"max_draft_tokens must be an integer >= 1, got {self.max_draft_tokens!r}.")
        if self.tree is not None and self.strategy != "tree":
            raise ValueError(f'tree= is only used with strategy="tree", not strategy="{self.strategy}".')
        if self.strategy == "tree":
            object.__setattr__(
                self, "tree", parse_tree_spec(DEFAULT_TREE if self.tree is None else self.tree)
            )
        if self.tree_budget is not None and self.strategy not in ("dynamic-tree", "hybrid"):
            raise ValueError(
                'tree_budget= is only used with strategy="dynamic-tree" or "hybrid", '
                f'not strategy="{self.strategy}".'
            )
        if self.strategy == "hybrid" and self.tree_budget is not None:
            if not _is_int(self.tree_budget) or not 1 <= self.tree_budget <= MAX_TREE_NODES:
                raise ValueError(
                    f"tree_budget must be an integer in [1, {MAX_TREE_NODES}], got {self.tree_budget!r}."
                )
        if self.strategy == "dynamic-tree":
            budget = 32 if self.tree_budget is None else self.tree_budget
            if not _is_int(budget) or not 1 <= budget <= MAX_TREE_NODES:
                raise ValueError(f"tree_budget must be an integer in [1, {MAX_TREE_NODES}], got {budget!r}.")
            object.__setattr__(self, "tree_budget", budget)
            for name in ("tree_branch", "tree_depth"):
                value = getattr(self, name)
                if not _is_int(value) or value < 1:
                    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.num_draft_tokens is not None and self.strategy in ("tree", "dynamic-tree", "hybrid", "auto"):
            raise ValueError(
                f'num_draft_tokens is for chains; strategy="{self.strategy}" takes its shape from '
                "tree= or tree_budget=."
            )
        for name in ("prompt_lookup_max_ngram", "prompt_lookup_min_ngram"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        if not 1 <= self.prompt_lookup_min_ngram <= self.prompt_lookup_max_ngram:
            raise ValueError(
                "prompt lookup n-gram sizes must satisfy 1 <= prompt_lookup_min_ngram <= "
                f"prompt_lookup_max_ngram, got {self.prompt_lookup_min_ngram} and "
                f"{self.prompt_lookup_max_ngram}."
            )

    @property
    def needs_draft_model(self) -> bool:
        return strategy_needs_draft(self.strategy)

    @property
    def static_tree(self) -> Tree | None:
        return self.tree if isinstance(self.tree, Tree) else None

    @property
    def max_depth(self) -> int:
        """The deepest draft this configuration ever proposes."""
        if self.strategy == "tree":
            return self.static_tree.depth
        if self.strategy == "dynamic-tree":
            return self.tree_depth
        return self.num_draft_tokens if self.num_draft_tokens is not None else self.max_draft_tokens
