"""A drop-in `generate()` over a target and a drafter (layer L6).

`SpeculativeModel.generate` accepts what transformers' `GenerationMixin.generate` accepts for
decoder-only models and returns what it returns (prompt + new tokens, or a
`GenerateDecoderOnlyOutput`). Options it cannot honour raise ValueError naming the option.
"""

from __future__ import annotations

import dataclasses
import numbers
import threading
import time
import warnings
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from specdec.config import SpecConfig
from specdec.core.engine import Row, SpeculativeEngine
from specdec.core.loop import (
    batch_prompts,
    check_batch_options,
    generate_rows,
    pad_id,
    pad_outputs,
    stop_rules,
)
from specdec.core.sampling import LogitsPipeline
from specdec.core.stats import GenerationStats
from specdec.drafters import Drafter, HybridDrafter, ModelDrafter, NoDrafter, PromptLookupDrafter
from specdec.drafters.model import TreeShape
from specdec.models.loading import find_tokenizer, vocab_info
from specdec.models.vocab import check_vocabularies
from specdec.planning.calibration import measure_costs, warn_slow_half_precision
from specdec.planning.chain import DraftLengthController
from specdec.planning.costs import CostProfile, planning_costs
from specdec.planning.fallback import chains_where_trees_fail
from specdec.planning.trees import AutoShapeController, Planner
from specdec.runtime.distributed import broadcast_from_first, check_tensor_parallel_pair
from specdec.runtime.factory import make_runner, tree_support

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

    Use `specdec.wrap(...)` to build one. `stats` holds the statistics of the calling thread's last
    `generate()` call (of the last call in any thread, for a thread that made none). One object may be
    shared by threads: `generate()` calls are serialized by a lock (one runs at a time).
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
        self._lock = threading.Lock()  # one generate() at a time: the runners' caches are shared state
        self._lock_owner: int | None = None  # the thread inside generate(), to refuse re-entry
        self._last_stats: GenerationStats | None = None
        self._thread_stats = threading.local()
        #: Measured costs per batch size (`cost_profile` is batch size 1's); set one to reuse it.
        self.cost_profiles: dict[int, CostProfile] = {}
        # a tensor-parallel target: every rank must decide alike (costs from rank 0, no own timings)
        self._tensor_parallel = check_tensor_parallel_pair(target, draft)
        self.config = chains_where_trees_fail(config, target, draft, runtime)
        self._target_runner = make_runner(target, runtime, cuda_graphs)
        # bf16 / fp16 on a CPU without hardware matmuls for it: one line, never an error
        warn_slow_half_precision(target.dtype, self._target_runner.device, stacklevel=3)
        self._drafter = self._make_drafter(draft, draft_tokenizer)

    @property
    def cost_profile(self) -> CostProfile | None:
        """Measured draft/verify costs (one row) that adaptive strategies plan with; measured at the
        first generate() that needs it and then kept (set it to reuse a profile across processes)."""
        return self.cost_profiles.get(1)

    @cost_profile.setter
    def cost_profile(self, profile: CostProfile | None) -> None:
        if profile is None:
            self.cost_profiles.pop(1, None)
        else:
            self.cost_profiles[1] = profile

    @property
    def stats(self) -> GenerationStats | None:
        """Statistics of this thread's last generate() call (else of the last call in any thread)."""
        mine = getattr(self._thread_stats, "stats", None)
        return mine if mine is not None else self._last_stats

    @stats.setter
    def stats(self, value: GenerationStats | None) -> None:
        self._thread_stats.stats = value
        self._last_stats = value

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

    def _planner(self, do_sample: bool, batch_size: int) -> Planner:
        """Chains adapt k (unless fixed); trees draft to their own depth (batches: the depth a static
        tree is cut at adapts too); auto plans every step. With more than one row, plain batched
        decoding (k = 0) is a choice as well: verifying k + 1 tokens per row can cost more than the
        accepted tokens save. The measured cost profile is refined or kept as
        `costs.planning_costs` says."""
        config = self.config
        lockstep = self._tensor_parallel
        if config.strategy == "auto":
            costs, refine = planning_costs(self._costs(65, batch_size), do_sample, lockstep)
            return AutoShapeController(
                max_depth=config.max_draft_tokens,
                costs=costs,
                free_depth=config.max_draft_tokens,
                refine_costs=refine,
            )
        if config.strategy == "tree" and batch_size > 1:
            tree = config.static_tree
            costs, refine = planning_costs(self._costs(len(tree) + 1, batch_size), do_sample, lockstep)
            nodes = [sum(d <= k for d in tree.depths) for k in range(tree.depth + 1)]
            return DraftLengthController(tree.depth, costs=costs, min_k=0, refine_costs=refine, nodes=nodes)
        if config.strategy in ("tree", "dynamic-tree", "hybrid"):
            return DraftLengthController(config.max_depth, fixed_k=config.max_depth)
        if config.strategy == "none":
            return DraftLengthController(1, fixed_k=0)
        if config.num_draft_tokens is not None:
            return DraftLengthController(config.max_draft_tokens, config.num_draft_tokens)
        costs, refine = planning_costs(
            self._costs(config.max_draft_tokens + 1, batch_size), do_sample, lockstep
        )
        return DraftLengthController(
            config.max_draft_tokens, costs=costs, refine_costs=refine, min_k=0 if batch_size > 1 else 1
        )

    def _costs(self, max_verify_tokens: int, batch_size: int) -> CostProfile:
        if batch_size not in self.cost_profiles:
            # every rank of a tensor-parallel target measures (the target's passes are collectives)
            # and plans with rank 0's profile
            profile = measure_costs(self._target_runner, self._drafter, max_verify_tokens, batch_size)
            self.cost_profiles[batch_size] = (
                broadcast_from_first(profile) if self._tensor_parallel else profile
            )
        return self.cost_profiles[batch_size]

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

        inputs / input_ids: [B, L] prompt ids of any integer dtype (left padding through attention_mask);
        every strategy runs at any B (see specdec.core.engine). generator: a torch.Generator for the draws
        (specdec extension); default: torch's global RNG. Returns [B, L + new] int64 ids (rows that stop
        early padded with pad_token_id), or a GenerateDecoderOnlyOutput when return_dict_in_generate=True.

        As transformers 5 does: with no max_new_tokens / max_length, up to the generation config's
        max_length (20 by default) NEW tokens (capped at max_position_embeddings); a user logits
        processor or stopping criterion of a type built from the config (e.g.
        RepetitionPenaltyLogitsProcessor with repetition_penalty=, MaxLengthCriteria with
        max_new_tokens=) replaces the built one; processors and criteria see a left-padded row with
        its padding.
        Differences: generation stops with a warning at the target's context length
        (max_position_embeddings), returning what was generated, where transformers would go on past
        it; lengths must be integers (max_new_tokens=2.5 is refused, transformers takes it);
        inputs_embeds and synced_gpus=True are refused.
        Threads: calls on one SpeculativeModel are serialized by a lock; calling generate() from
        inside a call (a streamer, a logits processor) raises RuntimeError.
        """
        if self._lock_owner == threading.get_ident():
            raise RuntimeError(
                "generate() was called from inside a generate() call on the same SpeculativeModel (from "
                "a streamer, logits processor or stopping criterion?); one call must end before the next."
            )
        with self._lock:
            self._lock_owner = threading.get_ident()
            try:
                return self._generate(
                    inputs, generation_config, logits_processor, stopping_criteria, streamer, generator,
                    kwargs,
                )  # fmt: skip
            finally:
                self._lock_owner = None

    def _generate(
        self,
        inputs: torch.Tensor | None,
        generation_config: GenerationConfig | None,
        logits_processor: LogitsProcessorList | None,
        stopping_criteria: StoppingCriteriaList | None,
        streamer,
        generator: torch.Generator | None,
        kwargs: dict,
    ) -> torch.Tensor | GenerateDecoderOnlyOutput:
        """generate() under the lock: inputs checked, then one prompt or a batch."""
        input_ids, attention_mask = _take_inputs(inputs, kwargs)
        _check_id_range(input_ids, self._id_limit())
        input_ids = input_ids.long()  # transformers returns int64 whatever integer dtype came in
        batch, input_length = input_ids.shape
        gen_config, max_length = self._generation_config(generation_config, kwargs, input_length)
        if batch > 1:
            check_batch_options(gen_config, streamer)
            self._check_rows_supported()
        prompts, prefixes = batch_prompts(input_ids, attention_mask)  # [L_b], [P_b] per row
        device = self._target_runner.device
        context = self._target_runner.context_length
        for b, prompt in enumerate(prompts):
            if context is not None and prompt.shape[0] > context:
                which = "the prompt" if batch == 1 else f"the prompt of row {b}"
                raise ValueError(
                    f"{which} ({prompt.shape[0]} tokens, padding left out) is longer than the target's "
                    f"context of {context} positions; shorten it."
                )
        eos_ids = _as_id_list(gen_config.eos_token_id)
        pad = pad_id(gen_config, eos_ids)
        if batch > 1 and pad is None and stopping_criteria:
            raise ValueError(
                "rows may stop at different lengths: set pad_token_id (or an EOS id) to pad them."
            )
        rules = stop_rules(
            gen_config, max_length, input_length, eos_ids, stopping_criteria, self._max_positions(), context
        )
        rules.lockstep = self._tensor_parallel
        rows = [
            Row(
                prompt.to(device)[None],
                LogitsPipeline(
                    gen_config, input_length, eos_ids, logits_processor, device=device, prefix=prefix
                ),
            )
            for prompt, prefix in zip(prompts, prefixes, strict=True)
        ]
        want_scores, want_logits = bool(gen_config.output_scores), bool(gen_config.output_logits)

        stats = GenerationStats()
        self.stats = stats
        planner = self._planner(bool(gen_config.do_sample), batch)
        engine = SpeculativeEngine(
            self._target_runner, self._drafter, planner, stats, generator, timed=not self._tensor_parallel
        )
        start = time.perf_counter()
        if streamer is not None:
            streamer.put(input_ids.cpu())
        made = generate_rows(engine, rows, prefixes, rules, streamer, want_scores, want_logits)
        if streamer is not None:
            streamer.end()
        if made.at_context:  # the user's frame: _generate < generate < inference_mode
            generated = [int(made.tokens[i].shape[0]) for i in made.at_context]
            rules.warn_context(generated, made.at_context if batch > 1 else None, stacklevel=4)
        stats.new_tokens = sum(int(t.shape[0]) for t in made.tokens)
        stats.total_time = time.perf_counter() - start
        output = pad_outputs(input_ids, made.tokens, pad)
        if gen_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(
                sequences=output,
                scores=tuple(made.scores[0]) if want_scores else None,
                logits=tuple(made.logits[0]) if want_logits else None,
            )
        return output

    def _generation_config(
        self, generation_config: GenerationConfig | None, kwargs: dict, input_length: int
    ) -> tuple[GenerationConfig, int]:
        """Merge like transformers (explicit kwargs > generation_config > the target's > defaults) and
        settle the lengths as its `_prepare_generated_length` does; return the config and max_length,
        the absolute length limit (input_length: the prompt as given, padding included)."""
        synced_gpus = kwargs.pop("synced_gpus", None)
        if synced_gpus:
            raise ValueError(
                f"synced_gpus={synced_gpus!r} is not supported by specdec (it runs one process's models; "
                "DeepSpeed ZeRO-3 / FSDP lockstep generation is not implemented); leave it False."
            )
        has_default_max_length = (
            kwargs.get("max_length") is None
            and (generation_config is None or generation_config.max_length is None)
            and self.target.generation_config.max_length is None
        )
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
        for name in ("max_new_tokens", "max_length", "min_new_tokens", "min_length"):
            value = getattr(config, name, None)
            if value is not None and not _is_integer(value):
                raise ValueError(
                    f"{name} must be an integer, got {value!r} ({type(value).__name__}); pass a whole "
                    "number of tokens (specdec refuses what transformers would silently round)."
                )
        if config.max_new_tokens is not None and config.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}.")
        if config.do_sample and config.temperature is not None and config.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {config.temperature}.")
        # lengths, as transformers' _prepare_generated_length settles them
        if config.max_new_tokens is not None:
            max_length = int(config.max_new_tokens) + input_length
        elif has_default_max_length:  # the config's max_length counts NEW tokens
            max_length = int(config.max_length) + input_length
            positions = self._max_positions()
            if positions is not None:
                max_length = min(max_length, positions)
        else:
            max_length = int(config.max_length)
        if config.min_new_tokens is not None:
            config.min_length = int(config.min_new_tokens) + input_length
        if input_length >= max_length:
            raise ValueError(
                f"max_length={max_length} leaves no room after a prompt of {input_length} tokens (padding "
                "included); set max_new_tokens."
            )
        if has_default_max_length and config.max_new_tokens is None:
            warnings.warn(
                f"no max_new_tokens or max_length given: generating up to {max_length - input_length} new "
                f"tokens (the generation config's default max_length of {config.max_length} new tokens, "
                "as transformers does); set max_new_tokens to choose.",
                UserWarning,
                stacklevel=5,  # the user's frame (called by _generate < generate < inference_mode)
            )
        return config, max_length

    def _check_rows_supported(self) -> None:
        """Refuse a batch before any pass where a model cannot take per-row masks (rows of different
        lengths need them), naming the model and the reason."""
        for role, model in (("target", self.target), ("draft", self.draft)):
            reason = None if model is None else tree_support(model, self.runtime)
            if reason is not None:
                raise ValueError(
                    f"batch size > 1 needs per-row attention masks, which the {role} cannot take: {reason}. "
                    "Call generate() once per prompt."
                )

    def _max_positions(self) -> int | None:
        """The target config's max_position_embeddings, as transformers reads it (None: not set)."""
        value = getattr(self.target.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def _id_limit(self) -> int:
        """Token ids must be below this: the target's input embedding rows (else its logits' width)."""
        embeddings = self.target.get_input_embeddings()
        rows = getattr(embeddings, "num_embeddings", None)
        return int(rows) if isinstance(rows, int) else self._target_runner.vocab_size


def _is_integer(value: object) -> bool:
    """An integer that is not a bool (Python, NumPy or 0-d torch integers)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _take_inputs(inputs: torch.Tensor | None, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Take the prompt and its attention mask out of generate()'s arguments and check their types;
    return (input_ids [B, L], attention_mask [B, L] or None)."""
    input_ids = kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise ValueError("the prompt was given twice (inputs and input_ids=); pass it once.")
    input_ids = inputs if inputs is not None else input_ids
    attention_mask = kwargs.pop("attention_mask", None)
    if kwargs.pop("inputs_embeds", None) is not None:
        raise ValueError(
            "inputs_embeds is not supported: specdec drafts and verifies token ids, so it needs the "
            "prompt as input_ids ([batch, length] token ids); pass input_ids instead."
        )
    if input_ids is None:
        raise ValueError("generate() needs input_ids ([batch, length] token ids).")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-D tensor [batch, length], got {got}.")
    dtype = input_ids.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(
            f"input_ids must hold integer token ids, got dtype {dtype}; pass the tokenizer's ids "
            "(e.g. input_ids.long())."
        )
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids has no rows: give at least one prompt ([batch >= 1, length]).")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token (e.g. the BOS token).")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(
                f"attention_mask must be a torch.Tensor [batch, length] (1: token, 0: padding), got "
                f"{type(attention_mask).__name__}; pass torch.tensor(attention_mask)."
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                f"{tuple(input_ids.shape)}."
            )
        odd = (attention_mask != 0) & (attention_mask != 1)
        if bool(odd.any()):
            b, i = (int(x) for x in odd.nonzero()[0])
            raise ValueError(
                f"attention_mask must hold 1 (token) and 0 (padding), got {attention_mask[b, i].item()!r} "
                f"at [{b}, {i}]."
            )
    return input_ids, attention_mask


def _check_id_range(input_ids: torch.Tensor, limit: int) -> None:
    """Refuse ids outside [0, limit) before any forward pass, naming the first one."""
    bad = (input_ids < 0) | (input_ids >= limit)  # [B, L]
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"input_ids holds token id {int(input_ids[b, i])} at [{b}, {i}], outside the target's "
            f"vocabulary of {limit} ids (0..{limit - 1}); check that the tokenizer belongs to the model."
        )


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]
