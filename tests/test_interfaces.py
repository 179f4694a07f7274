"""The engine's two interfaces are declared: every drafter is a `Drafter`, every planner a `Planner`
(runtime-checkable Protocols: a missing method or attribute fails here, not mid-generation)."""

from __future__ import annotations

import inspect

import torch

from specdec.core import engine
from specdec.drafters import Drafter, HybridDrafter, ModelDrafter, NoDrafter, PromptLookupDrafter
from specdec.planning.chain import DraftLengthController
from specdec.planning.trees import AutoShapeController, Planner
from tests.tiny_models import tiny_llama


def test_every_drafter_implements_the_protocol():
    model = ModelDrafter(tiny_llama(), 96, torch.device("cpu"))
    lookup = PromptLookupDrafter()
    drafters = [NoDrafter(), lookup, model, HybridDrafter(model, lookup)]
    for drafter in drafters:
        assert isinstance(drafter, Drafter), type(drafter).__name__
        params = inspect.signature(drafter.propose).parameters
        assert "tree" in params, f"{type(drafter).__name__}.propose takes no tree="
        assert drafter.free_candidates([torch.tensor([[3, 4, 3]])], False) is not None


def test_every_planner_implements_the_protocol():
    for planner in (DraftLengthController(4), AutoShapeController(max_depth=4)):
        assert isinstance(planner, Planner), type(planner).__name__
        assert planner.plan(()).max_depth >= 0


def test_engine_calls_drafters_only_through_the_protocol():
    source = inspect.getsource(engine)
    assert "getattr(self.drafter" not in source


def test_wrap_takes_every_specconfig_option():
    import dataclasses

    import specdec
    from specdec import SpecConfig

    params = inspect.signature(specdec.wrap).parameters
    missing = [f.name for f in dataclasses.fields(SpecConfig) if f.name not in params]
    assert not missing, f"wrap() cannot set {missing}"
    doc = specdec.wrap.__doc__
    assert all(f'"{name}"' in doc for name in specdec.STRATEGIES), "wrap()'s docstring lists every strategy"
    target = tiny_llama()
    spec = specdec.wrap(target, target, strategy="dynamic-tree", tree_branch=2, tree_depth=3)
    assert (spec.config.tree_branch, spec.config.tree_depth) == (2, 3)
    lookup = specdec.wrap(target, strategy="prompt-lookup", prompt_lookup_max_ngram=5)
    assert lookup.config.prompt_lookup_max_ngram == 5
