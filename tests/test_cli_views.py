"""``gpt2lab attention`` and ``gpt2lab inspect``, run as a user would."""

import json

import matplotlib.image
import pytest
import torch

from conftest import assert_user_error, run_cli
from gpt2lab.checkpoint import load_model, save_model
from gpt2lab.evaluate import score_text
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.tokenizer import gpt2_tokenizer

TEXT = "To be, or not to be: that is the question."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(5)
    save_model(GPT(GPTConfig.from_preset("tiny")), gpt2_tokenizer(), folder)
    return folder


def test_attention_writes_one_panel_per_chosen_head(model_dir, tmp_path):
    out = tmp_path / "att.png"
    proc = run_cli("attention", "--model", model_dir, "--text", TEXT, "--layer", "1", "--head", "2",
                   "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["layers"] == [1] and info["heads"] == [2]
    assert info["tokens"][0] == "<|endoftext|>" and "".join(info["tokens"][1:]) == TEXT
    assert matplotlib.image.imread(out).ndim == 3
    before = out.read_bytes()
    assert_user_error(run_cli("attention", "--model", model_dir, "--text", TEXT, "--out", out),
                      "already exists", "--overwrite")
    assert out.read_bytes() == before
    assert_user_error(run_cli("attention", "--model", model_dir, "--text", TEXT, "--layer", "2",
                              "--out", tmp_path / "b.png"), "--layer 2", "0 to 1")
    assert not (tmp_path / "b.png").exists()


def test_inspect_json_table_and_image(model_dir, tmp_path):
    out = tmp_path / "tokens.png"
    proc = run_cli("inspect", "--model", model_dir, "--text", TEXT, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    model, tok = load_model(model_dir)
    assert [t["id"] for t in info["tokens"]] == tok.encode(TEXT)
    assert info["mean_loss"] == pytest.approx(score_text(model, tok, TEXT).loss, rel=1e-5)
    for t in info["tokens"]:
        probs = [p["prob"] for p in t["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert matplotlib.image.imread(out).ndim == 3

    table = run_cli("inspect", "--model", model_dir, "--text", TEXT, "--out", tmp_path / "t2.png")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(info["tokens"])
    assert f"{info['tokens'][3]['loss']:.3f}" in rows[3]


def test_inspect_empty_text_is_a_one_line_error(model_dir, tmp_path):
    assert_user_error(run_cli("inspect", "--model", model_dir, "--text", "", "--out", tmp_path / "e.png"), "empty")
    assert not (tmp_path / "e.png").exists()
