"""CausalRunner's rows interface (B ragged rows over one DynamicCache): every row gets the logits a
one-row runner gives it alone, on families with and without windows, eager (additive masks, Gemma-2's
per-layer-type dict) and SDPA, and the same logits as specdec's LlamaRunner on a Llama."""

from __future__ import annotations

import pytest
import torch

from specdec.core.tree import Tree
from specdec.runtime.llama_runner import LlamaRunner
from specdec.runtime.runner import CausalRunner
from tests.families import WINDOW, build

ATOL = 1e-4
LENGTHS = [7, 3, 11]  # ragged prompts; the longest is past the window of 6
TREE = Tree.from_branching([2, 2])  # nodes 0, 1 at depth 1; 2, 3 under 0; 4, 5 under 1
PATHS = [[1, 4], [], [0, 3]]  # accepted path per row (node indices)
CASES = [
    ("llama-variants", "sdpa"),
    ("llama-variants", "eager"),
    ("gpt2", "eager"),
    ("opt", "sdpa"),
    ("qwen2", "sdpa"),  # one windowed layer, one full
    ("mistral", "eager"),  # every layer windowed, one additive mask
    ("gemma2", "eager"),  # windowed and full layers, a dict of additive masks
]


def ids(n: int, seed: int) -> torch.Tensor:
    """[n] random token ids (3..95)."""
    return torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    error = (a - b).abs().max().item()
    assert torch.allclose(a, b, atol=ATOL), f"{what}: max error {error:.2e}"


class Script:
    """The same operations on one batched runner and on one one-row runner per row; every step
    compares each row's logits, and `history` keeps each row's committed tokens."""

    def __init__(self, batch, singles: list) -> None:
        self.batch, self.singles = batch, singles
        self.rows = list(range(len(singles)))  # batch row -> single index
        self.history: list[list[int]] = [[] for _ in singles]

    def check_lengths(self) -> None:
        assert self.batch.lengths == [self.singles[i].length for i in self.rows]

    def prefill(self, prompts: list[torch.Tensor]) -> None:
        width = max(p.shape[0] for p in prompts)
        block = torch.zeros(len(prompts), width, dtype=torch.long)
        for b, p in enumerate(prompts):
            block[b, : p.shape[0]] = p
        counts = [p.shape[0] for p in prompts]
        last = torch.tensor(counts)[:, None] - 1  # [B, 1]
        got = self.batch.extend_rows(block, counts, None, None, last)[:, 0]  # [B, V]
        for b, i in enumerate(self.rows):
            close(got[b], self.singles[i].extend(prompts[b], 1)[0], f"prefill row {b}")
            self.history[i] += prompts[b].tolist()
        self.check_lengths()

    def tree_pass(self, seed: int, absolute: bool = False) -> list[torch.Tensor]:
        """One pending token + TREE per row at the row's own offset; returns the block tokens."""
        n = len(TREE) + 1
        blocks = [ids(n, seed + b) for b in range(len(self.rows))]
        depths = torch.cat([torch.zeros(1, dtype=torch.long), TREE.depth_tensor()])  # [n]
        starts = self.batch.lengths
        positions = torch.tensor(starts)[:, None] + depths[None]  # [B, n]: committed - 1 + [0, depths]
        among = TREE.block_attention(1)  # [n, n]
        if absolute:  # [B, n, W] over each row's columns; the last query also hides cached column 1
            width = max(starts) + n
            attention = torch.zeros(len(starts), n, width, dtype=torch.bool)
            for b, start in enumerate(starts):
                attention[b, :, :start] = True
                attention[b, -1, 1] = False
                attention[b, :, start : start + n] = among
        else:
            attention = among[None].expand(len(starts), n, n)
        rows = torch.arange(n)[None].expand(len(starts), n)
        got = self.batch.extend_rows(torch.stack(blocks), [n] * len(starts), positions, attention, rows)
        for b, i in enumerate(self.rows):
            single = attention[b, :, : starts[b] + n] if absolute else among
            want = self.singles[i].extend(blocks[b], n, positions[b], single)
            close(got[b], want, f"tree row {b}")
        self.check_lengths()
        return blocks

    def accept(self, blocks: list[torch.Tensor], paths: list[list[int]]) -> None:
        """Keep the pending token and one path per row."""
        starts = [length - len(TREE) for length in self.batch.lengths]  # just after the pending token
        kept = [[s + node for node in path] for s, path in zip(starts, paths, strict=True)]
        self.batch.compact_rows(starts, kept)
        for b, i in enumerate(self.rows):
            self.singles[i].compact(starts[b], kept[b])
            self.history[i] += [int(blocks[b][0])] + [int(blocks[b][1 + node]) for node in paths[b]]
        self.check_lengths()

    def step(self, tokens: list[list[int]]) -> None:
        """One pass of up to n tokens per row (fewer: padding; none: a row that sits the pass out)."""
        n = max(len(t) for t in tokens)
        block = torch.zeros(len(tokens), n, dtype=torch.long)
        for b, t in enumerate(tokens):
            block[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        counts = [len(t) for t in tokens]
        last = torch.tensor([max(c - 1, 0) for c in counts])[:, None]  # [B, 1]
        got = self.batch.extend_rows(block, counts, None, None, last)[:, 0]
        for b, i in enumerate(self.rows):
            if counts[b]:
                close(got[b], self.singles[i].extend(torch.tensor(tokens[b]), 1)[0], f"step row {b}")
                self.history[i] += tokens[b]
        self.check_lengths()

    def keep(self, indices: list[int]) -> None:
        self.batch.keep_rows(indices)
        self.rows = [self.rows[b] for b in indices]
        self.check_lengths()


def run_script(model, batch, seed: int = 0) -> Script:
    """Ragged prefill, a tree pass, different accepted paths, decode steps, a row sitting a pass
    out, padding, an absolute-column tree pass, a middle row dropped, decode again."""
    batch.reset(len(LENGTHS))
    script = Script(batch, [CausalRunner(model) for _ in LENGTHS])
    script.prefill([ids(n, seed + 10 + b) for b, n in enumerate(LENGTHS)])
    script.accept(script.tree_pass(seed + 20), PATHS)
    for k in range(3):
        script.step([[5 + k], [6 + k], [7 + k]])
    script.step([[11, 12], [], [13]])  # counts 2, 0, 1
    script.accept(script.tree_pass(seed + 30, absolute=True), [[0], [1, 5], []])
    script.keep([0, 2])
    for k in range(2):
        script.step([[20 + k], [30 + k]])
    return script


@pytest.mark.parametrize("family, attention", CASES, ids=["-".join(c) for c in CASES])
def test_ragged_rows_match_one_row_runners(family, attention):
    """Three rows of different lengths through `run_script`: each step's logits equal one-row runners'
    for every row, and the rows' caches end exact against a plain forward over each row's tokens."""
    model = build(family, attention)
    script = run_script(model, CausalRunner(model))
    # and every row is exact: one more token per row equals a plain forward over the row's history
    last = torch.tensor([[60], [61]])
    got = script.batch.extend_rows(last, [1, 1], None, None, 1)[:, 0]  # [B, V]
    for b, i in enumerate(script.rows):
        with torch.no_grad():
            full = model(torch.tensor(script.history[i] + [60 + b])[None]).logits[0, -1]
        close(got[b], full, f"row {b} against a plain forward")
    assert max(len(h) for h in script.history) > WINDOW + 8  # windows bind


def test_llama_runner_and_causal_runner_agree_on_ragged_rows():
    model = build("llama-variants", "sdpa")
    lean, generic = LlamaRunner(model), CausalRunner(model)
    outputs = []
    for runner in (lean, generic):
        runner.reset(3)
        prompts = [ids(n, 100 + b) for b, n in enumerate(LENGTHS)]
        block = torch.zeros(3, max(LENGTHS), dtype=torch.long)
        for b, p in enumerate(prompts):
            block[b, : p.shape[0]] = p
        got = [runner.extend_rows(block, LENGTHS, None, None, torch.tensor(LENGTHS)[:, None] - 1)]
        n = len(TREE) + 1
        depths = torch.cat([torch.zeros(1, dtype=torch.long), TREE.depth_tensor()])
        positions = torch.tensor(LENGTHS)[:, None] + depths[None]
        tokens = torch.stack([ids(n, 200 + b) for b in range(3)])
        rows = torch.arange(n)[None].expand(3, n)
        got.append(runner.extend_rows(tokens, [n] * 3, positions, TREE.block_attention(1)[None], rows))
        starts = [s + 1 for s in LENGTHS]
        runner.compact_rows(starts, [[s + node for node in p] for s, p in zip(starts, PATHS, strict=True)])
        got.append(runner.extend_rows(torch.tensor([[4, 5], [6, 0], [0, 0]]), [2, 1, 0], None, None, 2))
        runner.keep_rows([0, 2])
        got.append(runner.extend_rows(torch.tensor([[7], [8]]), [1, 1], None, None, 1))
        outputs.append((got, list(runner.lengths)))
    (a, lengths_a), (b, lengths_b) = outputs
    assert lengths_a == lengths_b == [LENGTHS[0] + 1 + 2 + 2 + 1, LENGTHS[2] + 1 + 2 + 1]
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.shape == y.shape
        if k != 2:
            close(x, y, f"pass {k}")
    # the padded pass: padding rows' logits are garbage in both runners; compare the real ones
    close(a[2][0], b[2][0], "padded pass, row 0")
    close(a[2][1, 0], b[2][1, 0], "padded pass, row 1")


@pytest.mark.parametrize("family", ["llama-variants", "qwen2"])
def test_padding_is_never_attended(family):
    """A row with fewer real tokens than the block: its padding changes no real logit and leaves
    nothing behind in the row."""
    model = build(family, "sdpa")
    runner = CausalRunner(model)
    rows = torch.tensor([[2], [0]])
    runner.reset(2)
    a = runner.extend_rows(torch.tensor([[5, 6, 7], [8, 0, 0]]), [3, 1], None, None, rows)
    runner.reset(2)
    b = runner.extend_rows(torch.tensor([[5, 6, 7], [8, 90, 91]]), [3, 1], None, None, rows)
    close(a, b, "padding tokens")
    assert runner.lengths == [3, 1]
    following = runner.extend_rows(torch.tensor([[9], [9]]), [1, 1], None, None, 1)
    single = CausalRunner(model)
    single.extend(torch.tensor([8]))
    close(following[1, 0], single.extend(torch.tensor([9]))[0], "after padding")
    # an attention that lets every token see the whole block still hides the padding
    everything = torch.ones(1, 3, 3, dtype=torch.bool)
    got = runner.extend_rows(torch.tensor([[4, 5, 6], [7, 8, 0]]), [3, 2], None, everything, 3)
    close(got[1, :2], single.extend(torch.tensor([7, 8]), 2, None, everything[0, :2, :2]), "block mask")


def test_one_row_through_rows_equals_extend():
    """B = 1: extend_rows / compact_rows are extend / compact (windowed model, tree, compaction)."""
    model = build("mistral", "sdpa")
    rows_runner, one = CausalRunner(model), CausalRunner(model)
    prompt = ids(9, 1)
    close(rows_runner.extend_rows(prompt[None], [9], None, None, 2)[0], one.extend(prompt, 2), "prefill")
    n = len(TREE) + 1
    positions = 9 + torch.cat([torch.zeros(1, dtype=torch.long), TREE.depth_tensor()])
    tokens = ids(n, 2)
    attention = TREE.block_attention(1)
    got = rows_runner.extend_rows(tokens[None], [n], positions[None], attention[None], torch.arange(n)[None])
    close(got[0], one.extend(tokens, n, positions, attention), "tree")
    rows_runner.compact_rows([10], [[10 + 1, 10 + 4]])
    one.compact(10, [10 + 1, 10 + 4])
    assert rows_runner.lengths == [one.length] == [12]
    assert rows_runner._in_place == [12]  # the kept path holds its own positions: no mask needed
    for k in range(WINDOW + 2):
        step = torch.tensor([20 + k])
        close(rows_runner.extend_rows(step[None], [1], None, None, 1)[0], one.extend(step), f"step {k}")
    one.truncate(13)
    rows_runner.truncate(13)
    step = torch.tensor([3])
    close(rows_runner.extend(step), one.extend(step), "after truncate")


def test_bad_rows_input_raises():
    model = build("gpt2", "eager")
    runner = CausalRunner(model)
    runner.reset(3)
    block = torch.zeros(3, 4, dtype=torch.long)
    runner.extend_rows(block, [4, 2, 3], None, None, 1)
    with pytest.raises(ValueError, match="row 1"):
        runner.compact_rows([1, 0, 1], [[2], [1, 0], [2]])  # not ascending
    with pytest.raises(ValueError, match="row 2"):
        runner.compact_rows([1, 0, 1], [[2], [1], [3]])  # row 2 holds 3 positions
    with pytest.raises(ValueError, match="row 0"):
        runner.compact_rows([5, 0, 0], [[], [], []])  # a start past the row's length
    with pytest.raises(ValueError, match="holds 3 rows"):
        runner.extend_rows(torch.zeros(2, 1, dtype=torch.long), [1, 1], None, None, 1)
    with pytest.raises(ValueError, match="counts"):
        runner.extend_rows(torch.zeros(3, 1, dtype=torch.long), [1, 2, 1], None, None, 1)
    with pytest.raises(ValueError, match="one row"):
        runner.extend(torch.tensor([1]))
    with pytest.raises(ValueError, match="one row"):
        runner.truncate(1)
    with pytest.raises(ValueError, match="indices"):
        runner.keep_rows([2, 0])
    assert runner.lengths == [4, 2, 3]  # nothing changed by the refused calls
    runner.keep_rows([1])
    assert runner.length == 2


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_windows_follow_position_ids_after_out_of_place_slots(family):
    """Two siblings kept side by side (slots 9, 10 both at position 9): later plain decode steps must
    still judge every window on position ids. A runner given no attention (it decides on the host
    whether transformers' own slot-based mask is right) equals one forced to build every mask."""
    model = build(family, "eager")
    plain, forced = CausalRunner(model), CausalRunner(model)
    for runner in (plain, forced):
        runner.extend(ids(9, 3))
        runner.extend(torch.tensor([40, 41]), 2, torch.tensor([9, 9]), torch.eye(2, dtype=torch.bool))
    assert plain._in_place == [10]  # slot 9 holds position 9, slot 10 does not
    for k in range(WINDOW + 3):
        step = torch.tensor([50 + k])
        a = plain.extend(step)
        b = forced.extend(step, 1, None, torch.ones(1, 1, dtype=torch.bool))
        close(a, b, f"step {k}")
