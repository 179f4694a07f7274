"""Errors specdec raises beyond ValueError (layer L0)."""

from __future__ import annotations


class NonFiniteLogitsError(FloatingPointError):
    """A model produced NaN or inf logits; no token is emitted from them.

    model: "target" or "draft"; step: the speculative step (0-based) of the generate() call.
    """

    def __init__(self, model: str, step: int | None = None) -> None:
        self.model = model
        self.step = step
        where = f" at step {step}" if step is not None else ""
        super().__init__(
            f"the {model} model produced NaN or inf logits{where}; no tokens were emitted from them. "
            "Check the model's weights and dtype (fp16 overflow is a common cause; try bfloat16 or float32)."
        )
