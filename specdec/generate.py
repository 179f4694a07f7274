"""A drop-in `generate()` over a target and a drafter (layer L6).

`SpeculativeModel.generate` accepts what transformers' `GenerationMixin.generate` accepts for
decoder-only models and returns what it returns (prompt + new tokens, or a
`GenerateDecoderOnlyOutput`). Options it cannot honour raise ValueError naming the option.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from specdec.adaptive import DraftLengthController
from specdec.batch import BatchSpeculativeEngine
from specdec.batch_generate import (
    batch_controller,
    batch_costs,
    batch_prompts,
    check_batch_options,
    generate_batch,
    pad_id,
    pad_outputs,
)
from specdec.calibration import measure_costs
from specdec.config import SpecConfig
from specdec.costs import CostProfile, planning_costs
from specdec.drafters import Drafter, HybridDrafter, ModelDrafter, NoDrafter, PromptLookupDrafter
from specdec.drafters.model import TreeShape
from specdec.engine import SpeculativeEngine
from specdec.models.llama_runner import make_runner
from specdec.models.loading import find_tokenizer, vocab_info
from specdec.sampling import LogitsPipeline
from specdec.shaping import AutoShapeController
from specdec.stats import GenerationStats
from specdec.vocab import check_vocabularies

# GenerationConfig fields whose non-default values this implementation cannot honour yet.
# Each maps to a predicate that is True when the value is harmless.
_UNSUPPORTED_OPTIONS: dict[str, Any] = {
    "num_beams": lambda v: v in (None, 1),
    "num_return_sequences": lambda v: v in (None, 1),
    "num_beam_groups": lambda v: v in (None, 1),
    "penalty_alpha": lambda v: v is None,
    "guidance_scale": lambda v: v in (None, 1, 1.0),
    "sequence_bias": lambda v: v is None,
    "forced_bos_token_id": lambda v: v is None,
    "forced_eos_token_id": lambda v: v is None,
    "exponential_decay_length_penalty": lambda v: v is None,
    "begin_suppress_tokens": lambda v: v is None,
    "epsilon_cutoff": lambda v: not v,
    "eta_cutoff": lambda v: not v,
    "encoder_repetition_penalty": lambda v: v in (None, 1, 1.0),
    "encoder_no_repeat_ngram_size": lambda v: not v,
    "renormalize_logits": lambda v: not v,
    "remove_invalid_values": lambda v: not v,
    "watermarking_config": lambda v: v is None,
    "stop_strings": lambda v: not v,
    "top_h": lambda v: v is None,
    "output_attentions": lambda v: not v,
    "output_hidden_states": lambda v: not v,
    "prompt_lookup_num_tokens": lambda v: v is None,
    "assistant_early_exit": lambda v: v is None,
    "cache_implementation": lambda v: v in (None, "dynamic"),
    "constraints": lambda v: not v,
    "force_words_ids": lambda v: not v,
}


class SpeculativeModel:
    """A target model with a drafter; `generate()` returns exactly what the target would generate.

    Use `specdec.wrap(...)` to build one. `stats` holds the statistics of the last `generate()` call.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        config: SpecConfig,
        tokenizer=None,
        draft_tokenizer=None,
        runtime: str = "auto",
        cuda_graphs: bool = False,
    ) -> None:
        self.target = target
        self.runtime = runtime
        self.cuda_graphs = cuda_graphs
        self.draft = draft
        self.config = config
        self.tokenizer = tokenizer
        self.stats: GenerationStats | None = None
        #: Measured draft/verify costs that adaptive strategies plan with; measured at the first
        #: generate() that needs it and then kept (set it to reuse a profile across processes).
        self.cost_profile: CostProfile | None = None
        self._target_runner = make_runner(target, runtime, cuda_graphs)
        self._batch_profiles: dict[int, CostProfile | None] = {}  # batch size -> measured costs
        self._drafter = self._make_drafter(draft, draft_tokenizer)

    def _make_drafter(self, draft: PreTrainedModel | None, draft_tokenizer) -> Drafter:
        if not self.config.needs_draft_model and draft is not None:
            raise ValueError(f'strategy="{self.config.strategy}" uses no draft model; pass draft=None.')
        if self.config.strategy == "none":
            return NoDrafter()
        if self.config.strategy == "hybrid" and draft is None:
            warnings.warn(
                'strategy="hybrid" without a draft model: using prompt lookup (n-gram drafts) alone.',
                stacklevel=4,
            )
            self.config = dataclasses.replace(self.config, strategy="prompt-lookup", tree_budget=None)
        if self.config.strategy == "prompt-lookup":
            return PromptLookupDrafter(
                self.config.prompt_lookup_max_ngram, self.config.prompt_lookup_min_ngram
            )
        if draft is None:
            raise ValueError(f'strategy="{self.config.strategy}" needs a draft model; got draft=None.')
        context = self._target_runner.context_length
        if context is not None and self.config.max_depth >= context:
            raise ValueError(
                f"the draft is {self.config.max_depth} tokens deep, which does not fit the target's "
                f"context of {context} positions; use a shallower tree or fewer draft tokens."
            )
        target_tokenizer = self.tokenizer if self.tokenizer is not None else find_tokenizer(self.target)
        if draft_tokenizer is None:
            draft_tokenizer = find_tokenizer(draft)
        check_vocabularies(vocab_info(self.target, target_tokenizer), vocab_info(draft, draft_tokenizer))
        model = ModelDrafter(
            draft,
            self._target_runner.vocab_size,
            self._target_runner.device,
            self._shape(),
            self.runtime,
            self.cuda_graphs,
        )
        if self.config.strategy in ("hybrid", "auto"):
            lookup = PromptLookupDrafter(
                self.config.prompt_lookup_max_ngram, self.config.prompt_lookup_min_ngram
            )
            # auto merges n-gram copies into its planned tree when greedy; when sampling it keeps the
            # draft model's random draws unmerged (they accept more often than chosen tokens)
            auto = self.config.strategy == "auto"
            return HybridDrafter(
                model,
                lookup,
                model_budget=self.config.tree_budget or 16,
                merge_when_sampling=not auto,
                max_candidates=1 if auto else 2,
                free_depth=self.config.max_draft_tokens,
            )
        return model

    def _shape(self) -> TreeShape:
        config = self.config
        if config.strategy == "tree":
            return TreeShape(mode="static", tree=config.static_tree)
        if config.strategy == "dynamic-tree":
            return TreeShape(
                mode="dynamic",
                budget=config.tree_budget,
                branch=config.tree_branch,
                beam=config.tree_branch,
            )
        return TreeShape(mode="chain")

    def _controller(self, do_sample: bool) -> DraftLengthController | AutoShapeController:
        """Chains adapt k (unless fixed); trees draft to their own depth; auto plans every step.

        The measured cost profile is refined or kept as `costs.planning_costs` says."""
        config = self.config
        if config.strategy == "auto":
            costs, refine = planning_costs(self._costs(65), do_sample)
            return AutoShapeController(
                max_depth=config.max_draft_tokens,
                costs=costs,
                free_depth=config.max_draft_tokens,
                refine_costs=refine,
            )
        if config.strategy in ("tree", "dynamic-tree", "hybrid"):
            return DraftLengthController(config.max_depth, fixed_k=config.max_depth)
        if config.strategy == "none":
            return DraftLengthController(1, fixed_k=0)
        if config.num_draft_tokens is not None:
            return DraftLengthController(config.max_draft_tokens, config.num_draft_tokens)
        costs, refine = planning_costs(self._costs(config.max_draft_tokens + 1), do_sample)
        return DraftLengthController(config.max_draft_tokens, costs=costs, refine_costs=refine)

    def _costs(self, max_verify_tokens: int) -> CostProfile:
        if self.cost_profile is None:
            self.cost_profile = measure_costs(self._target_runner, self._drafter, max_verify_tokens)
        return self.cost_profile

    # ------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | GenerateDecoderOnlyOutput:
        """Generate like `target.generate(...)`, speculatively.

        inputs / input_ids: [B, L] prompt ids (left padding through attention_mask); B > 1 runs the
        chain, tree, prompt-lookup and none strategies on Llama-layout models (see specdec.batch).
        generator: a torch.Generator for the draws (specdec extension); default: torch's global RNG.
        Returns [B, L + new] ids (rows that stop early padded with pad_token_id), or a
        GenerateDecoderOnlyOutput when return_dict_in_generate=True.
        """
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        attention_mask = kwargs.pop("attention_mask", None)
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] > 1:
            return self._generate_batch(
                input_ids, attention_mask, generation_config, logits_processor, stopping_criteria,
                streamer, generator, kwargs,
            )  # fmt: skip
        prompt, pad_prefix = _prompt_tokens(input_ids, attention_mask)
        gen_config = self._generation_config(generation_config, kwargs)
        prompt = prompt.to(self._target_runner.device)

        prompt_length = prompt.shape[1]
        max_new_tokens = _max_new_tokens(gen_config, input_ids.shape[1])
        context = self._target_runner.context_length
        if context is not None and prompt_length + max_new_tokens > context:
            raise ValueError(
                f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{prompt_length + max_new_tokens} exceeds the target's context of {context} positions; "
                "shorten the prompt or lower max_new_tokens."
            )
        eos_ids = _as_id_list(gen_config.eos_token_id)
        pipeline = LogitsPipeline(
            gen_config, prompt_length, eos_ids, logits_processor, device=self._target_runner.device
        )
        stop = StoppingCriteriaList(stopping_criteria or [])
        want_scores = bool(gen_config.output_scores)
        want_logits = bool(gen_config.output_logits)

        stats = GenerationStats()
        self.stats = stats
        controller = self._controller(bool(gen_config.do_sample))
        engine = SpeculativeEngine(self._target_runner, self._drafter, controller, pipeline, stats, generator)
        engine.begin()

        start = time.perf_counter()
        if streamer is not None:
            streamer.put(input_ids.cpu())
        sequence = prompt  # [1, N]
        scores: list[torch.Tensor] = []
        raw_logits: list[torch.Tensor] = []
        generated = 0
        try:
            while generated < max_new_tokens:
                result = engine.step(sequence, max_new_tokens - generated)
                tokens, finished = self._cut_at_stop(
                    sequence, result.tokens, result.token_ids, eos_ids, stop, gen_config, start
                )
                sequence = torch.cat([sequence, tokens[None]], dim=1)
                generated += tokens.shape[0]
                if want_scores:
                    scores.extend(result.scores[: tokens.shape[0]].split(1))
                if want_logits:
                    raw_logits.extend(result.logits[: tokens.shape[0]].split(1))
                if streamer is not None:
                    streamer.put(tokens.cpu())
                if finished:
                    break
        finally:
            # Leave no half-used cache behind, whether the loop ended or raised.
            engine.begin()
        if streamer is not None:
            streamer.end()
        stats.new_tokens = generated
        stats.total_time = time.perf_counter() - start

        output = (
            torch.cat([pad_prefix.to(sequence.device), sequence], dim=1) if pad_prefix.numel() else sequence
        )
        output = output.to(input_ids.device)
        if gen_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(
                sequences=output,
                scores=tuple(scores) if want_scores else None,
                logits=tuple(raw_logits) if want_logits else None,
            )
        return output

    def _generate_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        generation_config: GenerationConfig | None,
        logits_processor: LogitsProcessorList | None,
        stopping_criteria: StoppingCriteriaList | None,
        streamer,
        generator: torch.Generator | None,
        kwargs: dict,
    ) -> torch.Tensor | GenerateDecoderOnlyOutput:
        """generate() for input_ids [B, L], B > 1: every row exactly as the target alone would."""
        gen_config = self._generation_config(generation_config, kwargs)
        draft = self._drafter.runner if isinstance(self._drafter, ModelDrafter) else None
        check_batch_options(self.config, gen_config, streamer, self._target_runner, draft)
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty: give at least one prompt token (e.g. the BOS token).")
        prompts = batch_prompts(input_ids, attention_mask)
        max_new_tokens = _max_new_tokens(gen_config, input_ids.shape[1])
        longest = max(p.shape[0] for p in prompts)
        context = self._target_runner.context_length
        if context is not None and longest + max_new_tokens > context:
            raise ValueError(
                f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"target's context of {context} positions; shorten it or lower max_new_tokens."
            )
        eos_ids = _as_id_list(gen_config.eos_token_id)
        pad = pad_id(gen_config, eos_ids)
        if pad is None and stopping_criteria:
            raise ValueError(
                "rows may stop at different lengths: set pad_token_id (or an EOS id) to pad them."
            )
        batch = input_ids.shape[0]
        if batch not in self._batch_profiles:
            self._batch_profiles[batch] = batch_costs(self._target_runner, draft, batch, self.config)
        template, controller = batch_controller(
            self.config, batch, self._batch_profiles[batch], bool(gen_config.do_sample)
        )
        stats = GenerationStats()
        self.stats = stats
        lookup = None
        if self.config.strategy == "prompt-lookup":
            lookup = (self.config.prompt_lookup_max_ngram, self.config.prompt_lookup_min_ngram)
        engine = BatchSpeculativeEngine(
            self._target_runner, draft, template, controller, stats, generator, lookup
        )
        start = time.perf_counter()
        new_tokens = generate_batch(
            engine, prompts, gen_config, max_new_tokens, eos_ids, logits_processor, stopping_criteria
        )
        stats.new_tokens = sum(int(t.shape[0]) for t in new_tokens)
        stats.total_time = time.perf_counter() - start
        output = pad_outputs(input_ids, new_tokens, pad)
        if gen_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=output)
        return output

    def _generation_config(
        self, generation_config: GenerationConfig | None, kwargs: dict
    ) -> GenerationConfig:
        """Merge like transformers: explicit kwargs > generation_config > the target's > defaults."""
        config, model_kwargs = self.target._prepare_generation_config(generation_config, **kwargs)
        model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None and k != "use_cache"}
        if model_kwargs:
            names = ", ".join(sorted(model_kwargs))
            raise ValueError(f"generate() got option(s) it does not support: {names}.")
        for name, harmless in _UNSUPPORTED_OPTIONS.items():
            value = getattr(config, name, None)
            if not harmless(value):
                raise ValueError(
                    f"generate() option {name}={value!r} is not supported by specdec yet; "
                    "remove it or use the target's own generate()."
                )
        if config.max_new_tokens is not None and config.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}.")
        if config.do_sample and config.temperature is not None and config.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {config.temperature}.")
        return config

    def _cut_at_stop(
        self,
        sequence: torch.Tensor,
        tokens: torch.Tensor,
        token_ids: list[int],
        eos_ids: list[int],
        stop: StoppingCriteriaList,
        config: GenerationConfig,
        start: float,
    ) -> tuple[torch.Tensor, bool]:
        """Keep tokens up to and including the first stop (EOS, a stopping criterion, max_time).
        tokens: [m] on the device; token_ids: the same on the host (EOS is found without a sync)."""
        for i, token in enumerate(token_ids):
            if token in eos_ids:
                return tokens[: i + 1], True
            if len(stop):
                ctx = torch.cat([sequence, tokens[None, : i + 1]], dim=1)
                if bool(stop(ctx, None).any()):
                    return tokens[: i + 1], True
        if config.max_time is not None and time.perf_counter() - start > config.max_time:
            return tokens, True
        return tokens, False


def _prompt_tokens(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None):
    """Validate the prompt; return ([1, L'] prompt without left padding, [1, L - L'] the padding)."""
    if input_ids is None:
        raise ValueError("generate() needs input_ids ([batch, length] token ids).")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = getattr(input_ids, "shape", type(input_ids))
        raise ValueError(f"input_ids must be a 2-D tensor [batch, length], got {got}.")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token (e.g. the BOS token).")
    if attention_mask is None:
        return input_ids, input_ids[:, :0]
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
            f"{tuple(input_ids.shape)}."
        )
    mask = attention_mask[0].bool()
    if not mask.any():
        raise ValueError("attention_mask masks every prompt token; nothing to condition on.")
    first = int(mask.nonzero()[0])
    if not mask[first:].all():
        raise ValueError(
            "attention_mask has padding after the first real token (right padding or holes); "
            "use left padding (tokenizer.padding_side = 'left')."
        )
    return input_ids[:, first:], input_ids[:, :first]


def _max_new_tokens(config: GenerationConfig, input_length: int) -> int:
    if config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    remaining = int(config.max_length) - input_length
    if remaining <= 0:
        raise ValueError(
            f"max_length={config.max_length} leaves no room after a prompt of {input_length} tokens; "
            "set max_new_tokens."
        )
    return remaining


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]
