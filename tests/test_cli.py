"""The command line as a user meets it: subprocesses, JSON on the last line, one-line errors."""

import contextlib
import io
import json
import re

import pytest
import torch

from conftest import assert_user_error, run_cli
from gpt2lab import cli
from gpt2lab.checkpoint import hf_config
from gpt2lab.model import GPTConfig

SONNET = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
          "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date.\n")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf")
    cfg = GPTConfig.from_preset("mini", n_layers=1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(folder)
    return folder, hf


def run_main(argv: list[str]) -> tuple[int, str]:
    """``gpt2lab ARGV`` in this process (the console script's function): (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # --help exits
            code = e.code
    return code, out.getvalue()


def last_json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def subcommands(prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command line ``gpt2lab PREFIX X`` that ``gpt2lab PREFIX --help``
    lists, and theirs in turn: read from the help the user sees, so that a new
    subcommand is covered without touching this test."""
    code, out = run_main([*prefix, "--help"])
    assert code == 0, out
    found = []
    positional = out.split("positional arguments:\n")[1].split("\n\n")[0] if "positional arguments:" in out else ""
    for name in re.findall(r"^    ([a-z][\w-]*)(?:  |$)", positional, re.M):  # a subcommand, indented under COMMAND
        found.append((*prefix, name))
        found += subcommands((*prefix, name))
    return found


def test_help_for_every_subcommand():
    commands = subcommands()
    assert {("train",), ("generate",), ("tokenizer", "train"), ("plot",)} <= set(commands), commands
    for cmd in commands:
        code, out = run_main([*cmd, "--help"])
        assert code == 0 and out.startswith("usage: gpt2lab " + " ".join(cmd)), (cmd, out)
        assert "--help" in out or "-h" in out


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
    import transformers

    folder, hf = hf_dir
    out = tmp_path / "exported"
    assert last_json(run_cli("export", "--model", folder, "--to", out, "--json")) == {"exported": str(out)}
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
