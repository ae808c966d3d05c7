"""Muon: the Newton-Schulz orthogonalisation against an SVD, which parameters
it takes, and its update's size."""

import pytest
import torch

from gpt2lab import recipe
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.muon import Muon, Optimizers, as_matrix, orthogonalize


@pytest.mark.parametrize("shape", [(64, 192), (192, 64), (96, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_is_close_to_u_v_transpose(shape, dtype):
    torch.manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k))[0]
    vh = torch.linalg.qr(torch.randn(shape[1], k))[0].T
    m = u @ torch.diag(torch.logspace(-1, 1, k)) @ vh  # singular values over 2 decades
    o = orthogonalize(m, dtype=dtype)
    assert o.shape == m.shape and o.dtype == m.dtype
    s = torch.linalg.svdvals(o.double())
    # five steps bring every singular value into a band around 1, not onto it (by design: muon.py)
    assert 0.5 < s.min() and s.max() < 1.3, (s.min(), s.max())
    cosine = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cosine > 0.95
    assert (orthogonalize(m, steps=0) * (u @ vh)).sum() / (m.norm() * (u @ vh).norm()) < cosine - 0.2


def test_block_weights_are_maps_from_their_input():
    d, h, e = 32, 4, 8
    assert as_matrix("blocks.0.attn.W_Q", torch.empty(d, h, e)).shape == (d, h * e)
    assert as_matrix("blocks.0.attn.W_O", torch.empty(h, e, d)).shape == (h * e, d)
    assert as_matrix("blocks.0.mlp.W_in", torch.empty(d, 4 * d)).shape == (d, 4 * d)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig.from_preset("tiny"))
    opt = recipe.make_optimizer(model, recipe.TrainConfig(optimizer="muon"))
    assert isinstance(opt, Optimizers)
    muon = {id(p) for g in opt.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.optimizers["adamw"].param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon | adamw == set(names) and not muon & adamw
    assert sorted({names[i].rsplit(".", 1)[-1] for i in muon}) == sorted(recipe.BLOCK_MATRICES)
    assert all(".b_" in names[i] or names[i].startswith(("embed", "pos_embed", "ln")) or ".ln" in names[i]
               for i in adamw)


def test_muon_update_has_the_rms_of_an_adamw_update_and_decays():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 256))
    before = w.detach().clone()
    opt = Muon([{"params": [w], "names": ["mlp.W_in"]}], lr=0.1, momentum=0.0, weight_decay=0.5)
    w.grad = torch.randn(64, 256)
    opt.step()
    update = (w.detach() - before * (1 - 0.1 * 0.5)) / -0.1
    assert update.pow(2).mean().sqrt() == pytest.approx(0.2, rel=0.25)


def test_a_stack_is_orthogonalised_matrix_by_matrix():
    torch.manual_seed(1)
    stack = torch.randn(3, 32, 96)
    together = orthogonalize(stack)
    for m, o in zip(stack, together):
        torch.testing.assert_close(o, orthogonalize(m), rtol=1e-4, atol=1e-5)
