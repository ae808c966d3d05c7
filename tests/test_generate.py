"""Generation: the KV cache changes nothing but speed, batches change nothing
but speed, the sampling filters keep to their sets, and the CLI fails politely."""

import contextlib
import json
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error, run_cli
from gpt2lab.checkpoint import export_hf, save_model
from gpt2lab.errors import UserError
from gpt2lab.generate import (Generator, SamplingConfig, TextStream, choose_next, filter_top_k, filter_top_p,
                              generate_ids, model_in_dtype, sample)
from gpt2lab.hardware import cpu_has_native_bf16
from gpt2lab.model import GPT, GPTConfig, KVCache
from gpt2lab.tokenizer import gpt2_tokenizer

GREEDY = dict(greedy=True, stop_at_eot=False)


@pytest.fixture
def split_path(bmm_calls):
    """Generation as users run it: torch's default thread count, where the split
    matrix-vector product of ``model.matmul`` is in use.  Yields a check that it
    ran (it runs only with several threads)."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: the split path of model.matmul does not exist here")

    def check():
        assert bmm_calls, "generation should have taken the split path"

    yield check


def varied_model(d_vocab=512, **overrides) -> GPT:
    """A random `tiny` model whose greedy output is not one token repeated:
    with GPT-2's 0.02 init the logits are nearly flat and greedy loops at once."""
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", d_vocab=d_vocab, init_range=1.0, **overrides)).eval()


def run_ids(model, prompts, use_cache=True, **cfg) -> torch.Tensor:
    steps = generate_ids(model, prompts, SamplingConfig(**cfg), pad_id=0, use_cache=use_cache, seed=0)
    return torch.stack(list(steps), dim=1)  # (batch, new)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def naive_greedy(model, prompt, n_new):
    """The documented semantics, written as plainly as possible: full forward
    every step; when the context overflows, keep its last n_ctx // 2 tokens."""
    ctx, out, n_ctx = list(prompt), [], model.cfg.n_ctx
    with torch.no_grad():
        for _ in range(n_new):
            t = int(model(torch.tensor([ctx]))[0, -1].argmax())
            out.append(t)
            ctx.append(t)
            if len(ctx) > n_ctx:
                ctx = ctx[-(n_ctx // 2):]
    return out


@pytest.mark.parametrize("fast", [True, False])
def test_cached_greedy_equals_uncached_past_the_context(fast, split_path):
    model = varied_model()
    model.set_fast_attention(fast)
    n = 150  # past the 32-token context four times over
    cached = run_ids(model, [[1, 2, 3]], max_new_tokens=n, **GREEDY)[0]
    uncached = run_ids(model, [[1, 2, 3]], use_cache=False, max_new_tokens=n, **GREEDY)[0]
    split_path()
    assert len(set(cached.tolist())) > 10  # the test means something only if tokens vary
    assert cached.tolist() == uncached.tolist()
    with one_thread():  # the reference: plain products, as slow and simple as it gets
        assert cached.tolist() == naive_greedy(model, [1, 2, 3], n)


def test_batched_left_padded_prompts_equal_one_by_one(split_path):
    model = varied_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [1, 2], [7]]
    batch = run_ids(model, prompts, max_new_tokens=20, **GREEDY)  # stays within n_ctx=32
    assert len(set(batch.flatten().tolist())) > 10
    for i, p in enumerate(prompts):
        assert batch[i].tolist() == run_ids(model, [p], max_new_tokens=20, **GREEDY)[0].tolist()
    split_path()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_greedy_equals_transformers(tmp_path, threads, n_threads):
    """With 2 threads the model's split matrix-vector products run (see model.matmul)."""
    transformers = pytest.importorskip("transformers")
    threads(n_threads)
    model = varied_model(d_vocab=50257, n_ctx=64)
    export_hf(model, gpt2_tokenizer(), tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    prompt = [464, 3290, 318, 257]
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                           max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = run_ids(model, [prompt], max_new_tokens=40, **GREEDY)[0]
    assert ours.tolist() == want[0, 4:].tolist()
    # the repetition penalty follows the same rule (prompt tokens included)
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                           max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0,
                           repetition_penalty=1.5)
    penalised = run_ids(model, [prompt], max_new_tokens=40, repetition_penalty=1.5, **GREEDY)[0]
    assert penalised.tolist() == want[0, 4:].tolist() and penalised.tolist() != ours.tolist()


def controlled_logits():
    probs = torch.tensor([[0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02]])
    return probs.log()


def draws(cfg, n=4000):
    logits = controlled_logits().expand(n, -1)
    g = torch.Generator().manual_seed(0)
    return set(choose_next(logits, cfg, None, g).tolist())


def test_top_k_and_top_p_never_leave_their_sets():
    assert draws(SamplingConfig(top_k=3)) == {0, 1, 2}
    assert draws(SamplingConfig(top_k=1)) == {0}
    # nucleus 0.7: 0.40 + 0.25 = 0.65 < 0.7, so the third token (0.15) is needed, the fourth not
    assert draws(SamplingConfig(top_p=0.7)) == {0, 1, 2}
    assert draws(SamplingConfig(top_p=0.1)) == {0}
    assert draws(SamplingConfig(top_k=5, top_p=0.5)) == {0, 1}
    assert draws(SamplingConfig()) == set(range(7))
    assert torch.isinf(filter_top_k(controlled_logits(), 2)[0, 2:]).all()
    kept = torch.isfinite(filter_top_p(controlled_logits(), 0.85)[0])  # 0.40+0.25+0.15 = 0.8 < 0.85
    assert kept.tolist() == [True] * 4 + [False] * 3


def test_seed_temperature_and_penalty(split_path):
    model = varied_model()
    sample = dict(max_new_tokens=30, stop_at_eot=False, seed=7)
    a, b = run_ids(model, [[1, 2]], **sample), run_ids(model, [[1, 2]], **sample)
    assert torch.equal(a, b)
    other = generate_ids(model, [[1, 2]], SamplingConfig(**sample), pad_id=0, seed=8)
    assert torch.stack(list(other), 1).tolist() != a.tolist()
    greedy = run_ids(model, [[1, 2]], max_new_tokens=30, **GREEDY)
    cold = run_ids(model, [[1, 2]], max_new_tokens=30, stop_at_eot=False, temperature=1e-4)
    assert torch.equal(cold, greedy)
    penalised = run_ids(model, [[1, 2]], max_new_tokens=30, repetition_penalty=1e6, **GREEDY)[0].tolist()
    assert len(set(penalised)) == 30 and not {1, 2} & set(penalised)  # never repeats anything it saw
    split_path()


def test_stop_strings_and_streaming_bytes():
    text = "Hi 😀 世界 and more"
    ids = gpt2_tokenizer().encode(text)
    stream = TextStream(stop=["more"])
    pieces = [stream.push(gpt2_tokenizer().decode_bytes([t])) for t in ids] + [stream.finish()]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "Hi 😀 世界 and "  # the stop string and what follows are cut
    assert stream.stopped
    # a multi-byte character split across tokens is held back whole
    s = TextStream()
    assert s.push("😀".encode()[:2]) == "" and s.push("😀".encode()[2:]) == "😀"


def test_generator_api_stops_and_counts():
    model = varied_model(d_vocab=50257)
    gen = Generator(model, gpt2_tokenizer())
    out = gen.generate(["", "Hello"], max_new_tokens=12, num_samples=2, seed=3, stop_at_eot=False)
    assert len(out) == 4 and all(len(g.tokens) == 12 and g.finish_reason == "length" for g in out)
    assert out[0].text == gpt2_tokenizer().decode(out[0].tokens)
    first = out[0].text[:3]
    stopped = gen.generate("", max_new_tokens=12, seed=3, stop=[first[1:]], stop_at_eot=False)[0]
    assert stopped.finish_reason == "stop" and stopped.text == first[:1]
    alone = gen.generate("", max_new_tokens=12, seed=3, stop_at_eot=False)[0]
    assert "".join(gen.stream("", max_new_tokens=12, seed=3, stop_at_eot=False)) == alone.text


def test_bf16_greedy_agrees_with_fp32_on_most_tokens():
    """bf16 rounds the weights to 8 bits of mantissa: greedy output may change
    where two logits are within rounding, but not often.  Over 64 prompts:
    the next token after every position of the fp32 continuation (teacher
    forcing), and the first generated token."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", d_vocab=512, init_range=0.1)).eval()
    bf16 = model_in_dtype(model, "bf16")
    assert bf16.embed.W_E.dtype == torch.bfloat16 and model.embed.W_E.dtype == torch.float32
    prompts = torch.randint(0, 512, (64, 8), generator=torch.Generator().manual_seed(1)).tolist()
    fp32_ids = run_ids(model, prompts, max_new_tokens=16, **GREEDY)
    bf16_ids = run_ids(bf16, prompts, max_new_tokens=16, **GREEDY)
    assert len(fp32_ids.unique()) > 50  # not one token repeated: agreement means something
    assert (fp32_ids[:, 0] == bf16_ids[:, 0]).float().mean() >= 0.9
    seq = torch.cat([torch.tensor(prompts), fp32_ids], dim=1)
    with torch.inference_mode():
        same = model(seq).argmax(-1)[:, 7:] == bf16(seq).argmax(-1)[:, 7:]
    assert same.float().mean() >= 0.95


@pytest.mark.skipif(not cpu_has_native_bf16() or not torch.backends.mkldnn.is_available(),
                    reason="bf16 weights are packed for oneDNN only on CPUs with bf16 in hardware")
def test_bf16_decoding_reads_packed_weights_and_agrees_with_fp32(packed_calls):
    """On this CPU the bf16 copy's weights are packed for oneDNN (model.PackedWeights);
    decoding one position at a time, as generation does, reads them and still
    ranks fp32's token first at nearly every step."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", d_vocab=512, init_range=0.1)).eval()
    bf16 = model_in_dtype(model, "bf16")
    assert set(bf16.blocks[0].mlp.packed) == {"W_in", "W_out"} and not model.blocks[0].mlp.packed
    seq = torch.randint(0, 512, (8, 24), generator=torch.Generator().manual_seed(1))
    cache = KVCache(bf16.cfg, batch=8, dtype=torch.bfloat16)
    with torch.inference_mode():
        steps = [bf16(seq[:, i:i + 1], cache).argmax(-1) for i in range(seq.shape[1])]
        same = torch.cat(steps, dim=1) == model(seq).argmax(-1)
    assert len(packed_calls) == seq.shape[1] * (6 * bf16.cfg.n_layers + 1)  # every product of every step
    assert same.float().mean() >= 0.95


def test_bf16_copy_can_be_made_inside_inference_mode():
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 1))
    with torch.inference_mode():  # e.g. inside a caller's own generation loop
        bf16 = model_in_dtype(model, "bf16")
        logits = bf16(tokens).float()
        expected = model(tokens)
    assert not bf16.embed.W_E.is_inference()
    assert (logits - expected).abs().max() <= 0.05  # bf16 rounding


def test_bf16_weights_are_not_packed_without_bf16_in_hardware(monkeypatch):
    monkeypatch.setattr("gpt2lab.generate.cpu_has_native_bf16", lambda: False)
    bf16 = model_in_dtype(GPT(GPTConfig.from_preset("tiny")), "bf16")
    assert not bf16.blocks[0].mlp.packed and not bf16.unembed.packed


def test_generator_makes_its_bf16_copy_once():
    model = varied_model(d_vocab=50257)
    gen = Generator(model, gpt2_tokenizer())
    out = gen.generate("Hello", max_new_tokens=6, seed=3, dtype="bf16", stop_at_eot=False)[0]
    assert len(out.tokens) == 6 and gen.model_in("bf16") is gen.model_in("bf16")
    assert gen.model_in("fp32") is model and model.embed.W_E.dtype == torch.float32


def test_sample_is_the_short_form():
    model = varied_model()
    model.train()
    greedy = run_ids(model.eval(), [[1, 2]], max_new_tokens=40, **GREEDY)[0].tolist()
    model.train()
    assert sample(model, [1, 2], 40, temperature=0) == greedy
    assert model.training  # mode restored
    a = sample(model, [1, 2], 20, top_k=5, generator=torch.Generator().manual_seed(1))
    b = sample(model, [1, 2], 20, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 20


@pytest.mark.parametrize("field, value", [
    ("temperature", 0.0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0),
    ("num_samples", 0), ("num_samples", 65), ("max_new_tokens", 0), ("max_new_tokens", 100_001),
    ("repetition_penalty", 0.0), ("stop", ("",)), ("dtype", "fp16"),
])
def test_sampling_config_rejects_bad_values(field, value):
    with pytest.raises(UserError, match="--" + field.replace("_", "-")):  # the CLI flag, as the user typed it
        SamplingConfig(**{field: value})
    SamplingConfig(greedy=True, temperature=0.0)  # temperature is unused when greedy


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen") / "model"
    torch.manual_seed(0)
    save_model(GPT(GPTConfig.from_preset("tiny")), gpt2_tokenizer(), folder)
    return folder


def test_cli_generate_json_and_long_prompt(tiny_model_dir, tmp_path):
    long_prompt = tmp_path / "prompt.txt"
    long_prompt.write_text("word " * 100)
    proc = run_cli("generate", "--model", tiny_model_dir, "--prompt-file", long_prompt,
                   "--max-new-tokens", 5, "--seed", 1, "--stop-at-eot", "false", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["tokens"]) == 5 and result["tokens_per_sec"] > 0 and result["prompt_tokens"] == 32
    assert "keeping the last 32" in proc.stderr
    empty = run_cli("generate", "--model", tiny_model_dir, "--prompt", "", "--max-new-tokens", 3, "--greedy",
                    "--dtype", "bf16", "--json")
    assert empty.returncode == 0, empty.stderr
    assert len(json.loads(empty.stdout.strip().splitlines()[-1])["tokens"]) <= 3


@pytest.mark.parametrize("flags, fragment", [
    (["--temperature", "0"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--num-samples", "0"], "--num-samples"),
])
def test_cli_generate_bad_input(tiny_model_dir, flags, fragment):
    assert_user_error(run_cli("generate", "--model", tiny_model_dir, *flags), fragment)


def test_cli_generate_missing_model(tmp_path):
    assert_user_error(run_cli("generate", "--model", tmp_path / "nope", "--prompt", "hi"), "does not exist")


@pytest.fixture(scope="module")
def varied_model_dir(tmp_path_factory):
    """A saved model whose greedy text varies, with GPT-2's tokenizer."""
    folder = tmp_path_factory.mktemp("gen") / "varied"
    save_model(varied_model(d_vocab=50257), gpt2_tokenizer(), folder)
    return folder


def cli_json(*args):
    proc = run_cli("generate", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_num_samples_gives_different_samples_and_repetition_penalty_applies(varied_model_dir):
    model, tok = varied_model(d_vocab=50257), gpt2_tokenizer()
    gen = Generator(model, tok)
    out = cli_json("--model", varied_model_dir, "--prompt", "Hello", "--num-samples", 4, "--seed", 5,
                   "--max-new-tokens", 12, "--stop-at-eot", "false", "--json")
    texts = [s["text"] for s in out["samples"]]
    assert len(texts) == 4 and len(set(texts)) == 4, texts
    assert texts == [g.text for g in gen.generate("Hello", max_new_tokens=12, num_samples=4, seed=5,
                                                 stop_at_eot=False)]  # the seed makes them reproducible
    plain = dict(max_new_tokens=20, greedy=True, stop_at_eot=False)
    flags = ["--max-new-tokens", 20, "--greedy", "--stop-at-eot", "false", "--json"]
    penalised = cli_json("--model", varied_model_dir, "--prompt", "Hello", "--repetition-penalty", 1.5, *flags)
    want = gen.generate("Hello", repetition_penalty=1.5, **plain)[0].tokens
    assert penalised["tokens"] == want != gen.generate("Hello", **plain)[0].tokens


def test_cli_interactive_through_a_terminal(varied_model_dir):
    """``generate --interactive`` as a person uses it: a pseudo-terminal, one
    prompt per line, Ctrl-D to end."""
    import os
    import pty
    import select
    import subprocess
    import sys

    from conftest import ROOT

    gen = Generator(varied_model(d_vocab=50257), gpt2_tokenizer())
    want = {p: gen.generate(p, max_new_tokens=8, greedy=True, stop_at_eot=False)[0].text for p in ("Hello", "The king")}
    assert want["Hello"] != want["The king"]
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "generate", "--model", str(varied_model_dir),
                             "--interactive", "--greedy", "--max-new-tokens", "8", "--stop-at-eot", "false"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(predicate, timeout=120):
        nonlocal seen
        deadline = time.time() + timeout
        while not predicate(seen.decode("utf-8", "replace")) and time.time() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
        return seen.decode("utf-8", "replace")

    try:
        read_until(lambda s: "> " in s)
        for n, prompt in enumerate(("Hello", "The king"), 1):
            os.write(master, prompt.encode() + b"\n")
            text = read_until(lambda s: s.count("tokens/s") >= n)
            assert want[prompt] in text.replace("\r\n", "\n"), text
        os.write(master, b"\x04")  # Ctrl-D: end of input
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(master)
