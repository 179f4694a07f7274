"""A draft model proposing a chain of k tokens autoregressively on its own KV cache."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from specdec.drafters.base import Draft
from specdec.models.runner import CausalRunner
from specdec.sampling import LogitsPipeline, probabilities, sample


class ModelDrafter:
    """Chain drafts from a small causal LM.

    target_vocab_size: ids at or past it are masked out of the draft's proposals (a draft may carry
    extra tokens, e.g. TinyLlama-Chat-v0.1's 32001 ids against Llama-2's 32000).
    """

    name = "draft-model"
    uses_model = True

    def __init__(self, model: PreTrainedModel, target_vocab_size: int, target_device: torch.device) -> None:
        self.runner = CausalRunner(model)
        self.target_vocab_size = target_vocab_size
        self.target_device = target_device

    @property
    def context_length(self) -> int | None:
        return self.runner.context_length

    def begin(self) -> None:
        self.runner.reset()

    def propose(
        self,
        sequence: torch.Tensor,
        k: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
    ) -> Draft:
        """k tokens x_i ~ q_i (or argmax when greedy), each after the committed sequence + x_<i."""
        pending = sequence[0, self.runner.length :]  # [m] committed tokens the draft has not seen
        logits = self.runner.extend(pending, num_logits=1)  # [1, V_draft]
        context = sequence
        tokens: list[torch.Tensor] = []
        q_rows: list[torch.Tensor] = []
        for i in range(k):
            raw = logits[:, : self.target_vocab_size].to(self.target_device)  # [1, V]
            scores = pipeline.scores(context, raw)  # [1, V] float32
            if pipeline.do_sample:
                q = probabilities(scores)  # [1, V]
                token = sample(q, generator)  # [1]
                q_rows.append(q)
            else:
                token = scores.argmax(dim=-1)  # [1]
            tokens.append(token)
            context = torch.cat([context, token.view(1, 1)], dim=1)
            if i + 1 < k:
                logits = self.runner.extend(token, num_logits=1)
        draft_tokens = torch.cat(tokens) if tokens else sequence.new_empty(0)  # [k]
        q_all = torch.cat(q_rows) if q_rows else None  # [k, V]
        return Draft(draft_tokens, q_all)

    def observe(self, valid_length: int) -> None:
        if self.runner.length > valid_length:
            self.runner.truncate(valid_length)
