"""Tokenizers.  GPT-2's against an independent reference: Hugging Face's
``GPT2Tokenizer`` (built on the ``tokenizers`` library) reading the very same
``encoder.json`` and ``vocab.bpe``.  Every kind (gpt2, trained BPE, char):
exact round trips, save/load, Hugging Face export, errors."""

import json
import random

import pytest

from conftest import assert_user_error, run_cli

from gpt2lab.bpe import BPEConfig
from gpt2lab.tokenizer import (EOT, CharTokenizer, TokenizerError, build_tokenizer, bytes_to_unicode, gpt2_files_dir,
                               gpt2_tokenizer, hf_tokenizer, load_tokenizer, token_pieces, train_bpe)

TEXTS = [
    "Whether a word begins with a capital or space matters!",
    "Ralph ralph  RALPH Ralph's",
    "café naïve façade Ελληνικά русский язык",
    "日本語のテキストと中文文本，还有한국어.",
    "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️",
    "def f(x):\n\treturn x**2  # square\n\n\n    indented\t\ttabs",
    "numbers 1234567890 3.14159 1,000,000 2026-11-25",
    "I'm you're he'll we've they'd she's it'd DON'T",
    "   leading and trailing spaces   ",
    "first document<|endoftext|>second document",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "",
    "\n\n\n",
    "a\u00a0non-breaking\u2009thin space and \u200bzero width",
    "combining: e\u0301 a\u0308, RTL: שלום عربى, CRLF\r\n\r\nend",
]

CORPUS = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def kinds():
    """One tokenizer of each kind; the BPE and char ones built from a corpus
    that lacks most of TEXTS' characters, so byte fallback is exercised."""
    return {"gpt2": gpt2_tokenizer(),
            "bpe": train_bpe([CORPUS], BPEConfig(vocab_size=300)),
            "char": CharTokenizer.from_texts([CORPUS])}


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    folder = gpt2_files_dir()
    vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


def test_known_ids():
    assert gpt2_tokenizer().encode("Whether a word begins with a capital or space matters!") == \
        [15354, 257, 1573, 6140, 351, 257, 3139, 393, 2272, 6067, 0]


def test_vocabulary_size_and_end_of_text():
    tok = gpt2_tokenizer()
    assert tok.n_vocab == 50257
    assert tok.eot_token == 50256
    assert tok.encode(EOT) == [50256]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_the_reference(reference, text):
    assert gpt2_tokenizer().encode(text) == reference.encode(text)


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(kinds, kind, text):
    tok = kinds[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_random_unicode_round_trips(kinds, kind):
    rng = random.Random(0)
    tok = kinds[kind]
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF), (0x9, 0xD)]
    for _ in range(200):
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 40)))
        assert tok.decode(tok.encode(text)) == text


def test_decode_bytes_can_split_a_character():
    tok = gpt2_tokenizer()
    ids = tok.encode("👍")
    assert len(ids) > 1  # one emoji, several byte tokens
    assert b"".join(tok.decode_bytes([i]) for i in ids) == "👍".encode()


def test_batch_encoding_equals_one_by_one():
    tok = gpt2_tokenizer()
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_byte_mapping_is_a_bijection_over_all_bytes():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ"


def test_load_tokenizer_by_name_and_description():
    assert load_tokenizer("gpt2") is gpt2_tokenizer()
    assert load_tokenizer({"kind": "gpt2"}) is gpt2_tokenizer()


@pytest.mark.parametrize("spec", ["no-such-tokenizer", {"kind": "mystery"}])
def test_unknown_tokenizer_is_a_clear_error(spec):
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer(spec)


def test_corrupt_tokenizer_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read tokenizer file"):
        load_tokenizer(str(bad))


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_endoftext_is_one_special_token(kinds, kind):
    tok = kinds[kind]
    assert tok.eot_token == tok.n_vocab - 1
    ids = tok.encode(f"a{EOT}b")
    assert ids.count(tok.eot_token) == 1


def test_char_vocabulary_and_byte_fallback():
    tok = CharTokenizer.from_texts(["hello", "world"])
    chars = sorted(set("helloworld"))
    assert tok.chars == chars and tok.n_vocab == len(chars) + 256 + 1
    assert tok.encode("hold") == [chars.index(c) for c in "hold"]
    # unseen characters become their UTF-8 bytes, one token each
    assert tok.encode("é") == [tok.byte_base + b for b in "é".encode()]
    assert tok.encode("Z") == [tok.byte_base + ord("Z")]


def test_char_from_empty_corpus_is_refused():
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_texts(["", EOT])


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_saved_tokenizer_reloads_to_identical_ids(kinds, kind, tmp_path):
    tok = kinds[kind]
    path = tmp_path / "tok.json"
    tok.save(path)
    again = load_tokenizer(str(path))
    text = "".join(TEXTS)
    assert again.encode(text) == tok.encode(text)
    assert again.n_vocab == tok.n_vocab and again.eot_token == tok.eot_token
    with pytest.raises(TokenizerError, match="already exists"):
        tok.save(path)


def test_build_tokenizer_reads_the_corpus_only_for_char():
    def boom():
        raise AssertionError("the corpus was read for a tokenizer that does not need it")
    assert build_tokenizer("gpt2", boom) is gpt2_tokenizer()
    char = build_tokenizer("char", lambda: ["abc", "cd"])
    assert char.chars == ["a", "b", "c", "d"]
    with pytest.raises(TokenizerError, match="corpus"):
        build_tokenizer("char", None)


@pytest.mark.parametrize("content, fragment", [
    ('{"kind": "wordpiece"}', "unknown tokenizer kind"),
    ('{"kind": "bpe", "ranks": [[[97], 0], [[97], 1]]}', "corrupt"),
    ('{"kind": "bpe"}', "corrupt"),
    ('{"kind": "char", "chars": 5}', "corrupt"),
])
def test_corrupt_tokenizer_file(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=fragment):
        load_tokenizer(str(path))


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_token_pieces_rebuild_the_text(kinds, kind):
    tok = kinds[kind]
    text = "".join(TEXTS)
    ids = tok.encode(text)
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert len(pieces) <= len(ids)


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_hf_tokenizer_gives_the_same_ids(kinds, kind, tmp_path):
    PreTrainedTokenizerFast = pytest.importorskip("transformers").PreTrainedTokenizerFast

    tok = kinds[kind]
    hf_tokenizer(tok).save(str(tmp_path / "tokenizer.json"))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in TEXTS + [CORPUS]:
        ids = tok.encode(text)
        assert hf(text)["input_ids"] == ids, text
        assert hf.decode(ids) == text


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_export_writes_a_tokenizer_that_autotokenizer_loads(kinds, kind, tmp_path):
    AutoTokenizer = pytest.importorskip("transformers").AutoTokenizer

    from gpt2lab.checkpoint import export_hf
    from gpt2lab.model import GPT, GPTConfig

    tok = kinds[kind]
    model = GPT(GPTConfig(d_vocab=tok.n_vocab, n_ctx=16, d_model=8, n_heads=2, n_layers=1))
    export_hf(model, tok, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "".join(TEXTS)
    assert hf(text)["input_ids"] == tok.encode(text)
    assert hf.eos_token_id == tok.eot_token


# --- the command line -------------------------------------------------------


def test_cli_tokenize_show_marks_boundaries(tmp_path):
    text = "Héllo wörld 👩‍👩‍👧!"
    (tmp_path / "x.txt").write_text(text, encoding="utf-8")
    for spec in ("gpt2", "char"):
        proc = run_cli("tokenize", tmp_path / "x.txt", "--tokenizer", spec, "--show")
        assert proc.returncode == 0, proc.stderr
        shown = proc.stdout.rstrip("\n")
        assert "\x1b[" not in shown  # not a terminal: plain markers
        assert shown.replace("|", "") == text
        assert shown.count("|") >= len(text.split()) - 1  # at least the word boundaries


def test_show_tokens_colours_alternate():
    from gpt2lab.cli import show_tokens

    out = show_tokens(["ab", "c", "d"], color=True)
    assert out.count("\x1b[0m") == 3
    codes = [part.split("m")[0] for part in out.split("\x1b[48;5;")[1:]]
    assert codes[0] != codes[1] and codes[1] != codes[2]


@pytest.mark.parametrize("spec, content, fragment", [
    ("gpt5", None, "unknown tokenizer"),
    ("bad.json", "{oops", "cannot read tokenizer file"),
])
def test_cli_tokenize_bad_tokenizer(tmp_path, spec, content, fragment):
    (tmp_path / "x.txt").write_text("hi", encoding="utf-8")
    if content is not None:
        (tmp_path / spec).write_text(content, encoding="utf-8")
    proc = run_cli("tokenize", tmp_path / "x.txt", "--tokenizer", spec, cwd=tmp_path)
    assert_user_error(proc, fragment)


def test_bpe_spec_trains_on_the_given_texts_deterministically():
    from gpt2lab.tokenizer import build_tokenizer
    texts = ["To be, or not to be, that is the question. " * 20, "Whether 'tis nobler in the mind to suffer. " * 20]
    a = build_tokenizer("bpe:300", lambda: iter(texts))
    b = build_tokenizer("bpe:300", lambda: iter(texts))
    assert 257 < a.n_vocab <= 300 and a.to_dict() == b.to_dict()
    assert len(a.encode(texts[0])) < len(texts[0].encode()) / 2  # merges learned from these texts
    assert a.decode(a.encode("unseen text: ünïcødé")) == "unseen text: ünïcødé"


@pytest.mark.parametrize("spec", ["bpe:x", "bpe:10"])
def test_bad_bpe_spec_is_a_clear_error(spec):
    from gpt2lab.tokenizer import build_tokenizer
    with pytest.raises(TokenizerError, match="bpe"):
        build_tokenizer(spec, lambda: iter(["some text"]))


def test_cli_tokenizer_train_impl_simple_and_fast_write_the_same_tokenizer(tmp_path):
    """``tokenizer train --impl simple`` (the teaching trainer) and ``--impl fast`` learn the same merges."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    for impl in ("simple", "fast"):
        proc = run_cli("tokenizer", "train", "--data", corpus, "--vocab-size", 300, "--impl", impl,
                       "--out", tmp_path / f"{impl}.json", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1])["n_vocab"] == 300
    simple, fast = (json.loads((tmp_path / f"{impl}.json").read_text()) for impl in ("simple", "fast"))
    assert simple == fast and simple == train_bpe([CORPUS], BPEConfig(vocab_size=300)).to_dict()
    assert_user_error(run_cli("tokenizer", "train", "--data", corpus, "--impl", "quick", "--out",
                              tmp_path / "q.json"), "unknown BPE implementation", "fast, simple")
