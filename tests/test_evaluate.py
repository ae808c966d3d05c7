"""Scoring text: the sliding window and agreement with transformers."""

import math

import pytest
import torch

from gpt2lab.evaluate import bits_per_byte, score_text, windows
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


def test_long_text_uses_windows_within_the_context():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()  # n_ctx 32
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 10
    score = score_text(model, gpt2_tokenizer(), text)
    assert score.tokens > 100 and math.isfinite(score.loss)


def test_bits_per_byte_units():
    assert bits_per_byte(math.log(2) * 80, 10) == pytest.approx(8.0)
