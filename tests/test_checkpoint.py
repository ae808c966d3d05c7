"""Weights in and out: gpt2lab checkpoints and Hugging Face GPT-2 directories."""

import pickle

import pytest
import torch

from conftest import random_hf_model

from gpt2lab.checkpoint import (export_hf, gpt2lab_to_hf, hf_config, hf_to_gpt2lab, load_model, save_model,
                                write_json)
from gpt2lab.errors import UserError
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.tokenizer import gpt2_tokenizer


def trained_like_model(preset="tiny", seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # move away from the initialisation
    return model


def logits_err(model, hf, n=20):
    tokens = torch.randint(0, model.cfg.d_vocab, (2, n))
    with torch.no_grad():
        return (model(tokens) - hf(tokens).logits).abs().max().item()


def test_export_then_transformers_from_pretrained_gives_the_same_logits(tmp_path):
    model = trained_like_model()
    export_hf(model, gpt2_tokenizer(), tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert logits_err(model, hf) <= 1e-5


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_directory_loads_into_gpt2lab_with_the_same_logits(tmp_path, fmt):
    cfg, hf = random_hf_model()
    if fmt == "safetensors":
        hf.save_pretrained(tmp_path)
    else:  # the older pickle-based format (read with weights_only=True)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        write_json(tmp_path / "config.json", hf_config(cfg))
    model, tok = load_model(tmp_path)
    assert tok.n_vocab == 50257
    assert logits_err(model, hf) <= 1e-5


def test_hf_weights_without_the_transformer_prefix_load(tmp_path):
    cfg, hf = random_hf_model()
    from safetensors.torch import save_file
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    write_json(tmp_path / "config.json", hf_config(cfg))
    model, _ = load_model(tmp_path)
    assert logits_err(model, hf) <= 1e-5


def test_state_dict_conversion_round_trips_exactly():
    model = trained_like_model()
    back = hf_to_gpt2lab(gpt2lab_to_hf(model), model.cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_gpt2lab_checkpoint_round_trip(tmp_path):
    model = trained_like_model()
    save_model(model, gpt2_tokenizer(), tmp_path / "ckpt")
    loaded, tok = load_model(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg and tok is gpt2_tokenizer()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_run_directory_resolves_to_its_latest_checkpoint(tmp_path):
    a, b = trained_like_model(seed=1), trained_like_model(seed=2)
    save_model(a, gpt2_tokenizer(), tmp_path / "checkpoints" / "step_00000010")
    save_model(b, gpt2_tokenizer(), tmp_path / "checkpoints" / "step_00000020")
    loaded, _ = load_model(tmp_path)
    assert torch.equal(loaded.embed.W_E, b.embed.W_E)


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="neither"):
        load_model(tmp_path)


def test_truncated_safetensors_is_a_user_error(tmp_path):
    model = trained_like_model()
    export_hf(model, gpt2_tokenizer(), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_model(tmp_path)


def test_config_weights_shape_mismatch_names_the_tensor(tmp_path):
    model = trained_like_model()
    export_hf(model, gpt2_tokenizer(), tmp_path)
    cfg = hf_config(model.cfg)
    cfg["n_positions"] = cfg["n_ctx"] = 64  # the weights have 32 positions
    write_json(tmp_path / "config.json", cfg)
    with pytest.raises(UserError, match="pos_embed.W_pos has shape"):
        load_model(tmp_path)


def test_missing_tensor_is_reported_not_silently_skipped(tmp_path):
    from safetensors.torch import load_file, save_file
    model = trained_like_model()
    export_hf(model, gpt2_tokenizer(), tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.9.extra"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=r"missing blocks\.1\.mlp\.b_in.*unexpected"):
        load_model(tmp_path)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, hf = random_hf_model()
    (tmp_path / "m").mkdir()
    write_json(tmp_path / "m" / "config.json", hf_config(cfg))
    sd = dict(hf.state_dict())
    sd["evil"] = _Evil()
    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as f:
        pickle.dump(sd, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_model(tmp_path / "m")
    assert not (tmp_path / "PWNED").exists()


def test_export_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        export_hf(trained_like_model(), gpt2_tokenizer(), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
