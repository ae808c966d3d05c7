"""The command line as a user meets it: subprocesses, JSON on the last line, one-line errors."""

import contextlib
import io
import json

import pytest
import torch

from conftest import assert_user_error, run_cli
from gpt2lab import cli
from gpt2lab.checkpoint import hf_config
from gpt2lab.model import GPTConfig

transformers = pytest.importorskip("transformers")

SONNET = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
          "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date.\n")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf")
    cfg = GPTConfig.from_preset("mini", n_layers=1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(folder)
    return folder, hf


def last_json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_for_every_subcommand():
    """Every registered command (and command group) answers --help, listed in gpt2lab --help."""
    names = [*cli.COMMANDS, *cli.GROUPS]
    assert {"tokenize", "tokenizer train", "eval", "export", "generate", "info", "train", "plot", "attention",
            "inspect"} <= set(names)
    top = run_cli("--help")
    assert top.returncode == 0 and all(name.split()[0] in top.stdout for name in names)
    for name in names:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
            cli.main([*name.split(), "--help"])
        assert exit.value.code == 0 and out.getvalue().startswith("usage: gpt2lab " + name), name


def test_tokenize_json(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Whether a word begins with a capital or space matters!")
    out = last_json(run_cli("tokenize", f, "--json"))
    assert out["tokens"] == [15354, 257, 1573, 6140, 351, 257, 3139, 393, 2272, 6067, 0]


def test_eval_on_a_hugging_face_directory_matches_transformers(hf_dir, tmp_path):
    folder, hf = hf_dir
    f = tmp_path / "sonnet.txt"
    f.write_text(SONNET)
    out = last_json(run_cli("eval", "--model", folder, "--text", f, "--json"))
    from gpt2lab.tokenizer import gpt2_tokenizer
    ids = [50256] + gpt2_tokenizer().encode(SONNET)
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert out["loss"] == pytest.approx(ref, rel=1e-5)
    assert out["tokens"] == len(ids) - 1 and out["bytes"] == len(SONNET.encode())
    assert out["perplexity"] == pytest.approx(torch.tensor(ref).exp().item(), rel=1e-5)
    assert set(out) >= {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}


def test_export_and_info_round_trip(hf_dir, tmp_path):
    folder, hf = hf_dir
    out = tmp_path / "exported"
    assert run_cli("export", "--model", folder, "--to", out).returncode == 0
    info = last_json(run_cli("info", "--model", out, "--json"))
    assert info["config"]["d_model"] == 256 and info["config"]["n_layers"] == 1
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    tokens = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert (again(tokens).logits - hf(tokens).logits).abs().max().item() <= 1e-5


def test_info_on_a_preset_reports_124M():
    info = last_json(run_cli("info", "--preset", "gpt2", "--json"))
    assert info["parameters"] == 124_439_808


def test_bad_inputs_are_one_line_errors(tmp_path, hf_dir):
    folder, _ = hf_dir
    text = tmp_path / "t.txt"
    text.write_text("hello")
    # wrong directory
    assert_user_error(run_cli("eval", "--model", tmp_path / "missing", "--text", text), "does not exist")
    assert_user_error(run_cli("eval", "--model", tmp_path, "--text", text), "neither")
    # truncated safetensors
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    data = (folder / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:1000])
    assert_user_error(run_cli("eval", "--model", broken, "--text", text), "safetensors")
    # config/weights shape mismatch
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_embd"] = 128
    (mismatch / "config.json").write_text(json.dumps(cfg))
    (mismatch / "model.safetensors").write_bytes(data)
    assert_user_error(run_cli("eval", "--model", mismatch, "--text", text), "shape")
    # unknown preset
    assert_user_error(run_cli("info", "--preset", "gpt5"), "unknown preset")
    # missing and non-UTF-8 text files
    assert_user_error(run_cli("tokenize", tmp_path / "nope.txt"), "does not exist")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\xff\xfe")
    assert_user_error(run_cli("tokenize", binary), "offset 3")
    # export never overwrites
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    assert_user_error(run_cli("export", "--model", folder, "--to", keep), "not empty")
    assert (keep / "precious.txt").read_text() == "mine"
