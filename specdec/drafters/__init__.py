"""Drafters: sources of candidate tokens behind one protocol (layer L4)."""

from specdec.drafters.base import Draft, Drafter
from specdec.drafters.hybrid import HybridDrafter
from specdec.drafters.model import ModelDrafter
from specdec.drafters.prompt_lookup import NoDrafter, PromptLookupDrafter

__all__ = ["Draft", "Drafter", "HybridDrafter", "ModelDrafter", "NoDrafter", "PromptLookupDrafter"]
