"""Scoring text: the sliding window and agreement with transformers."""

import math

import pytest
import torch

from gpt2lab.evaluate import attention_patterns, bits_per_byte, inspect_text, score_text, windows
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.tokenizer import gpt2_tokenizer


@pytest.mark.parametrize("n,ctx", [(1, 8), (8, 8), (9, 8), (100, 8), (101, 7), (50, 1), (1000, 256)])
def test_windows_score_every_target_once_with_half_a_context_of_history(n, ctx):
    seen = []
    for start, end, first in windows(n, ctx):
        assert end - start <= ctx
        assert start <= first < end
        for t in range(first, end):
            seen.append(t)
            if first > 0:  # after the first window
                assert t - start + 1 >= ctx // 2  # positions of history including the input itself
    assert seen == list(range(n))


def test_short_text_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    tok = gpt2_tokenizer()
    text = "To be, or not to be"
    ids = tok.encode(text)
    seq = torch.tensor([[tok.eot_token] + ids])
    with torch.no_grad():
        logp = model(seq[:, :-1]).log_softmax(-1)[0]
    expected = -logp[torch.arange(len(ids)), seq[0, 1:]].mean().item()
    score = score_text(model, tok, text)
    assert score.loss == pytest.approx(expected, rel=1e-6)
    assert score.tokens == len(ids) and score.bytes == len(text.encode())
    assert score.perplexity == pytest.approx(math.exp(expected), rel=1e-6)
    assert score.bits_per_byte == pytest.approx(expected * len(ids) / len(text.encode()) / math.log(2), rel=1e-6)


def plain_sliding_losses(model, seq: list[int], n_ctx: int) -> list[float]:
    """The documented scoring, written as a plain loop with one forward pass per token: the
    first n_ctx tokens see everything before them; after that the context jumps forward by
    n_ctx - n_ctx // 2 tokens at a time, so that each token keeps at least n_ctx // 2 positions
    of history and never more than n_ctx."""
    half, out = n_ctx // 2, []
    with torch.no_grad():
        for t in range(1, len(seq)):  # predict seq[t] from what precedes it
            if t <= n_ctx:
                start = 0
            else:
                first_scored = n_ctx + ((t - 1 - n_ctx) // (n_ctx - half)) * (n_ctx - half)  # of its window
                start = first_scored - half
            logits = model(torch.tensor([seq[start:t]]))[0, -1]
            out.append(-logits.log_softmax(-1)[seq[t]].item())
            assert 1 <= t - start <= n_ctx and (t <= n_ctx or t - start > half)
    return out


@pytest.mark.parametrize("n_ctx", [8, 9])
def test_long_text_is_scored_like_a_plain_loop_over_windows(n_ctx):
    """A text about eight contexts long: every token scored once, with the history the README promises."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_ctx=n_ctx, init_range=0.5)).eval()  # peaky: history matters
    tok = gpt2_tokenizer()
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 4
    ids = tok.encode(text)
    assert len(ids) > 7 * n_ctx
    want = plain_sliding_losses(model, [tok.eot_token] + ids, n_ctx)
    views = inspect_text(model, tok, text)
    assert [v.loss for v in views] == pytest.approx(want, rel=1e-4, abs=1e-5)
    score = score_text(model, tok, text)
    assert score.tokens == len(ids) and score.loss == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_bits_per_byte_units():
    assert bits_per_byte(math.log(2) * 80, 10) == pytest.approx(8.0)


TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = GPT(GPTConfig.from_preset("tiny", n_ctx=16))  # short context: long texts need several windows
    with torch.no_grad():
        m.embed.W_E.mul_(20.0)  # peakier predictions than a fresh init, so the top-5 differ visibly
    return m.eval()


def test_per_token_losses_average_to_score_text(model):
    tok = gpt2_tokenizer()
    for text in ("To be", TEXT):  # one window, then several (TEXT is longer than n_ctx)
        views = inspect_text(model, tok, text)
        assert [v.id for v in views] == tok.encode(text)
        assert "".join(v.token for v in views) == text
        mean = sum(v.loss for v in views) / len(views)
        assert mean == pytest.approx(score_text(model, tok, text).loss, rel=1e-6)
    assert len(tok.encode(TEXT)) > model.cfg.n_ctx


def test_top5_is_the_models_distribution_sorted(model):
    tok = gpt2_tokenizer()
    views = inspect_text(model, tok, "To be, or not")
    ids = [tok.eot_token] + tok.encode("To be, or not")
    with torch.no_grad():
        probs = model(torch.tensor([ids[:-1]]))[0].softmax(-1)  # (pos, d_vocab)
    for i, v in enumerate(views):
        p = [q for _, q in v.top]
        assert len(p) == 5 and p == sorted(p, reverse=True) and sum(p) <= 1.0 + 1e-6
        assert p[0] == pytest.approx(probs[i].max().item(), rel=1e-5)
        assert v.top[0][0] == tok.decode([int(probs[i].argmax())])
        assert v.loss == pytest.approx(-math.log(probs[i, ids[i + 1]].item()), rel=1e-4)


def test_attention_patterns_and_bad_text(model):
    tok = gpt2_tokenizer()
    tokens, patterns = attention_patterns(model, tok, "To be, or not")
    assert tokens[0] == "<|endoftext|>" and "".join(tokens[1:]) == "To be, or not"
    n = len(tokens)
    assert patterns.shape == (model.cfg.n_layers, model.cfg.n_heads, n, n)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]))
    with pytest.raises(ValueError, match="at most 16"):
        attention_patterns(model, tok, TEXT)
    with pytest.raises(ValueError, match="empty"):
        attention_patterns(model, tok, "")
    with pytest.raises(ValueError, match="empty"):
        inspect_text(model, tok, "")
