"""A lean incremental forward for Llama-layout models over their own modules (layer L3).

Same contract as `CausalRunner` (extend / truncate / compact / reset), but the attention and the KV
cache are specdec's own: one preallocated cache per model indexed by position (rollback moves a length,
committing a tree path copies rows), no mask-building utilities, no cache objects. Norms, projections,
MLPs and rotary embeddings are the model's own modules, called in place (no weight copies; accelerate
hooks and device maps keep working).
"""

from __future__ import annotations

import shutil
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from specdec.core.tree import MAX_TREE_NODES
from specdec.kernels import dense_tree_mask, resolve_backend, tree_attention
from specdec.runtime.distributed import is_tensor_parallel, local_rows, shard_count
from specdec.runtime.module_calls import ModuleCalls
from specdec.runtime.runner import (
    OneRowMethods,
    check_block,
    context_length,
    model_device,
    vocab_size,
)
from specdec.runtime.static_pass import StaticPass, bucket

#: Llama-layout families: pre-norm decoder, rotary, gated MLP; Qwen2 adds q/k/v biases (F.linear takes
#: them), Qwen3 an RMSNorm over each head's q and k before the rotary embedding.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def graphs_possible(model: PreTrainedModel, calls: ModuleCalls) -> bool:
    """CUDA graphs need CUDA, every weight on one device and no hooks that could move weights."""
    devices = {p.device for p in model.parameters()}
    return (
        torch.cuda.is_available()
        and calls.direct
        and len(devices) == 1
        and next(iter(devices)).type == "cuda"
    )


def supports_llama_runner(model: PreTrainedModel) -> bool:
    """True for Llama-layout decoders this runner reproduces exactly: every layer full attention (a
    model with sliding windows runs on transformers' forward, where `specdec.runtime.masks` combines
    the windows with tree masks)."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) is not None:
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


@dataclass
class _Block:
    """How one pass's new rows attend (see `LlamaRunner._block`)."""

    starts: list[int]  # each row's cached length before the pass (empty: only on the device)
    n: int  # new rows per batch row
    width: int  # max(starts) + n: the cache columns any row can see (SDPA path)
    slots: torch.Tensor | None  # [B, n] cache positions when rows start at different positions
    dense: torch.Tensor | None = None  # [B, 1, n, width] bool for SDPA; None: no mask needed
    kernel: bool = False  # attend through tree_attention (else the runner's SDPA)
    backend: str | None = None  # tree_attention backend (None: its automatic choice)
    tree_mask: torch.Tensor | None = None  # [n, n] or [B, n, n] among the new rows; None: causal
    prefix_lens: torch.Tensor | None = None  # [B] starts, for the kernel
    max_prefix_len: int | None = None  # host bound on prefix_lens, when known


class LlamaRunner(OneRowMethods):
    """Incremental forward passes of a Llama-layout model over a preallocated KV cache.

    The cache holds B rows (`reset(batch_size)`); row b keeps its own length `lengths[b]` and its
    positions [0, lengths[b]) are contiguous, so rows of a batch may hold different numbers of tokens.
    The one-row methods (`extend`, `truncate`, `compact`, `length`) are the B = 1 case.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_length: int | None = None,
        static: bool = False,
        cuda_graphs: bool = False,
        compiled: bool = False,
    ) -> None:
        """static: run blocks of up to 128 tokens (with the kernel's form of mask) as fixed-shape
        passes padded to `static_pass.BUCKETS`; cuda_graphs: also capture each shape once as a CUDA
        graph and replay it (needs the whole model on one CUDA device, no accelerate hooks);
        compiled: run every other pass through `torch.compile` (see `_compiled_pass_body`)."""
        if not supports_llama_runner(model):
            raise ValueError(f"{type(model).__name__} is not a Llama-layout model this runner supports")
        self.model = model
        self.device = model_device(model)
        self.vocab_size = vocab_size(model)
        self.context_length = context_length(model)
        config = model.config
        self._inner = model.model
        self._layers = list(model.model.layers)
        heads = config.num_attention_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.tensor_parallel = is_tensor_parallel(model)
        # this rank's heads: all of them, or its shard's under tensor parallelism (whose cache is
        # this rank's share of every layer's keys and values)
        self._heads, self._kv_heads = _local_heads(model, self._head_dim)
        self._gqa = bool(self._kv_heads != self._heads)
        # Positions never pass the context, but a verified tree briefly holds up to MAX_TREE_NODES rows
        # (+ the pending tokens) beyond the committed ones, so the cache has room for them.
        self._capacity = (max_length or self.context_length or 4096) + MAX_TREE_NODES + 8
        self._calls = ModuleCalls(model, self._capacity, tensor_parallel=self.tensor_parallel)
        if self.tensor_parallel and (cuda_graphs or compiled):
            raise ValueError(
                "a tensor-parallel target runs specdec's runner without CUDA graphs or torch.compile (its "
                'passes are collectives): use runtime="auto" or "specdec" and cuda_graphs=False.'
            )
        if cuda_graphs and not graphs_possible(model, self._calls):
            raise ValueError(
                "cuda_graphs=True needs the whole model on one CUDA device without accelerate hooks "
                "(offloaded or split models run the same steps without graphs: pass cuda_graphs=False)."
            )
        self.static = static or cuda_graphs
        self.cuda_graphs = cuda_graphs
        self.compiled = compiled
        self._compiled_pass = None
        self._compiled_batches: set[int] = set()  # batch sizes whose graphs are compiled
        if compiled:
            if self.device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
                raise ValueError(
                    'runtime="compiled" on a CPU needs a C++ compiler (torch.compile builds its kernels '
                    'with one); install g++ or use runtime="specdec".'
                )
            allow_compiled_passes()
            # the modules' weights are read in place every call; checking each one's identity, size
            # and stride before every pass costs as much as a small model's matmuls (torch >= 2.8)
            skip_weight_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
            options = {} if skip_weight_guards is None else {"guard_filter_fn": skip_weight_guards}
            self._compiled_pass = torch.compile(
                _own_code(self._compiled_pass_body), dynamic=True, fullgraph=True, options=options
            )
        self._passes: dict[tuple[int, int], StaticPass] = {}  # (B, bucket) -> its pass
        self._probe: torch.Tensor | None = None  # [0, 0, 0, D] for choosing the attention backend
        self._keys: list[torch.Tensor] = []  # per layer [B, H_kv, capacity, D]
        self._values: list[torch.Tensor] = []
        self.batch_size = 1
        self.lengths: list[int] = [0]

    @property
    def name(self) -> str:
        """The runtime's name, as `stats.runtime` reports it."""
        return "compiled" if self.compiled else "specdec"

    # ------------------------------------------------------------------ one-row interface
    def reset(self, batch_size: int = 1) -> None:
        """Forget every row; the next passes run `batch_size` rows (the cache is reused when it holds
        at least that many rows: rows [0, batch_size) of it are used)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._keys and self._keys[0].shape[0] < batch_size:  # a larger cache serves fewer rows
            self._keys, self._values = [], []
            self._passes.clear()  # captured graphs point at the old cache
        self.batch_size = batch_size
        self.lengths = [0] * batch_size

    def truncate(self, length: int) -> None:
        self._require_one_row()
        if not 0 <= length <= self.lengths[0]:
            raise ValueError(f"cannot truncate a cache of {self.lengths[0]} positions to {length}")
        self.lengths[0] = length

    # ------------------------------------------------------------------ batched interface
    @torch.inference_mode()
    def extend_rows(
        self,
        tokens: torch.Tensor,
        counts: list[int],
        positions: torch.Tensor | None,
        attention: torch.Tensor | None,
        logit_rows: torch.Tensor | int,
    ) -> torch.Tensor:
        """Append a block of new tokens to every row; return logits of chosen block rows.

        tokens: [B, n]; row b's first counts[b] tokens are real and go to positions lengths[b], ...;
        the rest is padding (written past the row's end, never attended by real tokens, and then
        overwritten). positions: [B, n] position ids (default consecutive). attention: [B or 1, n, n]
        bool among the block (every earlier position of the row visible; padding rows must see at
        least themselves), or [B or 1, n, W] over absolute cache columns [0, W) including the block
        at [lengths[b], lengths[b] + n); None = causal. logit_rows: [B, r] block indices, or an int r
        for the last r rows of the block.
        Returns [B, r, V] logits.
        """
        check_block(self.batch_size, tokens, counts, positions, attention, logit_rows)
        batch, n = tokens.shape
        starts = list(self.lengths)
        width = max(starts) + n
        if width > self._capacity:
            raise ValueError(f"the KV cache holds {self._capacity} positions; {width} were asked for")
        if self.static and (attention is None or attention.shape[-1] == n) and bucket(n) is not None:
            return self._extend_static(tokens, counts, positions, attention, logit_rows, starts)
        device = self.device
        slots = None
        if len(set(starts)) == 1:
            if positions is None:
                positions = torch.arange(starts[0], starts[0] + n, device=device).expand(batch, n)
        else:
            slots = torch.tensor(starts, device=device)[:, None] + torch.arange(n, device=device)  # [B, n]
            positions = slots if positions is None else positions
        if self._compiled_pass is not None:
            return self._run_compiled(tokens, counts, starts, slots, positions, attention, width, logit_rows)
        hidden = self._inner.embed_tokens(tokens.to(device))  # [B, n, H]
        if not self._keys:
            self._allocate(hidden.dtype)
        block = self._block(starts, slots, n, width, attention, hidden.dtype)
        cos, sin = self._calls.cos_sin(hidden, positions.to(device))  # [B, n, D] each
        hidden = self._decoder_layers(hidden, cos, sin, block)
        self.lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        return self._logits(hidden, logit_rows)

    def _logits(self, hidden: torch.Tensor, logit_rows: torch.Tensor | int) -> torch.Tensor:
        """hidden [B, n, H] -> logits [B, r, V] of the last r rows (int) or of rows [B, r] (tensor)."""
        if isinstance(logit_rows, int):
            picked = hidden[:, hidden.shape[1] - logit_rows :]  # [B, r, H]
        else:
            rows = logit_rows.to(hidden.device)[:, :, None].expand(-1, -1, hidden.shape[-1])  # [B, r, H]
            picked = hidden.gather(1, rows)
        return self._head(picked)  # [B, r, V]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm and the LM head: hidden [B, r, H] -> logits [B, r, V]."""
        return self._calls.linear(self.model.lm_head, self._calls.norm(self._inner.norm, hidden))

    def _extend_static(self, tokens, counts, positions, attention, logit_rows, starts) -> torch.Tensor:
        """`extend_rows` as a fixed-shape pass: the block padded to its bucket, inputs on the device."""
        batch, n = tokens.shape
        size = bucket(n)
        device = self.device
        start_tensor = torch.tensor(starts, device=device)  # [B]
        padded_tokens = torch.zeros(batch, size, dtype=torch.long, device=device)
        padded_tokens[:, :n] = tokens.to(device)
        padded_positions = start_tensor[:, None].expand(batch, size).clone()  # padding: any valid position
        if positions is None:
            padded_positions[:, :n] += torch.arange(n, device=device)
        else:
            padded_positions[:, :n] = positions.to(device)
        block = torch.eye(size, dtype=torch.bool, device=device).repeat(batch, 1, 1)  # padding sees itself
        among = (
            torch.tril(torch.ones(n, n, dtype=torch.bool, device=device)) if attention is None else attention
        )
        block[:, :n, :n] = among.to(device)
        if not self._keys:
            self._allocate(self.model.get_input_embeddings().weight.dtype)
        key = (batch, size)
        if key not in self._passes:
            self._passes[key] = StaticPass(self._static_forward, batch, size, device, self.cuda_graphs)
        logits = self._passes[key].run(padded_tokens, padded_positions, start_tensor, block)  # [B, size, V]
        self.lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        if isinstance(logit_rows, int):
            return logits[:, n - logit_rows : n]
        rows = logit_rows.to(device)[:, :, None].expand(-1, -1, logits.shape[-1])  # [B, r, V]
        return logits.gather(1, rows)

    def _static_forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, block: torch.Tensor
    ) -> torch.Tensor:
        """The pass a StaticPass runs or captures: no host values read. tokens, positions [B, n];
        starts [B] cached lengths; block [B, n, n] -> logits [B, n, V]."""
        n = tokens.shape[1]
        hidden = self._inner.embed_tokens(tokens)  # [B, n, H]
        cos, sin = self._calls.cos_sin(hidden, positions)  # [B, n, D]
        slots = starts[:, None] + torch.arange(n, device=tokens.device)  # [B, n] cache positions
        attend = _Block([], n, 0, slots, kernel=True, tree_mask=block, prefix_lens=starts)
        hidden = self._decoder_layers(hidden, cos, sin, attend)
        return self._head(hidden)  # [B, n, V]

    def _run_compiled(
        self, tokens, counts, starts, slots, positions, attention, width, logit_rows
    ) -> torch.Tensor:
        """An ordinary pass through the compiled graph. Host values (where rows start, the attended
        width, which logit rows) enter as tensors or symbolic sizes, always in the same form (a mask
        and logit-row indices are always given), so a few graphs serve every step; they are all
        compiled at the first pass of a batch size (see `_compile_variants`)."""
        device = self.device
        batch, n = tokens.shape
        if not self._keys:
            self._allocate(self.model.get_input_embeddings().weight.dtype)
        if self._calls.uses_table:
            self._calls.prepare_table(self._keys[0])  # outside the graph: the graph only reads it
        if batch not in self._compiled_batches and not any(starts):
            self._compile_variants(batch)
        if slots is None:
            slots = torch.arange(starts[0], starts[0] + n, device=device).expand(batch, n)  # [B, n]
        mask = self._mask(starts, n, width, attention)  # [B, 1, n, width] bool or None
        if mask is None:
            mask = torch.ones(batch, 1, n, width, dtype=torch.bool, device=device)
        if isinstance(logit_rows, int):
            logit_rows = torch.arange(n - logit_rows, n, device=device).expand(batch, logit_rows)
        logits = self._compiled_pass(
            _fresh(tokens, device),
            _fresh(positions, device),
            _fresh(slots, device),
            mask,
            width,
            _fresh(logit_rows, device),
        )  # [B, r, V]
        self.lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        return logits

    def _compile_variants(self, batch: int) -> None:
        """Compile, on dummy tokens written where the (empty) rows will be overwritten, every graph
        a generation can need at this batch size: 1 or 2+ new tokens, 1 or 2+ logit rows, a first
        pass (it attends only to itself) or a later one. Compiling them now keeps compilation out of
        the passes a user times. Only called while every row is empty."""
        device = self.device
        self._compiled_batches.add(batch)
        for start in (0, 3):
            for n, r in ((1, 1), (2, 1), (2, 2)):
                width = start + n
                tokens = torch.zeros(batch, n, dtype=torch.long, device=device)
                slots = (start + torch.arange(n, device=device)).expand(batch, n).clone()
                mask = torch.ones(batch, 1, n, width, dtype=torch.bool, device=device)
                rows = torch.arange(n - r, n, device=device).expand(batch, r).clone()
                self._compiled_pass(tokens, slots.clone(), slots, mask, width, rows)

    def _compiled_pass_body(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor,
        width: int,
        logit_rows: torch.Tensor,
    ) -> torch.Tensor:
        """What `torch.compile` traces: tokens, positions, slots (cache positions) [B, n]; mask
        [B, 1, n, width] bool; width = columns attended; logit_rows [B, r] block indices. Writes the
        cache; returns logits [B, r, V]."""
        hidden = self._inner.embed_tokens(tokens)  # [B, n, H]
        cos, sin = self._calls.cos_sin(hidden, positions)  # [B, n, D]
        block = _Block([], tokens.shape[1], width, slots, dense=mask)
        return self._logits(self._decoder_layers(hidden, cos, sin, block), logit_rows)

    def _decoder_layers(self, hidden: torch.Tensor, cos, sin, block: _Block) -> torch.Tensor:
        """Every decoder layer over hidden [B, n, H] (cos, sin [B, n, D]); writes the cache."""
        for index, layer in enumerate(self._layers):
            normed = self._calls.norm(layer.input_layernorm, hidden)
            hidden = hidden + self._attention(index, layer, normed, cos, sin, block)
            hidden = hidden + self._calls.mlp(
                layer.mlp, self._calls.norm(layer.post_attention_layernorm, hidden)
            )
        return hidden

    def _allocate(self, dtype: torch.dtype) -> None:
        shape = (self.batch_size, self._kv_heads, self._capacity, self._head_dim)
        for layer in self._layers:
            device = layer.self_attn.k_proj.weight.device
            device = self.device if device.type == "meta" else device
            # zeros, not empty: a batch row shorter than the longest one has columns it never wrote
            # inside the attended width; masked, they must still be finite (0 * NaN is NaN)
            self._keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self._values.append(torch.zeros(shape, dtype=dtype, device=device))

    def _block(
        self,
        starts: list[int],
        slots: torch.Tensor | None,
        n: int,
        width: int,
        attention: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> _Block:
        """How this pass attends: through `specdec.kernels.tree_attention` (Triton, flash-attn or the
        float64 reference, as chosen automatically or by SPECDEC_ATTENTION) when the mask has the
        kernel's form (prefix visible, a mask among the new rows), else through SDPA with a dense mask.
        On CPU the automatic choice is SDPA, which this runner runs itself over its zero-initialised
        cache (no copy to blank unwritten slots). Masks over absolute columns (the draft's tree
        feeding, where earlier fed nodes are visible only to their descendants) always take SDPA."""
        absolute = attention is not None and attention.shape[-1] != n
        kernel = None
        if not absolute:
            tree_mask = None if attention is None else attention.to(self.device)
            if tree_mask is not None and tree_mask.shape[0] == 1:
                tree_mask = tree_mask[0]  # [n, n] shared by the rows
            if self._probe is None or self._probe.dtype != dtype:
                self._probe = torch.empty(0, 0, 0, self._head_dim, dtype=dtype, device=self.device)
            kernel = resolve_backend(self._probe, tree_mask)
        if kernel is None or kernel == "sdpa":
            dense = self._mask(starts, n, width, attention)  # [B, 1, n, width] bool or None
            return _Block(starts, n, width, slots, dense=dense)
        prefix_lens = torch.tensor(starts, device=self.device)  # [B]
        return _Block(
            starts,
            n,
            width,
            slots,
            kernel=True,
            backend=kernel,
            tree_mask=tree_mask,
            prefix_lens=prefix_lens,
            max_prefix_len=max(starts),
        )

    def _mask(
        self, starts: list[int], n: int, width: int, attention: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Boolean [B, 1, n, width] mask, or None when every new token sees every earlier position."""
        device = self.device
        if attention is None:
            if n == 1 and self.batch_size == 1:
                return None
            attention = torch.tril(torch.ones(n, n, dtype=torch.bool, device=device))[None]
        attention = attention.to(device)
        if attention.shape[-1] != n:  # absolute columns given
            if attention.shape[-1] > width:
                raise ValueError(f"attention has {attention.shape[-1]} columns; at most {width} exist")
            full = torch.zeros(attention.shape[0], n, width, dtype=torch.bool, device=device)
            full[..., : attention.shape[-1]] = attention
            return full.expand(self.batch_size, n, width)[:, None]
        prefix_lens = torch.tensor(starts, device=device)  # [B]
        return dense_tree_mask(prefix_lens, attention, n, width)[:, None]  # [B, 1, n, width]

    def _attention(self, index, layer, x, cos, sin, block: _Block) -> torch.Tensor:
        attn = layer.self_attn
        batch, n, _ = x.shape
        linear = self._calls.linear
        q = (
            linear(attn.q_proj, x).view(batch, n, self._heads, self._head_dim).transpose(1, 2)
        )  # [B, Hq, n, D]
        k = (
            linear(attn.k_proj, x).view(batch, n, self._kv_heads, self._head_dim).transpose(1, 2)
        )  # [B, Hkv, n, D]
        v = linear(attn.v_proj, x).view(batch, n, self._kv_heads, self._head_dim).transpose(1, 2)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head's D
            q, k = self._calls.norm(attn.q_norm, q), self._calls.norm(attn.k_norm, k)
        q, k = self._calls.rotate(q, k, cos, sin)
        keys, values = self._keys[index][:batch], self._values[index][:batch]  # [B, Hkv, capacity, D]
        if block.slots is None:  # every row starts at the same position
            start = block.starts[0]
            keys[:, :, start : start + n] = k.to(keys.device)
            values[:, :, start : start + n] = v.to(values.device)
        else:
            rows = torch.arange(batch, device=keys.device)[:, None]  # [B, 1]
            cache_slots = block.slots.to(keys.device)
            keys[rows, :, cache_slots] = k.transpose(1, 2).to(keys.device)  # [B, n, Hkv, D]
            values[rows, :, cache_slots] = v.transpose(1, 2).to(values.device)
        if block.kernel:
            out = tree_attention(
                q,
                keys.to(q.device),
                values.to(q.device),
                block.prefix_lens,
                block.tree_mask,
                scale=attn.scaling,
                backend=block.backend,
                max_prefix_len=block.max_prefix_len,
            )  # [B, Hq, n, D]
        else:
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, : block.width].to(q.device),
                values[:, :, : block.width].to(q.device),
                attn_mask=None if block.dense is None else block.dense.to(q.device),
                scale=attn.scaling,
                enable_gqa=self._gqa,
            )  # [B, Hq, n, D]
        return linear(attn.o_proj, out.transpose(1, 2).reshape(batch, n, self._heads * self._head_dim))

    @torch.inference_mode()
    def compact_rows(self, starts: list[int], rows: list[list[int]]) -> None:
        """Per row b: keep positions [0, starts[b]) then rows[b] moved to starts[b], starts[b] + 1, ...
        (rows[b] distinct, ascending, in [starts[b], lengths[b])); drop the rest."""
        for b, (start, kept) in enumerate(zip(starts, rows, strict=True)):
            if any(r < start or r >= self.lengths[b] for r in kept) or list(kept) != sorted(set(kept)):
                held = self.lengths[b]
                raise ValueError(
                    f"row {b}: rows {kept} must be distinct ascending positions in [{start}, {held})"
                )
        moves = [(b, s, kept) for b, (s, kept) in enumerate(zip(starts, rows, strict=True)) if kept]
        moves = [(b, s, kept) for b, s, kept in moves if list(kept) != list(range(s, s + len(kept)))]
        if moves and self._keys:
            self._move_rows(moves)
        self.lengths = [s + len(kept) for s, kept in zip(starts, rows, strict=True)]

    def _move_rows(self, moves: list[tuple[int, int, list[int]]]) -> None:
        """One gather and one scatter per cache tensor for every row that moves positions."""
        width = max(len(kept) for _, _, kept in moves)
        source, target = [], []
        for _, start, kept in moves:
            # positions past the row's kept ones copy onto themselves
            source.append(list(kept) + [start + j for j in range(len(kept), width)])
            target.append(list(range(start, start + width)))
        device = self._keys[0].device
        batch_rows = torch.tensor([b for b, _, _ in moves], device=device)[:, None]  # [M, 1]
        source_index = torch.tensor(source, device=device)  # [M, width]
        target_index = torch.tensor(target, device=device)
        for tensor in (*self._keys, *self._values):
            tensor[batch_rows, :, target_index] = tensor[batch_rows, :, source_index]  # [M, width, H, D]

    @torch.inference_mode()
    def keep_rows(self, indices: list[int]) -> None:
        """Keep only the batch rows `indices` (ascending), e.g. dropping finished rows. The kept rows
        move up in place (only their used positions are copied); the allocation is kept."""
        if list(indices) != sorted(set(indices)) or any(not 0 <= i < self.batch_size for i in indices):
            raise ValueError(f"indices {indices} must be distinct ascending rows of {self.batch_size}")
        if list(indices) == list(range(self.batch_size)):
            return
        lengths = [self.lengths[i] for i in indices]
        used = max(lengths, default=0)
        if self._keys and used:
            index = torch.tensor(indices, device=self._keys[0].device)
            for tensor in (*self._keys, *self._values):
                tensor[: len(indices), :, :used] = tensor[index, :, :used]  # [M, H, used, D]
        self.lengths = lengths
        self.batch_size = len(indices)


def _local_heads(model: PreTrainedModel, head_dim: int) -> tuple[int, int]:
    """(query heads, key/value heads) this rank computes: all of them, or under tensor parallelism its
    shard's, read from the first layer's q/k projection rows. ValueError when the shards split a head or
    give the ranks unequal shares."""
    attn = model.model.layers[0].self_attn
    heads = model.config.num_attention_heads
    kv_heads = getattr(model.config, "num_key_value_heads", None) or heads
    shards = shard_count(attn.q_proj.weight)
    q_rows, k_rows = local_rows(attn.q_proj.weight), local_rows(attn.k_proj.weight)
    if (
        heads % shards
        or kv_heads % shards
        or (q_rows, k_rows) != (heads * head_dim // shards, kv_heads * head_dim // shards)
    ):
        raise ValueError(
            f"the tensor-parallel size {shards} must divide the attention heads ({heads} query, {kv_heads} "
            f"key/value) so that every rank holds whole heads (this rank holds {q_rows} and {k_rows} "
            f"projection rows of {head_dim} per head): load the target with a size that divides both."
        )
    return heads // shards, kv_heads // shards


#: Compiled graphs one runner may need: one new token or more, one logit row or more, one batch row
#: or more, a first pass that attends only to itself (6 per batch size of 1 and of 2+, with room).
_GRAPHS_PER_RUNNER = 16


def allow_compiled_passes() -> None:
    """Raise torch's per-function recompile limit to hold one runner's graphs (never lowers it)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), _GRAPHS_PER_RUNNER))


def _own_code(method):
    """`method` bound to a copy of its function with a code object of its own. torch.compile keeps
    its graphs and guards per code object, so each runner gets its own instead of every runner's
    sizes (heads, layers) being guarded, generalised and recompiled in one shared cache."""
    function = method.__func__
    code = function.__code__.replace(co_name=function.__name__)  # a new code object, same code
    copy = types.FunctionType(
        code, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    return types.MethodType(copy, method.__self__)


def _fresh(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A compact copy made under inference mode: graph inputs that are views (a storage offset) or
    were made outside inference mode would each make torch.compile guard on it and recompile."""
    return tensor.to(device).clone(memory_format=torch.contiguous_format)
