"""Options of a speculative model, validated once at construction (layer L0)."""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("chain", "prompt-lookup")


@dataclass(frozen=True)
class SpecConfig:
    """How drafts are proposed.

    strategy: "chain" (a draft model proposes k tokens autoregressively) or "prompt-lookup"
        (n-gram matches in the prompt and generated text, no draft model).
    num_draft_tokens: a fixed k, or None to choose k every step from the measured acceptance
        rate and draft/verify costs (Leviathan et al., 2023, section 3.5).
    max_draft_tokens: the largest k the adaptive choice may take.
    prompt_lookup_max_ngram / prompt_lookup_min_ngram: the n-gram sizes tried, longest first.
    """

    strategy: str = "chain"
    num_draft_tokens: int | None = None
    max_draft_tokens: int = 8
    prompt_lookup_max_ngram: int = 3
    prompt_lookup_min_ngram: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={self.strategy!r} is not supported; choose one of {', '.join(STRATEGIES)}."
            )
        if self.num_draft_tokens is not None:
            if not isinstance(self.num_draft_tokens, int) or self.num_draft_tokens < 1:
                raise ValueError(
                    f"num_draft_tokens must be an integer >= 1 (or None for adaptive), "
                    f"got {self.num_draft_tokens!r}."
                )
        if not isinstance(self.max_draft_tokens, int) or self.max_draft_tokens < 1:
            raise ValueError(f"max_draft_tokens must be an integer >= 1, got {self.max_draft_tokens!r}.")
        if not 1 <= self.prompt_lookup_min_ngram <= self.prompt_lookup_max_ngram:
            raise ValueError(
                "prompt lookup n-gram sizes must satisfy 1 <= prompt_lookup_min_ngram <= "
                f"prompt_lookup_max_ngram, got {self.prompt_lookup_min_ngram} and "
                f"{self.prompt_lookup_max_ngram}."
            )

    @property
    def needs_draft_model(self) -> bool:
        return self.strategy == "chain"

    @property
    def draft_length_cap(self) -> int:
        """The largest k this configuration ever drafts."""
        return self.num_draft_tokens if self.num_draft_tokens is not None else self.max_draft_tokens
