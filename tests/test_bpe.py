"""BPE training: the teaching and the fast trainer learn the same merges."""

import json
import random
from collections import Counter

import pytest
from conftest import assert_user_error, run_cli

from gpt2lab.bpe import (BPEConfig, count_chunks, encode_and_show_work, ranks_from_merges, train_merges_fast,
                         train_merges_simple)
from gpt2lab.data import shakespeare_documents
from gpt2lab.tokenizer import EOT, TokenizerError, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def excerpt():
    return next(shakespeare_documents("train"))[:20_000]


def random_text(seed: int, n: int = 3000) -> str:
    """Text drawn from a tiny alphabet, so that many pairs tie and runs like
    ``aaaa`` (overlapping pairs) are common; with multi-byte characters,
    Unicode whitespace and a character of the range the fast trainer uses
    to show bytes to ``tokenizers`` (U+0100 on)."""
    rng = random.Random(seed)
    return "".join(rng.choice("aab b\n\t.é日\x85\xa0Ā") for _ in range(n))


def test_simple_and_fast_learn_the_same_merges_on_shakespeare(excerpt):
    chunks = count_chunks([excerpt])
    simple = train_merges_simple(chunks, 420)
    assert len(simple) >= 420 - 256  # it did learn something
    assert train_merges_fast(chunks, 420) == simple


@pytest.mark.parametrize("seed", range(4))
def test_simple_and_fast_agree_on_tie_heavy_text(seed):
    chunks = count_chunks([random_text(seed)])
    assert train_merges_fast(chunks, 330) == train_merges_simple(chunks, 330)


def test_ties_go_to_the_oldest_symbols():
    # every pair occurs once: bytes are aged in byte order, so ' ' (0x20) < 'a' < 'x'
    chunks = count_chunks(["xy ab"])
    for train in (train_merges_simple, train_merges_fast):
        assert train(chunks, 257)[0] == (b" ", b"a")


def test_a_tie_goes_to_a_byte_over_a_symbol_just_learned():
    # after (c, d), the pairs (cd, a) and (z, a) both occur twice: z is a byte, older than
    # cd, though b"cd" < b"z" as byte strings
    chunks = Counter({b"cda": 2, b"za": 2, b"cd": 5})
    for train in (train_merges_simple, train_merges_fast):
        assert train(chunks, 258) == [(b"c", b"d"), (b"z", b"a")]


def test_most_frequent_pair_is_merged_first():
    chunks = Counter({b"xy": 1, b"ab": 5, b"abab": 2})
    counts = {(b"a", b"b"): 5 + 4, (b"x", b"y"): 1, (b"b", b"a"): 2}
    best = max(counts, key=counts.get)
    for train in (train_merges_simple, train_merges_fast):
        assert train(chunks, 257)[0] == best


def test_trained_vocab_has_the_requested_size_and_eot_last(excerpt):
    tok = train_bpe([excerpt], BPEConfig(vocab_size=300))
    assert tok.n_vocab == 300 and tok.eot_token == 299
    assert sorted(tok.ranks.values()) == list(range(299))
    assert tok.encode(EOT) == [299]


def test_simple_impl_gives_the_same_tokenizer_as_fast(excerpt):
    fast = train_bpe([excerpt], BPEConfig(vocab_size=300, impl="fast"))
    simple = train_bpe([excerpt], BPEConfig(vocab_size=300, impl="simple"))
    assert fast.ranks == simple.ranks


def test_endoftext_is_a_separator_never_learned():
    chunks = count_chunks([f"hello{EOT}world{EOT}" * 5])
    assert not any(b"endoftext" in c or b"<|" in c for c in chunks)


def test_repeated_spelling_gets_one_rank():
    ranks = ranks_from_merges([(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"a", b"bc")])
    assert ranks[b"abc"] == 257 and ranks[b"bc"] == 258 and len(ranks) == 259


def test_custom_pattern_changes_the_chunks():
    assert set(count_chunks(["ab cd"], pattern=r"\S")) == {b"a", b"b", b"c", b"d"}


def test_show_work_ends_at_tiktokens_encoding(excerpt):
    tok = train_bpe([excerpt], BPEConfig(vocab_size=400))
    for word in [" thane", " Theseus", " unsexed", " 123", " Hippolyta"]:
        steps = encode_and_show_work(word.encode(), tok.ranks)
        assert steps[0] == [bytes([b]) for b in word.encode()]
        assert all(len(b) == len(a) - 1 for a, b in zip(steps, steps[1:]))  # one merge per step
        assert steps[-1] == [tok.token_bytes(i) for i in tok.encode(word)]


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(vocab_size=256), "at least 257"),
    (dict(impl="quick"), "unknown bpe implementation"),
    (dict(pattern="(unclosed"), "bad pre-tokenization pattern"),
])
def test_bad_config_is_refused(kwargs, fragment):
    with pytest.raises(TokenizerError, match=fragment.split()[0]):
        BPEConfig(**kwargs)


def test_empty_corpus_is_refused():
    with pytest.raises(TokenizerError, match="empty"):
        train_bpe(["", ""], BPEConfig(vocab_size=300))


def test_cli_trains_saves_and_reloads(tmp_path, excerpt):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(excerpt, encoding="utf-8")
    out = tmp_path / "gpt2.json"  # a trained BPE, whatever its file is called
    proc = run_cli("tokenizer", "train", "--data", corpus, "--vocab-size", 300, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n_vocab"] == 300
    expected = train_bpe([excerpt], BPEConfig(vocab_size=300))
    assert load_tokenizer(str(out)).encode(excerpt[:2000]) == expected.encode(excerpt[:2000])
    again = run_cli("tokenizer", "train", "--data", corpus, "--vocab-size", 300, "--out", out)
    assert_user_error(again, "already exists", "--overwrite")


@pytest.mark.parametrize("args, fragment", [
    (["--vocab-size", "100"], "at least 257"),
    (["--pattern", "(x"], "pattern"),
])
def test_cli_bad_flags(tmp_path, args, fragment):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text", encoding="utf-8")
    proc = run_cli("tokenizer", "train", "--data", corpus, "--out", tmp_path / "t.json", *args)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "t.json").exists()


def test_cli_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    proc = run_cli("tokenizer", "train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "t.json")
    assert_user_error(proc, "empty")


def test_cli_directory_without_text(tmp_path):
    proc = run_cli("tokenizer", "train", "--data", tmp_path, "--out", tmp_path / "t.json")
    assert_user_error(proc, "no .txt or .md")


def test_the_teaching_bpe_stands_alone():
    """bpe.py imports no tokenizer code (tokenizer.py builds on it), so it reads on its own."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    code = "import sys, gpt2lab.bpe; print(sorted(m for m in sys.modules if m.startswith('gpt2lab.')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": os.path.join(ROOT, "src")})
    assert proc.stdout.strip() == "['gpt2lab.bpe', 'gpt2lab.errors']"
