"""The GPT-2 tokenizer against an independent reference: Hugging Face's
``GPT2Tokenizer`` (built on the ``tokenizers`` library) reading the very same ``encoder.json`` and ``vocab.bpe``."""

import json
import random

import pytest

from gpt2lab.tokenizer import EOT, bytes_to_unicode, gpt2_files_dir, gpt2_tokenizer, load_tokenizer, TokenizerError

transformers = pytest.importorskip("transformers")

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
]


@pytest.fixture(scope="module")
def reference():
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


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(text):
    tok = gpt2_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_random_unicode_round_trips():
    rng = random.Random(0)
    tok = gpt2_tokenizer()
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
