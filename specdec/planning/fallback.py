"""Trees only where they verify exactly: otherwise the strategy falls back to a chain, with a warning."""

from __future__ import annotations

import dataclasses
import warnings

from transformers import PreTrainedModel

from specdec.config import SpecConfig
from specdec.runtime.factory import tree_support

#: Strategies that verify (and draft) token trees.
TREE_STRATEGIES = ("tree", "dynamic-tree", "hybrid", "auto")


def chains_where_trees_fail(
    config: SpecConfig, target: PreTrainedModel, draft: PreTrainedModel | None, runtime: str
) -> SpecConfig:
    """`config` unchanged, or its chain version with a one-line warning when the target (which
    verifies trees) or the draft model (which drafts them) cannot take a tree mask exactly."""
    if config.strategy not in TREE_STRATEGIES or draft is None:  # no draft model: chains only
        return config
    for role, model in (("target", target), ("draft", draft)):
        if model is None:
            continue
        reason = tree_support(model, runtime)
        if reason is not None:
            warnings.warn(
                f'strategy="{config.strategy}" falls back to "chain": the {role} {reason}.', stacklevel=4
            )
            return dataclasses.replace(config, strategy="chain", tree=None, tree_budget=None)
    return config
