"""Corpora and token shards: the embedded plays, other sources, caching."""

import json

import numpy as np
import pytest

from gpt2lab import data
from gpt2lab.errors import UserError
from gpt2lab.tokenizer import gpt2_tokenizer

from conftest import assert_user_error, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPT2LAB_CACHE", str(folder))
    return folder


def test_play_normalisation_gives_speakers_and_verse():
    md = (data.plays_dir() / "tragedies" / "macbeth.md").read_text(encoding="utf-8")
    text = data.play_to_text(md)
    assert text.startswith("ACT I\n\nSCENE I. A desert place.\n\nFirst Witch:\nWhen shall we three meet again\n")
    assert "**" not in text and "_" not in text and "\\" not in text and "[" not in text
    assert "Enter" not in text.split("\n\n")[2]  # stage directions dropped
    assert "\nMACBETH:\n" in text
    # A speech interrupted by a stage direction continues under the same speaker.
    assert "Go get him surgeons.\nWho comes here?" in text


def test_every_play_normalises_cleanly():
    for path in data.play_files():
        text = data.play_to_text(path.read_text(encoding="utf-8"))
        assert "**" not in text and "\\[" not in text, path
        assert text.count(":\n") > 100, path  # many speeches


def test_validation_plays_are_disjoint_from_training():
    stems = {p.stem for p in data.play_files()}
    assert set(data.VALIDATION_PLAYS) <= stems
    train = list(data.shakespeare_documents("train"))
    val = list(data.shakespeare_documents("val"))
    assert len(val) == len(data.VALIDATION_PLAYS) and len(train) == len(stems) - len(val)
    assert not set(train) & set(val)
    assert not any("HAMLET:" in t for t in train) and any("HAMLET:" in t for t in val)


def test_validation_bytes_of_the_embedded_corpus_are_the_four_whole_plays(cache):
    """val_bpb divides by the UTF-8 bytes of the validation split: for the embedded corpus, the four
    held-out plays, whole (Hamlet, The Tempest, Julius Caesar, Twelfth Night), as normalised text."""
    tok = gpt2_tokenizer()
    shards = data.prepare_tokens(data.parse_source("shakespeare"), tok, progress=False)
    assert sorted(shards.header["val_documents"]) == sorted(["hamlet", "the-tempest", "julius-caesar",
                                                            "twelfth-night"])
    plays = [data.play_to_text(path.read_text(encoding="utf-8")) for path in data.play_files()
             if path.stem in shards.header["val_documents"]]  # in the corpus's order
    assert all(len(p) > 50_000 for p in plays)  # whole plays, not excerpts
    assert shards.header["val_bytes"] == sum(len(p.encode("utf-8")) for p in plays)
    val = [int(t) for t in shards.val]
    assert val.count(tok.eot_token) == 4 and val[-1] == tok.eot_token  # one <|endoftext|> after each play
    assert tok.decode_bytes([t for t in val if t != tok.eot_token]) == "".join(plays).encode("utf-8")
    assert shards.val_bytes_per_token == shards.header["val_bytes"] / len(val)


def test_shards_round_trip_and_are_reused(tmp_path, cache):
    docs = ["First document.\nWith two lines.", "Second one, café ünïcode.", "Third"]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs), encoding="utf-8")
    tok = gpt2_tokenizer()
    shards = data.prepare_tokens(data.parse_source(str(src), text_field="body"), tok, val_fraction=0.2,
                                 progress=False)
    assert shards.header["dtype"] == "uint16" and shards.tokens.dtype == np.uint16
    assert tok.decode(shards.tokens.tolist()) == "<|endoftext|>".join(docs) + "<|endoftext|>"
    assert shards.header["n_documents"] == 3 and shards.header["tokenizer"] == {"kind": "gpt2"}
    assert len(shards.train) + len(shards.val) == shards.header["n_tokens"]
    stamp = (shards.folder / "tokens.bin").stat().st_mtime_ns
    again = data.prepare_tokens(data.parse_source(str(src), text_field="body"), tok, val_fraction=0.2,
                                progress=False)
    assert again.folder == shards.folder and (again.folder / "tokens.bin").stat().st_mtime_ns == stamp
    src.write_text(json.dumps({"body": "changed"}) + "\n", encoding="utf-8")
    changed = data.prepare_tokens(data.parse_source(str(src), text_field="body"), tok, 0.2, progress=False)
    assert changed.folder != shards.folder


def test_a_big_text_file_streamed_in_pieces_is_still_one_document(tmp_path, cache, monkeypatch):
    streamed = data.iter_text_file
    monkeypatch.setattr(data, "iter_text_file", lambda path: streamed(path, chunk_bytes=64))
    lines = [f"Line {i}: now is the winter of our discontent." for i in range(40)]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("   \n\n", encoding="utf-8")  # whitespace only: no document
    (tmp_path / "c.txt").write_text("Made glorious summer.", encoding="utf-8")
    assert len(list(data.iter_pieces(data.parse_source(str(tmp_path / "a.txt"))))) > 10
    tok = gpt2_tokenizer()
    shards = data.prepare_tokens(data.parse_source(str(tmp_path)), tok, val_fraction=0.1, progress=False)
    ids = shards.tokens.tolist()
    assert ids.count(tok.eot_token) == 2 and shards.header["n_documents"] == 2
    assert tok.decode(ids) == "\n".join(lines) + "\n<|endoftext|>Made glorious summer.<|endoftext|>"


def test_uint32_for_big_vocabularies():
    assert data.token_dtype(50257) == np.uint16 and data.token_dtype(100_000) == np.uint32


def test_text_dir_and_parquet_sources(tmp_path, cache):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha text", encoding="utf-8")
    (tmp_path / "d" / "b.md").write_text("beta text", encoding="utf-8")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00\x01")
    assert list(data.iter_documents(data.parse_source(str(tmp_path / "d")))) == ["alpha text", "beta text"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "t.parquet")
    assert list(data.iter_documents(data.parse_source(str(tmp_path / "t.parquet")))) == ["one", "two"]
    big = tmp_path / "big.txt"
    big.write_text("line of text\n" * 200_000, encoding="utf-8")
    pieces = list(data.iter_text_file(big, chunk_bytes=1 << 16))
    assert len(pieces) > 10 and "".join(pieces) == big.read_text(encoding="utf-8")


def test_bad_sources_are_user_errors(tmp_path, cache):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(UserError, match=r"bad.txt.*offset 6"):
        list(data.iter_documents(data.parse_source(str(bad))))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\x00def")
    with pytest.raises(UserError, match="binary"):
        list(data.iter_documents(data.parse_source(str(binary))))
    with pytest.raises(UserError, match="does not exist"):
        data.parse_source(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        data.prepare_tokens(data.parse_source(str(empty)), gpt2_tokenizer(), progress=False)
    js = tmp_path / "x.jsonl"
    js.write_text('{"content": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="text-field"):
        list(data.iter_documents(data.parse_source(str(js))))


def test_hf_dataset_from_local_disk(tmp_path, cache):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"story": ["Once upon a time.", "The end."]}).save_to_disk(str(folder))
    src = data.parse_source(f"hf:{folder}", text_field="story")
    assert list(data.iter_documents(src)) == ["Once upon a time.", "The end."]
    shards = data.prepare_tokens(src, gpt2_tokenizer(), val_fraction=0.3, progress=False)
    assert shards.header["n_documents"] == 2
    # The same code through datasets.load_dataset: a local folder of JSON lines as the "name".
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert list(data.iter_documents(data.parse_source(f"hf:{tmp_path / 'hub'}"))) == ["a", "b"]
    with pytest.raises(UserError, match="no split"):
        list(data.iter_documents(data.parse_source(f"hf:{tmp_path / 'hub'}", hf_split="nope")))


def test_hf_offline_uncached_is_one_line_error(tmp_path):
    pytest.importorskip("datasets")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "GPT2LAB_CACHE": str(tmp_path / "cache")}
    proc = run_cli("train", "--data", "hf:nobody/no-such-dataset-xyz", "--out", tmp_path / "run",
                   "--progress", "false", env=env)
    assert_user_error(proc, "no-such-dataset-xyz", "offline")


def test_cli_trains_on_a_hugging_face_dataset_with_text_field_and_split(tmp_path, cache):
    """``--data hf:DIR --text-field F --hf-split S`` through ``gpt2lab train``: a dataset saved with
    ``save_to_disk`` (the real loading code, offline), whose text is in column ``body`` of split
    ``valid``; the other split and column hold characters that must never reach the tokenizer."""
    datasets = pytest.importorskip("datasets")
    line = "the king is dead long live the queen\n"
    ds = datasets.DatasetDict({
        "valid": datasets.Dataset.from_dict({"body": [line * 20] * 30, "title": ["XYZ"] * 30}),
        "train": datasets.Dataset.from_dict({"body": ["QQQ!"] * 30, "title": ["XYZ"] * 30}),
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    run = tmp_path / "run"
    proc = run_cli("train", "--data", f"hf:{tmp_path / 'ds'}", "--text-field", "body", "--hf-split", "valid",
                   "--tokenizer", "char", "--preset", "tiny", "--n-ctx", "16", "--batch-size", "2", "--max-steps", "1",
                   "--eval-batches", "1", "--sample-tokens", "0", "--progress", "false", "--out", run,
                   env={"GPT2LAB_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["text_field"] == "body" and saved["data"]["hf_split"] == "valid"
    assert saved["tokenizer"]["chars"] == "".join(sorted(set(line)))  # from split valid, column body only
    assert_user_error(run_cli("train", "--data", f"hf:{tmp_path / 'ds'}", "--hf-split", "test", "--out",
                              tmp_path / "r2", env={"GPT2LAB_CACHE": str(cache)}), "no split 'test'", "--hf-split")
