"""`generate()`'s loop parts (layer L6): where a row stops, and batches of left-padded prompts.

`StopRules` is how both loops (one prompt in `generate.py`, B prompts here) decide where a row stops:
transformers' stopping criteria, built from the generation config and merged with the user's as
transformers merges them, plus the target's context length.

Called by `SpeculativeModel.generate` when input_ids has more than one row, `generate_batch` generates
each row as if alone (its own prompt without padding in the caches, its own logits processors, which
see the row with its padding as transformers' do, its own stop), and the output is padded like
transformers': prompt as given (left padding kept), new tokens, then `pad_token_id` after a row stops.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria

from specdec.adaptive import DraftLengthController
from specdec.batch import BatchRow, BatchSpeculativeEngine
from specdec.calibration import measure_batch_costs
from specdec.config import SpecConfig
from specdec.costs import CostProfile, planning_costs
from specdec.models.llama_runner import LlamaRunner
from specdec.sampling import LogitsPipeline, merge_like_transformers
from specdec.tree import Tree

#: Strategies that run on batches; the others keep per-row state (n-gram tables, adaptive trees).
BATCH_STRATEGIES = ("chain", "tree", "prompt-lookup", "none")


@dataclass
class StopRules:
    """Where a row stops: transformers' stopping criteria, read where they can be read on the host.

    max_new_tokens: tokens a row may add (the merged `MaxLengthCriteria`, at least 1: transformers
    always generates one token); eos_ids: the merged `EosTokenCriteria` ids; timers: the merged
    `MaxTimeCriteria` (checked once per step); others: every other criterion, called on the padded
    row after each token; context: the target's context length (None: unknown), where a row stops with
    a warning (specdec's caches end there; transformers would go on).
    """

    max_new_tokens: int
    eos_ids: list[int]
    timers: list[MaxTimeCriteria] = field(default_factory=list)
    others: StoppingCriteriaList = field(default_factory=StoppingCriteriaList)
    context: int | None = None

    def budget(self, length: int, generated: int) -> int:
        """Tokens a row of `length` committed tokens (no padding) that has `generated` new ones may
        still add; 0 when it stands at the context's end."""
        budget = self.max_new_tokens - generated
        if self.context is not None:
            budget = min(budget, self.context - length)
        return max(budget, 0)

    def cut(
        self, prefix: torch.Tensor, sequence: torch.Tensor, tokens: torch.Tensor, token_ids: list[int]
    ) -> tuple[torch.Tensor, bool]:
        """Tokens up to and including the first that stops the row (EOS, another criterion); whether
        it stopped. prefix: [P] the row's padding; sequence: [N] committed tokens; tokens: [m] new
        ones (token_ids: the same on the host)."""
        for i, token in enumerate(token_ids):
            if token in self.eos_ids:
                return tokens[: i + 1], True
            if len(self.others):
                row = torch.cat([prefix.to(sequence.device), sequence, tokens[: i + 1]])[None]  # [1, n]
                if bool(self.others(row, None).any()):
                    return tokens[: i + 1], True
        return tokens, False

    def timed_out(self) -> bool:
        """Whether a `MaxTimeCriteria` (max_time=) has run out (read as its __call__ reads it)."""
        return any(time.time() - timer.initial_timestamp > timer.max_time for timer in self.timers)

    def warn_context(self, generated: list[int], rows: list[int] | None = None, stacklevel: int = 2) -> None:
        """The one warning of a generation in which rows stopped at the target's context.

        generated: new tokens of each such row; rows: their indices in the batch (None: one prompt);
        stacklevel: as warnings.warn's, counted from the caller of this method."""
        which = "" if rows is None else f" (row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))})"
        counts = ", ".join(map(str, generated))
        warnings.warn(
            f"generation{which} stopped at the target's context length ({self.context} positions) after "
            f"{counts} new tokens, short of the {self.max_new_tokens} allowed: specdec's caches end "
            "there (transformers' own generate() would go on past the model's max_position_embeddings). "
            "Shorten the prompt or lower max_new_tokens to stay inside the context.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def stop_rules(
    gen_config: GenerationConfig,
    max_length: int,
    input_length: int,
    eos_ids: list[int],
    user: StoppingCriteriaList | None,
    max_position_embeddings: int | None,
    context: int | None,
) -> StopRules:
    """The criteria transformers' generate() would stop with, merged with the user's the same way
    (a user `MaxLengthCriteria` / `EosTokenCriteria` / `MaxTimeCriteria` replaces the built one).

    max_length: the absolute length limit (prompt as given, padding included, + new tokens);
    input_length: the prompt's length as given."""
    defaults = StoppingCriteriaList([MaxLengthCriteria(max_length, max_position_embeddings)])
    if gen_config.max_time is not None:
        defaults.append(MaxTimeCriteria(gen_config.max_time))
    if eos_ids:
        defaults.append(EosTokenCriteria(eos_ids))
    merged = merge_like_transformers(defaults, user)
    lengths = [c.max_length for c in merged if type(c) is MaxLengthCriteria]
    eos: list[int] = []
    for criterion in merged:
        if type(criterion) is EosTokenCriteria:
            eos += [int(t) for t in torch.as_tensor(criterion.eos_token_id).flatten().tolist()]
    others = StoppingCriteriaList(
        c for c in merged if type(c) not in (MaxLengthCriteria, EosTokenCriteria, MaxTimeCriteria)
    )
    return StopRules(
        max_new_tokens=max(1, min(lengths) - input_length),
        eos_ids=eos,
        timers=[c for c in merged if type(c) is MaxTimeCriteria],
        others=others,
        context=context,
    )


def batch_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's prompt without its left padding ([L_b] each) and that padding ([P_b] each). Right
    padding, holes and rows of padding only are refused."""
    if attention_mask is None:
        return list(input_ids), [row[:0] for row in input_ids]
    prompts, prefixes = [], []
    for b, (ids, mask) in enumerate(zip(input_ids, attention_mask.bool(), strict=True)):
        if not mask.any():
            raise ValueError(f"attention_mask row {b} masks every token; give each row at least one token.")
        first = int(mask.nonzero()[0])
        if not mask[first:].all():
            raise ValueError(
                f"attention_mask row {b} has padding after its first real token (right padding or "
                "holes); use left padding (tokenizer.padding_side = 'left')."
            )
        prompts.append(ids[first:])
        prefixes.append(ids[:first])
    return prompts, prefixes


def check_batch_options(config: SpecConfig, gen_config: GenerationConfig, streamer, target, draft) -> None:
    """Refuse what batched generation cannot do yet, naming the option."""
    if config.strategy not in BATCH_STRATEGIES:
        raise ValueError(
            f'strategy="{config.strategy}" runs one prompt at a time; for batches use one of '
            f"{', '.join(BATCH_STRATEGIES)}, or call generate() once per prompt."
        )
    if streamer is not None:
        raise ValueError("a streamer needs batch size 1; call generate() once per prompt to stream.")
    if gen_config.output_scores or gen_config.output_logits:
        raise ValueError("output_scores / output_logits are supported for batch size 1 only.")
    for name, runner in (("target", target), ("draft", draft)):
        if runner is not None and not isinstance(runner, LlamaRunner):
            raise ValueError(
                f"batch size > 1 needs specdec's runtime for the {name} (a Llama-layout model with "
                'runtime="auto" or "specdec"); call generate() once per prompt for other models.'
            )


def pad_id(gen_config: GenerationConfig, eos_ids: list[int]) -> int | None:
    """The id after a finished row: pad_token_id, else the first EOS id (as transformers does)."""
    if gen_config.pad_token_id is not None:
        return int(gen_config.pad_token_id)
    return eos_ids[0] if eos_ids else None


def generate_batch(
    engine: BatchSpeculativeEngine,
    prompts: list[torch.Tensor],
    prefixes: list[torch.Tensor],
    gen_config: GenerationConfig,
    input_length: int,
    eos_ids: list[int],
    logits_processor: LogitsProcessorList | None,
    rules: StopRules,
) -> list[torch.Tensor]:
    """New tokens of every row ([m_b] each), each row as the target alone would generate it.

    prompts / prefixes: each row's prompt without its padding, and that padding; input_length: the
    padded prompts' length; eos_ids: the generation config's (for its processors)."""
    device = engine.target.device
    rows = [
        BatchRow(
            prompt.to(device),
            LogitsPipeline(gen_config, input_length, eos_ids, logits_processor, device=device, prefix=prefix),
        )
        for prompt, prefix in zip(prompts, prefixes, strict=True)
    ]
    generated: list[list[torch.Tensor]] = [[] for _ in prompts]
    counts = [0] * len(prompts)
    at_context: list[int] = []  # rows that stopped at the target's context
    engine.begin(rows)
    try:
        active = list(range(len(prompts)))  # original index of each engine row
        room = [p for p, i in enumerate(active) if rules.budget(rows[i].sequence.shape[0], 0) > 0]
        at_context += [i for i in active if rules.budget(rows[i].sequence.shape[0], 0) == 0]
        if len(room) < len(active):
            active = [active[p] for p in room]
            if active:
                engine.keep(room)
        while active:
            budgets = [rules.budget(rows[i].sequence.shape[0], counts[i]) for i in active]
            results = engine.step([rows[i] for i in active], budgets)
            keep = []
            for position, (i, tokens) in enumerate(zip(active, results, strict=True)):
                tokens = tokens[: budgets[position]]
                tokens, finished = rules.cut(prefixes[i], rows[i].sequence, tokens, tokens.tolist())
                rows[i].sequence = torch.cat([rows[i].sequence, tokens])
                generated[i].append(tokens)
                counts[i] += tokens.shape[0]
                if finished or counts[i] >= rules.max_new_tokens:
                    continue
                if rules.budget(rows[i].sequence.shape[0], counts[i]) == 0:
                    at_context.append(i)
                    continue
                keep.append(position)
            if rules.timed_out():
                break
            if len(keep) < len(active):
                active = [active[p] for p in keep]
                if active:
                    engine.keep(keep)
    finally:
        engine.end()
    if at_context:
        rows_at_context = sorted(at_context)
        # the user's frame: generate_batch < _generate_batch < _generate < generate < inference_mode
        rules.warn_context([counts[i] for i in rows_at_context], rows_at_context, stacklevel=6)
    return [torch.cat(parts) if parts else prompts[i].new_empty(0) for i, parts in enumerate(generated)]


def pad_outputs(input_ids: torch.Tensor, new_tokens: list[torch.Tensor], pad: int | None) -> torch.Tensor:
    """[B, L + max new] ids: each row's input as given, its new tokens, then `pad`."""
    longest = max(t.shape[0] for t in new_tokens)
    if pad is None and any(t.shape[0] != longest for t in new_tokens):
        raise ValueError("rows stopped at different lengths and there is no pad_token_id or EOS to pad with.")
    out = input_ids.new_full((input_ids.shape[0], longest), 0 if pad is None else pad)
    for b, tokens in enumerate(new_tokens):
        out[b, : tokens.shape[0]] = tokens.to(out.device)
    return torch.cat([input_ids, out], dim=1)


def batch_controller(
    config: SpecConfig, batch_size: int, profile: CostProfile | None, do_sample: bool = False
) -> tuple[Tree, DraftLengthController]:
    """The shared tree shape and the depth controller of a batched generation.

    Chains with num_draft_tokens=None choose k in 0..max_draft_tokens every step (Leviathan et al.'s
    expected tokens per second) from the acceptance measured across rows and the costs of this batch
    size: `profile` is measured once per batch size with dummy passes and, when greedy, refined with
    the real steps' times (draft passes; verification plus acceptance), which every 16 steps include one step
    of the arm not chosen (k = 0 while drafting, k = 1 while not). k = 0, plain batched decoding, wins
    when verifying k + 1 tokens per row costs more than the accepted tokens save. Static trees choose
    the depth they are cut at the same way (0 .. their depth; verifying the nodes up to that depth).
    Greedy generations refine a copy of the profile; sampling plans with it as measured
    (`costs.planning_costs`), so a seeded batched run repeats exactly on the same SpeculativeModel.
    """
    profile, refine = planning_costs(profile, do_sample)
    if config.strategy == "none":
        return Tree.chain(0), DraftLengthController(1, fixed_k=0)
    if config.strategy == "prompt-lookup" and config.num_draft_tokens is not None:
        template = Tree.chain(config.num_draft_tokens)
        return template, DraftLengthController(template.depth, fixed_k=template.depth)
    if config.strategy == "tree":
        tree = config.static_tree
        nodes = [sum(d <= k for d in tree.depths) for k in range(tree.depth + 1)]
        controller = DraftLengthController(
            tree.depth, costs=profile, min_k=0, refine_costs=refine, nodes=nodes
        )
        return tree, controller
    template = Tree.chain(config.max_draft_tokens)
    if config.num_draft_tokens is not None:
        return template, DraftLengthController(config.max_draft_tokens, fixed_k=config.num_draft_tokens)
    return template, DraftLengthController(
        config.max_draft_tokens, costs=profile, min_k=0, refine_costs=refine
    )


def batch_costs(target: LlamaRunner, draft: LlamaRunner | None, batch_size: int, config: SpecConfig):
    """Costs at this batch size for an adaptive chain, prompt lookup or a static tree, else None."""
    if config.strategy not in ("chain", "tree", "prompt-lookup"):
        return None
    if config.strategy != "tree" and config.num_draft_tokens is not None:
        return None
    largest = len(config.static_tree) if config.strategy == "tree" else config.max_draft_tokens
    return measure_batch_costs(target, draft, batch_size, largest + 1)
