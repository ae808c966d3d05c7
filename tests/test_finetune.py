"""Fine-tuning (``train --init-from``) and freezing (``--train-only``): the
base model's step-0 score against transformers, export of the result,
cropping the context, frozen tensors that stay put, and resuming after kill -9."""

import json

import pytest
import torch
import torch.nn.functional as F

from gpt2lab import train as T
from gpt2lab.checkpoint import latest_checkpoint, load_model, read_model, weights_sha256
from gpt2lab.data import fable_documents, parse_source, prepare_tokens
from gpt2lab.finetune import FINETUNE_DEFAULTS, freeze, start_from, trains
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.runs import STATE_FILE
from gpt2lab.tokenizer import gpt2_tokenizer

from conftest import assert_same_run, kill_9_after, random_hf_model, run_cli

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("token_cache")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A GPT-2 (the tiny preset's shape, random weights) saved by transformers itself."""
    cfg, hf = random_hf_model("tiny", seed=1)
    folder = tmp_path_factory.mktemp("hf-gpt2")
    hf.save_pretrained(folder)
    return folder


def finetune_cfg(corpus, out, parent, **kw):
    base = dict(data=str(corpus), out=str(out), init_from=str(parent), batch_size=4, max_steps=4, eval_every=2,
                eval_batches=2, checkpoint_every=2, sample_tokens=0, progress=False, seed=5)
    return T.TrainConfig(**{**FINETUNE_DEFAULTS, **base, **kw})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def quiet(*a, **k):
    pass


def test_step_0_is_the_base_model_on_the_new_text_then_export_loads_in_transformers(corpus, hf_dir, tmp_path):
    out = tmp_path / "ft"
    result = T.train(finetune_cfg(corpus, out, hf_dir), log=quiet)
    first = rows(out)[0]
    assert first["step"] == 0 and first["tokens"] == 0 and "loss" not in first  # no update yet
    # transformers' loss on the very windows the evaluation used
    cfg = T.TrainConfig(data=str(corpus))
    val = prepare_tokens(parse_source(str(corpus)), gpt2_tokenizer(), cfg.val_fraction, progress=False).val
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    starts = T.eval_starts(len(val), hf.config.n_positions, 2 * 4)
    with torch.no_grad():
        batch_losses = [F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
                        for x, y in (T.get_batch(val, s, hf.config.n_positions, "cpu") for s in starts.split(4))]
    expected = sum(batch_losses) / len(batch_losses)
    assert first["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result.metrics["val_loss"] < first["val_loss"]  # it learned the new text
    # the parent is recorded: path and a hash of the weights it started from
    parent = json.loads((out / "config.json").read_text())["init_from"]
    assert parent["path"] == str(hf_dir) and parent["sha256"] == weights_sha256(read_model(hf_dir)[1])
    # the result goes back to transformers with the same logits
    exported = run_cli("export", "--model", out, "--to", tmp_path / "hf-out")
    assert exported.returncode == 0, exported.stderr
    ours, _ = load_model(out)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf-out").eval()
    tokens = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.embed.W_E, read_model(hf_dir)[1]["embed.W_E"])  # it did train


def test_cropping_the_context_keeps_the_first_positions_logits(hf_dir):
    full, _ = load_model(hf_dir)  # n_ctx 32
    cropped, _, parent = start_from(hf_dir, {"n_ctx": 12})
    cropped.eval()
    assert cropped.cfg.n_ctx == 12 and cropped.pos_embed.W_pos.shape == (12, 64) and parent.n_ctx == 32
    tokens = torch.randint(0, 50257, (3, 32))
    with torch.no_grad():
        assert torch.equal(cropped(tokens[:, :12]), full(tokens[:, :12]))
        # a causal model's first 12 positions do not see the rest of a longer text
        torch.testing.assert_close(cropped(tokens[:, :12]), full(tokens)[:, :12], rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="exceeds n_ctx=12"):
            cropped(tokens[:, :13])


@pytest.mark.parametrize("choice, frozen, trained", [
    ("no-embeddings", ["embed.W_E", "pos_embed.W_pos"], ["blocks.0.attn.W_Q", "blocks.1.mlp.W_out", "ln_final.w"]),
    ("last-1", ["embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.ln1.b"],
     ["blocks.1.attn.W_Q", "blocks.1.mlp.b_in", "ln_final.b"]),
])
def test_frozen_tensors_stay_bit_identical_and_get_no_adamw_state(corpus, hf_dir, tmp_path, choice, frozen, trained):
    _, before, _, _ = read_model(hf_dir)
    out = tmp_path / choice
    T.train(finetune_cfg(corpus, out, hf_dir, train_only=choice, lr=1e-2), log=quiet)
    after, _ = load_model(out)
    after = after.state_dict()
    for name in after:  # every tensor, not only the named ones
        assert torch.equal(after[name], before[name]) != trains(name, choice, 2), name
    assert {*frozen, *trained} <= set(after)
    state = torch.load(latest_checkpoint(out) / STATE_FILE, weights_only=True)["optimizer"]
    n_trained = sum(trains(name, choice, 2) for name in after)
    assert len(state["state"]) == n_trained < len(after)  # AdamW moments only for what trains
    assert sum(len(group["params"]) for group in state["param_groups"]) == n_trained  # frozen ones not even listed


def test_freeze_counts_what_trains():
    model = GPT(GPTConfig.from_preset("gpt2"))
    total = model.num_params()
    assert freeze(model, "all") == total == 124_439_808
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert freeze(model, "no-embeddings") == total - 50257 * 768 - 1024 * 768 == blocks + 2 * 768
    assert freeze(model, "last-2") == sum(p.numel() for p in model.blocks[10:].parameters()) + 2 * 768
    assert not model.embed.W_E.requires_grad and model.blocks[11].mlp.W_in.requires_grad
    assert not model.blocks[9].mlp.W_in.requires_grad


def test_the_fables_corpus_holds_out_whole_fables():
    train, val = list(fable_documents("train")), list(fable_documents("val"))
    assert len(train) + len(val) == 60 and len(val) == 6
    assert not set(train) & set(val)
    assert all(doc.split("\n")[0].startswith("The ") for doc in train + val)  # each opens with its title
    assert not any("Shakespeare" in doc or "Hamlet" in doc for doc in train + val)


@pytest.mark.slow
def test_a_finetuning_run_killed_with_sigkill_resumes_to_the_same_losses(corpus, hf_dir, tmp_path):
    """As ``test_train``'s kill -9 test, on a run started from a Hugging Face directory, at the default thread count."""
    args = ["--init-from", str(hf_dir), "--data", str(corpus), "--n-ctx", "16", "--batch-size", "4",
            "--max-steps", "10", "--eval-every", "4", "--eval-batches", "1", "--checkpoint-every", "2",
            "--sample-tokens", "0", "--progress", "false", "--seed", "9", "--dropout", "0.1"]
    full = run_cli("train", "--out", tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    assert "training 3,317,568 of 3,317,568 parameters (--train-only all)" in full.stdout, full.stdout
    assert kill_9_after(["train", "--out", tmp_path / "cut", *args], tmp_path / "cut" / "metrics.jsonl", 6)
    assert latest_checkpoint(tmp_path / "cut") is not None
    resumed = run_cli("train", "--resume", tmp_path / "cut", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "cut", tmp_path / "full")  # every metrics row, step 0 included, and every tensor
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["init_from"]["path"] == str(hf_dir) and config["model"]["n_ctx"] == 16
