"""specdec's lean Llama runner against transformers' own forward (float32, 1e-5)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import specdec
from specdec.core.tree import Tree
from specdec.runtime.factory import make_runner
from specdec.runtime.llama_runner import LlamaRunner
from specdec.runtime.runner import CausalRunner
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0, hidden=64, heads=4, kv_heads=2)


def test_prefill_decode_tree_rollback_and_compaction_match_transformers(model):
    ids = prompt(14, 0)[0]
    lean, reference = LlamaRunner(model), CausalRunner(model)
    for runner in (lean, reference):
        runner.extend(ids[:10], num_logits=3)
    assert torch.allclose(lean.extend(ids[10:12], 2), reference.extend(ids[10:12], 2), atol=1e-5)  # decode
    tree = Tree.from_branching((2, 2))
    tokens = prompt(len(tree), 1)[0]
    positions = 12 - 1 + tree.depth_tensor()
    a = lean.extend(tokens, len(tree), positions, tree.ancestor_mask)
    b = reference.extend(tokens, len(tree), positions, tree.ancestor_mask)
    assert torch.allclose(a, b, atol=1e-5)  # tree verify
    for runner in (lean, reference):
        runner.compact(12, [12 + 1, 12 + 4])  # keep the path node 1 -> node 4
    assert lean.length == reference.length == 14
    after = ids[12:14]
    assert torch.allclose(lean.extend(after, 2), reference.extend(after, 2), atol=1e-5)
    for runner in (lean, reference):
        runner.truncate(11)  # rollback
    assert torch.allclose(lean.extend(ids[11:], 3), reference.extend(ids[11:], 3), atol=1e-5)
    with torch.no_grad():
        path = torch.cat([ids[:12], tokens[[1, 4]], ids[12:14]])
        full = model(path[None]).logits[0, -2:]
    fresh = LlamaRunner(model)
    fresh.extend(path, 2)
    lean.reset()
    assert torch.allclose(lean.extend(path, 2), full, atol=1e-5)


def test_runtime_choice():
    llama = tiny_llama(seed=0)
    assert isinstance(make_runner(llama), LlamaRunner)
    assert isinstance(make_runner(llama, "transformers"), CausalRunner)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=96, n_positions=64))
    assert isinstance(make_runner(gpt2), CausalRunner)
    with pytest.raises(ValueError, match='runtime="specdec" needs a Llama-layout model'):
        make_runner(gpt2, "specdec")
    with pytest.raises(ValueError, match="runtime='fast' is not supported"):
        make_runner(llama, "fast")


@pytest.mark.parametrize("runtime", ["specdec", "transformers"])
@pytest.mark.parametrize("strategy", ["chain", "tree", "hybrid"])
def test_both_runtimes_are_exact(model, runtime, strategy):
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(model, draft, strategy=strategy, runtime=runtime)
    for seed in range(2):
        ids = prompt(6 + seed, 500 + seed)
        expected = model.generate(ids, max_new_tokens=20, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=20), expected)


def test_generic_transformers_model_still_exact():
    """A causal LM the lean runner does not cover (GPT-2) runs through transformers' forward."""
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64)).eval()
    ids = prompt(5, 7)
    expected = gpt2.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    out = specdec.wrap(gpt2, gpt2, strategy="tree", tree=(2, 1)).generate(
        ids, max_new_tokens=12, pad_token_id=0
    )
    assert torch.equal(out, expected)


def test_trees_fit_at_the_end_of_the_context():
    """A wide tree verified when the sequence is near the context end: rows beyond the committed
    positions fit, positions stay inside the context, output stays exact."""
    model = tiny_llama(seed=0, context=48)
    ids = prompt(40, 9)
    expected = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    spec = specdec.wrap(model, model, strategy="tree", tree=(8, 4, 2), runtime="specdec")
    assert torch.equal(spec.generate(ids, max_new_tokens=8, eos_token_id=None), expected)


def test_direct_module_calls_equal_the_modules(model):
    """The functional fast path (F.linear on the weights, F.rms_norm, rotary table) computes what the
    modules do, and is off when accelerate hooks could move or load weights."""
    from accelerate.hooks import ModelHook, add_hook_to_module
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from specdec.runtime.module_calls import ModuleCalls, can_call_directly

    calls = ModuleCalls(model, capacity=300)
    assert calls.direct
    layer = model.model.layers[0]
    x = torch.randn(2, 5, model.config.hidden_size)
    assert torch.allclose(calls.linear(layer.self_attn.q_proj, x), layer.self_attn.q_proj(x), atol=1e-6)
    assert torch.allclose(calls.mlp(layer.mlp, x), layer.mlp(x), atol=1e-6)
    assert torch.allclose(calls.norm(layer.input_layernorm, x), layer.input_layernorm(x), atol=1e-6)
    positions = torch.tensor([[0, 7, 299, 3, 3], [1, 2, 3, 4, 5]])
    cos, sin = calls.cos_sin(x, positions)  # the table's form: the sign of rotate_half sits in sin
    want_cos, want_sin = model.model.rotary_emb(x, positions)
    heads, kv_heads, dim = model.config.num_attention_heads, model.config.num_key_value_heads, cos.shape[-1]
    q, k = torch.randn(2, heads, 5, dim), torch.randn(2, kv_heads, 5, dim)
    got_q, got_k = calls.rotate(q, k, cos, sin)
    want_q, want_k = apply_rotary_pos_emb(q, k, want_cos, want_sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)

    hooked = tiny_llama(seed=3)
    add_hook_to_module(hooked.model.layers[0].mlp, ModelHook())
    assert not can_call_directly(hooked)
    runner = LlamaRunner(hooked)
    ids = prompt(9, 4)[0]
    with torch.no_grad():
        expected = hooked(ids[None]).logits[0, -1]
    assert torch.allclose(runner.extend(ids)[0], expected, atol=1e-5)
