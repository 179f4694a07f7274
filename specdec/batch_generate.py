"""`generate()` for a batch of left-padded prompts (layer L6): rows of different lengths, each exact.

Called by `SpeculativeModel.generate` when input_ids has more than one row. Each row is generated as
if alone (its own prompt without padding, its own logits processors, its own stop), and the output
is padded like transformers': prompt as given (left padding kept), new tokens, then `pad_token_id`
after a row stops.
"""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from specdec.adaptive import DraftLengthController
from specdec.batch import BatchRow, BatchSpeculativeEngine
from specdec.calibration import measure_batch_costs
from specdec.config import SpecConfig
from specdec.costs import CostProfile, planning_costs
from specdec.models.llama_runner import LlamaRunner
from specdec.sampling import LogitsPipeline
from specdec.tree import Tree

#: Strategies that run on batches; the others keep per-row state (n-gram tables, adaptive trees).
BATCH_STRATEGIES = ("chain", "tree", "prompt-lookup", "none")


def batch_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Each row's prompt without its left padding ([L_b] each). Right padding, holes and rows of
    padding only are refused."""
    if attention_mask is None:
        return list(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
            f"{tuple(input_ids.shape)}."
        )
    prompts = []
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
    return prompts


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
    gen_config: GenerationConfig,
    max_new_tokens: int,
    eos_ids: list[int],
    logits_processor: LogitsProcessorList | None,
    stopping_criteria: StoppingCriteriaList | None,
) -> list[torch.Tensor]:
    """New tokens of every row ([m_b] each), each row as the target alone would generate it."""
    device = engine.target.device
    rows = [
        BatchRow(
            prompt.to(device),
            LogitsPipeline(gen_config, prompt.shape[0], eos_ids, logits_processor, device=device),
        )
        for prompt in prompts
    ]
    stop = StoppingCriteriaList(stopping_criteria or [])
    generated: list[list[torch.Tensor]] = [[] for _ in prompts]
    counts = [0] * len(prompts)
    active = list(range(len(prompts)))  # original index of each engine row
    start = time.perf_counter()
    engine.begin(rows)
    try:
        while active:
            budgets = [max_new_tokens - counts[i] for i in active]
            results = engine.step([rows[i] for i in active], budgets)
            keep = []
            for position, (i, tokens) in enumerate(zip(active, results, strict=True)):
                tokens, finished = _cut(rows[i].sequence, tokens[: budgets[position]], eos_ids, stop)
                rows[i].sequence = torch.cat([rows[i].sequence, tokens])
                generated[i].append(tokens)
                counts[i] += tokens.shape[0]
                if not finished and counts[i] < max_new_tokens:
                    keep.append(position)
            if gen_config.max_time is not None and time.perf_counter() - start > gen_config.max_time:
                break
            if len(keep) < len(active):
                active = [active[p] for p in keep]
                if active:
                    engine.keep(keep)
    finally:
        engine.end()
    return [torch.cat(parts) if parts else prompts[0].new_empty(0) for parts in generated]


def _cut(
    sequence: torch.Tensor, tokens: torch.Tensor, eos_ids: list[int], stop: StoppingCriteriaList
) -> tuple[torch.Tensor, bool]:
    """Tokens up to and including the first EOS or stopping criterion; whether the row stopped."""
    for i in range(tokens.shape[0]):
        if int(tokens[i]) in eos_ids:
            return tokens[: i + 1], True
        if len(stop) and bool(stop(torch.cat([sequence, tokens[: i + 1]])[None], None).any()):
            return tokens[: i + 1], True
    return tokens, False


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
