"""Vocabulary safety: the draft and the target must give the same ids the same tokens (layer L1)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass


class VocabularyMismatchError(ValueError):
    """The draft's token ids do not mean what the target's mean."""


@dataclass(frozen=True)
class VocabInfo:
    """What is known of one model's vocabulary.

    size: width of its logits. tokens: id -> token string from its tokenizer, or None when no
    tokenizer is at hand. special: named special ids (bos, eos, pad) from its config.
    """

    size: int
    tokens: Mapping[int, str] | None
    special: Mapping[str, object]


def check_vocabularies(target: VocabInfo, draft: VocabInfo) -> None:
    """Refuse a draft whose ids map to other tokens than the target's.

    A draft with extra ids past the target's vocabulary is accepted (the drafter masks them out).
    Without tokenizers the sizes and special ids are compared and a warning says ids were not checked.
    Raises VocabularyMismatchError naming the first differing id.
    """
    if draft.size < target.size:
        raise VocabularyMismatchError(
            f"the draft model has {draft.size} output ids but the target has {target.size}; the draft "
            f"cannot propose ids >= {draft.size} (first differing id: {draft.size}). Use a draft that "
            "shares the target's tokenizer."
        )
    if target.tokens is not None and draft.tokens is not None:
        shared = min(len(target.tokens), len(draft.tokens))
        for i in range(shared):
            if target.tokens.get(i) != draft.tokens.get(i):
                raise VocabularyMismatchError(
                    f"draft and target tokenizers differ at id {i}: target {target.tokens.get(i)!r}, "
                    f"draft {draft.tokens.get(i)!r}. Speculative decoding needs a draft with the "
                    "target's tokenizer."
                )
        if len(target.tokens) > len(draft.tokens):
            raise VocabularyMismatchError(
                f"the target tokenizer has {len(target.tokens)} tokens, the draft's {len(draft.tokens)}; "
                f"first differing id: {len(draft.tokens)}."
            )
    else:
        warnings.warn(
            "no tokenizer for the target or the draft: only vocabulary sizes and special ids were "
            "compared, token ids were not checked. Pass tokenizer= and draft_tokenizer= to wrap() "
            "to check them.",
            stacklevel=3,
        )
    for name, target_id in target.special.items():
        draft_id = draft.special.get(name)
        if target_id is not None and draft_id is not None and target_id != draft_id:
            raise VocabularyMismatchError(
                f"draft and target disagree on {name}: target {target_id!r}, draft {draft_id!r} "
                f"(first differing id: {min(_first_id(target_id), _first_id(draft_id))})."
            )


def _first_id(value: object) -> int:
    if isinstance(value, (list, tuple)):
        return min(value) if value else 0
    return int(value)  # type: ignore[arg-type]


def tokenizer_tokens(tokenizer) -> dict[int, str]:
    """id -> token string of a transformers tokenizer (its whole vocabulary, added tokens included)."""
    return {i: t for t, i in tokenizer.get_vocab().items()}
