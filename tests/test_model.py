"""The model, component by component, against Hugging Face's GPT2LMHeadModel.

As in the classic clean-transformer walkthrough, each gpt2lab component is fed
the *reference's own* input activations (captured with hooks on the
transformers model) and must produce the reference's output.  LayerNorm
parameters and all biases are perturbed away from their 1/0 initial values so
that a swapped or ignored parameter cannot hide.
"""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import random_hf_model
from gpt2lab.checkpoint import hf_to_gpt2lab, load_state_strict
from gpt2lab.model import (FEW_ROWS, GPT, Embed, GPTConfig, KVCache, LayerNorm, PackedWeights, causal_mask,
                           gelu, matmul)

TOL = {"tiny": 1e-5, "mini": 1e-5, "gpt2": 1e-4}


def make_pair(preset: str, seed: int = 0):
    """A random HF GPT-2 and a gpt2lab GPT holding the very same weights."""
    cfg, hf = random_hf_model(preset, seed)
    ours = GPT(cfg).eval()
    load_state_strict(ours, hf_to_gpt2lab(hf.state_dict(), cfg), "test")
    return cfg, hf, ours


def capture(hf, tokens):
    """Run the HF model and record (input, output) of each component."""
    seen, handles = {}, []

    def hook(name):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
            out = output[0] if isinstance(output, tuple) else output
            seen[name] = (x.detach(), out.detach())
        return fn

    t = hf.transformer
    modules = {"wte": t.wte, "wpe": t.wpe, "ln_f": t.ln_f}
    for i, block in enumerate(t.h):
        modules.update({f"h{i}": block, f"h{i}.ln_1": block.ln_1, f"h{i}.attn": block.attn,
                        f"h{i}.ln_2": block.ln_2, f"h{i}.mlp": block.mlp})
    for name, m in modules.items():
        handles.append(m.register_forward_hook(hook(name), with_kwargs=True))
    with torch.no_grad():
        logits = hf(tokens).logits
    for h in handles:
        h.remove()
    return seen, logits


@pytest.fixture(scope="module", params=["tiny", "mini", "gpt2"])
def pair(request):
    cfg, hf, ours = make_pair(request.param)
    tokens = torch.randint(0, cfg.d_vocab, (2, min(cfg.n_ctx, 24)))
    seen, hf_logits = capture(hf, tokens)
    return request.param, cfg, hf, ours, tokens, seen, hf_logits


def err(a, b):
    return (a - b).abs().max().item()


def check(preset, what, ours, ref):
    """Assert parity within the preset's tolerance, and print the error
    (``pytest tests/test_model.py -k match -s`` shows the table)."""
    e = err(ours, ref)
    print(f"parity {preset:5s} {what:28s} max abs error {e:.2e}")
    assert e <= TOL[preset], f"{what}: {e}"


def test_embeddings_match(pair):
    preset, cfg, hf, ours, tokens, seen, _ = pair
    with torch.no_grad():
        check(preset, "token embedding", ours.embed(tokens), seen["wte"][1])
        check(preset, "position embedding", ours.pos_embed(torch.arange(tokens.shape[1])), seen["wpe"][1][0])


def test_each_layernorm_matches_plain_and_fast(pair):
    preset, cfg, hf, ours, tokens, seen, _ = pair
    with torch.no_grad():
        for i, block in enumerate(ours.blocks):
            for ln, key in ((block.ln1, f"h{i}.ln_1"), (block.ln2, f"h{i}.ln_2")):
                x, ref = seen[key]
                check(preset, f"{key} (plain)", ln(x), ref)
                check(preset, f"{key} (fused)", ln.forward_fast(x), ref)
        x, ref = seen["ln_f"]
        check(preset, "ln_f", ours.ln_final(x), ref)


@pytest.mark.parametrize("fast", [False, True])
def test_each_attention_matches(pair, fast):
    preset, cfg, hf, ours, tokens, seen, _ = pair
    with torch.no_grad():
        for i, block in enumerate(ours.blocks):
            block.attn.fast = fast
            x, ref = seen[f"h{i}.attn"]
            check(preset, f"h{i}.attn ({'sdpa' if fast else 'plain'})", block.attn(x), ref)
    ours.set_fast_attention(True)


def test_each_mlp_and_block_matches(pair):
    preset, cfg, hf, ours, tokens, seen, _ = pair
    with torch.no_grad():
        for i, block in enumerate(ours.blocks):
            x, ref = seen[f"h{i}.mlp"]
            check(preset, f"h{i}.mlp", block.mlp(x), ref)
            x, ref = seen[f"h{i}"]
            check(preset, f"h{i} (block)", block(x), ref)


@pytest.mark.parametrize("fast", [False, True])
def test_full_logits_match(pair, fast):
    preset, cfg, hf, ours, tokens, seen, hf_logits = pair
    ours.set_fast_attention(fast)
    with torch.no_grad():
        check(preset, f"logits ({'sdpa' if fast else 'plain'})", ours(tokens), hf_logits)
    ours.set_fast_attention(True)


def test_gpt2_parameter_count_is_124M_with_tied_embeddings():
    model = GPT(GPTConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808
    assert model.num_params(include_position=False) == 124_439_808 - 1024 * 768
    # the unembedding is the embedding, not a copy
    assert model.unembed.W_U.data_ptr() == model.embed.W_E.data_ptr()


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("mini")
    model = GPT(cfg)
    std = cfg.init_range
    assert model.embed.W_E.std().item() == pytest.approx(std, rel=0.02)
    assert model.blocks[0].mlp.W_in.std().item() == pytest.approx(std, rel=0.05)
    expected = std / math.sqrt(2 * cfg.n_layers)
    assert model.blocks[0].mlp.W_out.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].attn.W_O.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(model.blocks[0].ln1.w == 1) and torch.all(model.blocks[0].attn.b_Q == 0)


def test_plain_and_fused_attention_agree_with_dropout_off_and_gradients():
    torch.manual_seed(1)
    model = GPT(GPTConfig.from_preset("tiny"))
    tokens = torch.randint(0, 50257, (3, 32))
    outs, grads = [], []
    for fast in (False, True):
        model.zero_grad()
        model.set_fast_attention(fast)
        logits = model(tokens)
        logits.square().mean().backward()
        outs.append(logits.detach())
        grads.append(model.blocks[0].attn.W_Q.grad.clone())
    assert err(*outs) <= 1e-5
    assert err(*grads) <= 1e-6


def test_embedding_gradient_is_the_same_every_time_and_equals_plain_indexing(threads):
    """Indexing's backward adds the gradients of repeated tokens with atomic
    adds from several cores, in an order that changes from run to run.
    ``Embed``'s must add them in batch order, bit for bit, every time, on
    several cores and a batch big enough for them to split it."""
    threads(max(2, torch.get_num_threads()))  # the default count, and never fewer than 2
    embed = Embed(GPTConfig(d_vocab=64, d_model=64, n_ctx=8, n_heads=4, n_layers=1))
    torch.nn.init.normal_(embed.W_E)
    tokens = torch.randint(0, 64, (16, 1024))  # 16,384 tokens: each row of W_E sums about 256 vectors
    upstream = torch.randn(16, 1024, 64)  # d loss / d embedding
    in_batch_order = torch.zeros(64, 64).index_add_(0, tokens.flatten(), upstream.flatten(0, 1))  # one add at a time

    def grad(forward):
        embed.W_E.grad = None
        (forward(tokens) * upstream).sum().backward()
        return embed.W_E.grad.clone()

    for _ in range(10):  # plain indexing: about 19 in 20 differ on 2 cores
        assert torch.equal(grad(embed.forward), in_batch_order)
    torch.testing.assert_close(grad(embed.forward_plain), in_batch_order, rtol=0, atol=1e-4)
    assert torch.equal(embed.forward(tokens), embed.forward_plain(tokens))


def test_layernorm_plain_equals_fused():
    cfg = GPTConfig.from_preset("tiny")
    ln = LayerNorm(cfg)
    with torch.no_grad():
        ln.w.normal_()
        ln.b.normal_()
    x = torch.randn(4, 7, cfg.d_model) * 3 + 1
    assert err(ln(x), ln.forward_fast(x)) <= 1e-5


@pytest.mark.parametrize("n_threads", [2, 3, 8])
@pytest.mark.parametrize("shape", [(1, 1, 256), (8, 1, 256), (2, 3, 768)])
def test_split_matmul_equals_the_plain_product(threads, bmm_calls, n_threads, shape):
    threads(n_threads)
    torch.manual_seed(0)
    x = torch.randn(*shape)  # (batch, pos, d_in), at most FEW_ROWS rows
    W = torch.randn(shape[-1], 96)
    with torch.no_grad():
        fast = matmul(x, W)
    assert bmm_calls, "a few rows without gradients should take the split path"
    assert fast.shape == (*shape[:-1], 96)
    assert err(fast, x @ W) <= 1e-4  # same sum, grouped differently (values ~ sqrt(d_in))


def test_matmul_keeps_the_plain_product_for_training_and_big_batches(threads, bmm_calls):
    threads(2)
    W = torch.randn(64, 32)
    big = torch.randn(FEW_ROWS + 1, 64)
    with torch.no_grad():
        assert torch.equal(matmul(big, W), big @ W)
    small = torch.randn(2, 64)
    assert torch.equal(matmul(small, W), small @ W)  # gradients on: the plain product
    threads(1)
    with torch.no_grad():
        assert torch.equal(matmul(small, W), small @ W)  # one thread: nothing to spread
    assert not bmm_calls


@pytest.mark.parametrize("shape", [(1, 1, 256), (8, 1, 256), (3, 2, 768)])
def test_packed_matmul_equals_the_plain_product(packed_calls, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape).bfloat16()  # (batch, pos, d_in), at most FEW_ROWS rows
    W = torch.randn(shape[-1], 96).bfloat16()
    packs = PackedWeights()
    packs.pack("W", W)
    with torch.no_grad():
        fast = matmul(x, W, packs["W"])
    assert packed_calls, "a few rows without gradients should read the packed weights"
    assert fast.shape == (*shape[:-1], 96) and fast.dtype == torch.bfloat16
    exact = x.double() @ W.double()
    # both round the result to bf16 (8 bits of mantissa); values ~ sqrt(d_in)
    assert err(fast.double(), exact) <= 2 * err((x @ W).double(), exact) + 1e-6


def test_packed_weights_are_used_only_while_unchanged(packed_calls):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).bfloat16().eval()
    plain = copy.deepcopy(model)  # a copy starts without packs
    model.pack_weights()
    assert not plain.blocks[0].mlp.packed and set(model.blocks[0].attn.packed) == {"W_Q", "W_K", "W_V", "W_O"}
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 1))
    with torch.no_grad():
        assert err(model(tokens).float(), plain(tokens).float()) <= 0.05  # bf16 rounding, logits ~ 1
        assert len(packed_calls) == 6 * model.cfg.n_layers + 1  # Q, K, V, O, in, out per block; the unembedding
        for m in (model, plain):
            m.blocks[0].mlp.W_in.mul_(2)  # any in-place change, e.g. a training step
            m.embed.W_E.mul_(2)
        packed_calls.clear()
        assert err(model(tokens).float(), plain(tokens).float()) <= 0.05
        assert len(packed_calls) == 6 * model.cfg.n_layers - 1  # the two changed matrices are read as they are
    torch.save(model, io.BytesIO())  # packs are not pickled


def test_unembed_fast_path_follows_every_change_of_W_E(threads, bmm_calls):
    threads(2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    x = torch.randn(3, 1, model.cfg.d_model)
    with torch.no_grad():
        assert err(model.unembed(x), x @ model.embed.W_E.T) <= 1e-5
        assert bmm_calls
        first_copy = model.unembed.contiguous_W_U()
        assert first_copy is model.unembed.contiguous_W_U()  # kept while W_E is unchanged
    # a training step changes W_E in place: the copy must be remade
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.loss(torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8))).backward()
    opt.step()
    with torch.no_grad():
        assert err(model.unembed(x), x @ model.embed.W_E.T) <= 1e-5
        assert model.unembed.contiguous_W_U() is not first_copy
        model.embed.W_E.mul_(2)  # any in-place change
        assert err(model.unembed(x), x @ model.embed.W_E.T) <= 1e-5
    with torch.inference_mode():  # as in generation
        assert err(model.unembed(x), x @ model.embed.W_E.T) <= 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_loss_equals_plain_loss_and_gradients(chunk):
    torch.manual_seed(2)
    model = GPT(GPTConfig.from_preset("tiny"))
    tokens = torch.randint(0, 50257, (2, 20))
    targets = torch.randint(0, 50257, (2, 20))
    results = []
    for c in (0, chunk):
        model.zero_grad()
        loss = model.loss(tokens, targets, chunk_size=c)
        loss.backward()
        results.append((loss.item(), model.embed.W_E.grad.clone(), model.blocks[1].mlp.W_in.grad.clone()))
    (l0, e0, m0), (l1, e1, m1) = results
    assert l1 == pytest.approx(l0, abs=1e-5)
    assert err(e0, e1) <= 1e-6 and err(m0, m1) <= 1e-6
    # and the plain loss is the textbook cross-entropy of the logits
    with torch.no_grad():
        ref = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).item()
    assert l0 == pytest.approx(ref, abs=1e-5)


def test_chunked_loss_scales_its_gradient_and_skips_it_without_grad():
    torch.manual_seed(2)
    model = GPT(GPTConfig.from_preset("tiny"))
    tokens, targets = torch.randint(0, 50257, (2, 20)), torch.randint(0, 50257, (2, 20))
    grads = []
    for c, scale in ((0, 0.25), (16, 0.25)):  # as with grad_accum=4
        model.zero_grad()
        (model.loss(tokens, targets, chunk_size=c) * scale).backward()
        grads.append(model.embed.W_E.grad.clone())
    assert err(grads[0], grads[1]) <= 1e-6
    with torch.no_grad():
        assert model.loss(tokens, targets, 16).item() == pytest.approx(model.loss(tokens, targets).item(), abs=1e-5)


def test_chunked_loss_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(2)
    model = GPT(GPTConfig.from_preset("tiny"))
    tokens, targets = torch.randint(0, 50257, (2, 20)), torch.randint(0, 50257, (2, 20))
    ref = model.loss(tokens, targets)
    ref.backward()
    g_ref, model.embed.W_E.grad = model.embed.W_E.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(tokens, targets, chunk_size=16)
    loss.backward()
    assert loss.dtype == torch.float32 and model.embed.W_E.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), abs=2e-2)
    assert err(model.embed.W_E.grad, g_ref) <= 2e-2 * g_ref.abs().max().item()


def test_flops_per_token_is_6n_plus_attention():
    cfg = GPTConfig.from_preset("gpt2")
    model = GPT(cfg)
    n = 124_439_808 - 1024 * 768  # without position embeddings
    assert model.flops_per_token() == 6 * n + 12 * 12 * 1024 * 768
    assert model.flops_per_token(n_ctx=128) == 6 * n + 12 * 12 * 128 * 768


@pytest.mark.parametrize("fast", [False, True])
def test_kv_cache_gives_the_same_logits_as_a_full_forward(fast):
    torch.manual_seed(3)
    cfg = GPTConfig.from_preset("tiny")
    model = GPT(cfg).eval()
    model.set_fast_attention(fast)
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(cfg, batch=2)
        pieces = [model(tokens[:, :5], cache)]  # a prompt of 5, then one token at a time, then a chunk of 3
        for i in range(5, 20):
            pieces.append(model(tokens[:, i:i + 1], cache))
        pieces.append(model(tokens[:, 20:], cache))
    assert cache.length == cfg.n_ctx
    assert err(torch.cat(pieces, dim=1), full) <= 1e-5


def test_causal_mask_is_lower_triangular_with_offset():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_future_tokens_do_not_change_past_logits():
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    a = torch.randint(0, 50257, (1, 16))
    b = a.clone()
    b[0, 10:] = torch.randint(0, 50257, (6,))
    with torch.no_grad():
        assert err(model(a)[0, :10], model(b)[0, :10]) == 0.0
        assert err(model(a)[0, 10:], model(b)[0, 10:]) > 0.0


@pytest.mark.parametrize("field,value,fragment", [
    ("d_model", 102, "divisible"),
    ("n_layers", 0, "n_layers"),
    ("n_heads", -1, "n_heads"),
    ("dropout", 1.0, "dropout"),
    ("dropout", -0.1, "dropout"),
    ("d_vocab", 0, "d_vocab"),
])
def test_invalid_config_names_the_field(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        GPTConfig.from_preset("tiny", **{field: value})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset.*mini"):
        GPTConfig.from_preset("gpt5")


def test_presets_rederive_head_width():
    cfg = GPTConfig.from_preset("gpt2", d_model=128, n_heads=4)
    assert cfg.d_head == 32 and cfg.d_mlp == 512
    mini = GPTConfig.from_preset("mini")
    assert (mini.n_layers, mini.d_model, mini.n_heads, mini.d_head, mini.d_mlp, mini.n_ctx, mini.d_vocab) == \
        (2, 256, 4, 64, 1024, 256, 50257)


# ---------------------------------------------------------------------------
# The activation cache: what it records is what the model computes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_pair():
    """gpt2lab and HF with the same perturbed weights; HF with "eager"
    attention, the implementation that returns the attention weights."""
    cfg, hf, ours = make_pair("tiny", seed=1)
    hf.set_attn_implementation("eager")
    tokens = torch.randint(0, cfg.d_vocab, (2, 11), generator=torch.Generator().manual_seed(1))
    return hf, ours, tokens


@pytest.fixture(scope="module")
def model(cached_pair):
    return cached_pair[1]


@pytest.fixture(scope="module")
def tokens(cached_pair):
    return cached_pair[2]


def test_cached_logits_equal_forward_on_the_fast_path(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, model(tokens), rtol=1e-5, atol=1e-5)
    assert set(cache) == set(model.hook_points)
    assert not any(h.recording for h in model.hook_points.values())  # switched off again


def test_cached_activations_recompute_the_model(model, tokens):
    logits, c = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    torch.testing.assert_close(c["hook_embed"] + c["hook_pos_embed"], c["blocks.0.hook_resid_pre"])
    for i in range(n):
        b, blk = f"blocks.{i}.", model.blocks[i]
        torch.testing.assert_close(c[b + "ln1.hook_normalized"], blk.ln1(c[b + "hook_resid_pre"]))
        scale = (c[b + "hook_resid_pre"] - c[b + "hook_resid_pre"].mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True)
        torch.testing.assert_close(c[b + "ln1.hook_scale"], (scale + model.cfg.layer_norm_eps).sqrt())
        torch.testing.assert_close(c[b + "attn.hook_pattern"], c[b + "attn.hook_attn_scores"].softmax(-1))
        torch.testing.assert_close(c[b + "attn.hook_z"], c[b + "attn.hook_pattern"] @ c[b + "attn.hook_v"])
        torch.testing.assert_close(c[b + "hook_attn_out"], blk.attn(c[b + "ln1.hook_normalized"]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[b + "hook_resid_mid"], c[b + "hook_resid_pre"] + c[b + "hook_attn_out"])
        torch.testing.assert_close(c[b + "mlp.hook_post"], gelu(c[b + "mlp.hook_pre"]))
        torch.testing.assert_close(c[b + "hook_mlp_out"], blk.mlp(c[b + "ln2.hook_normalized"]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[b + "hook_resid_post"], c[b + "hook_resid_mid"] + c[b + "hook_mlp_out"])
        if i + 1 < n:
            assert torch.equal(c[b + "hook_resid_post"], c[f"blocks.{i + 1}.hook_resid_pre"])
    final = model.ln_final(c[f"blocks.{n - 1}.hook_resid_post"])
    torch.testing.assert_close(final, c["ln_final.hook_normalized"])
    torch.testing.assert_close(final @ model.unembed.W_U, logits, rtol=1e-5, atol=1e-4)


def test_patterns_are_causal_distributions(model, tokens):
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert len(cache) == model.cfg.n_layers
    pos = tokens.shape[1]
    future = torch.ones(pos, pos, dtype=torch.bool).triu(1)
    for pattern in cache.values():
        assert pattern.shape == (2, model.cfg.n_heads, pos, pos)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, pos))
        assert torch.all(pattern[..., future] == 0)
        assert torch.all(pattern[..., ~future] > 0)


def test_filtering_records_only_what_is_asked(model, tokens, monkeypatch):
    wanted = ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"]
    _, cache = model.run_with_cache(tokens, names=wanted)
    assert sorted(cache) == sorted(wanted)
    _, cache = model.run_with_cache(tokens, names=lambda n: n.startswith("blocks.0.attn."))
    assert sorted(cache) == sorted(f"blocks.0.attn.hook_{k}" for k in ("q", "k", "v", "attn_scores", "pattern", "z"))
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        model.run_with_cache(tokens, names=["blocks.9.hook_resid_post"])
    assert not any(h.recording for h in model.hook_points.values())

    # The plain attention path is taken only while a pattern or scores are recorded.
    calls = []
    plain = type(model.blocks[0].attn).attend
    monkeypatch.setattr(type(model.blocks[0].attn), "attend", lambda self, *a: calls.append(1) or plain(self, *a))
    model.run_with_cache(tokens, names=["blocks.1.hook_resid_post"])
    model(tokens)
    assert calls == []
    model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern"])
    assert len(calls) == 1


def test_cache_matches_transformers(cached_pair):
    hf, model, tokens = cached_pair
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True, output_attentions=True)
    logits, c = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    # hidden_states[i] enters block i; the last one is after the final LayerNorm.
    for i in range(n):
        torch.testing.assert_close(c[f"blocks.{i}.hook_resid_pre"], out.hidden_states[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.attn.hook_pattern"], out.attentions[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c["ln_final.hook_normalized"], out.hidden_states[n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, out.logits, rtol=1e-4, atol=1e-4)
