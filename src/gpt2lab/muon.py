"""Muon: momentum, orthogonalised, for the weight matrices inside the blocks.

AdamW scales each gradient entry by its own running size.  Muon (Keller
Jordan, 2024, the optimizer of the modded-nanogpt speedruns on GPT-2) treats
a weight matrix as a whole: it keeps a momentum of the gradient, then
replaces that matrix ``M = U S V^T`` by its nearest orthogonal matrix
``U V^T``, so that every direction the gradient points in moves by the same
amount, not just the few large ones that dominate a raw gradient.

``U V^T`` is not computed with an SVD (slow, and hard on a GPU) but with five
steps of a Newton-Schulz iteration, matrix products only, whose quintic
pushes every singular value of ``M / |M|`` towards 1 (to about 0.7-1.2,
which is all an update needs).

Muon is only for the 2-D maps inside the blocks (W_Q, W_K, W_V, W_O, W_in,
W_out).  The embeddings, biases and LayerNorm parameters keep AdamW: an
embedding row is a lookup, not a map, and a vector has no directions to
balance.  ``Optimizers`` steps both as one optimizer.

The update is scaled to the size of an AdamW update (root mean square 0.2,
as in Moonshot's "Muon is scalable", 2025), so Muon shares the run's
``--lr``, schedule and weight decay with AdamW.  The model does not change:
it is still GPT-2, trained differently.
"""

from __future__ import annotations

import torch

# The quintic's coefficients (from modded-nanogpt): chosen so that five steps
# take any singular value in (0, 1] close to 1 quickly, not exactly.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(m: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The nearest orthogonal matrix ``U V^T`` to ``m = U S V^T``, approximately.
    ``m``: (rows, cols), or a stack of same-shape matrices (stack, rows, cols)."""
    a, b, c = NS_COEFFICIENTS
    x = m.to(dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # every singular value now at most 1
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # iterate on the smaller Gram matrix x x^T
    for _ in range(steps):
        gram = x @ x.mT  # (..., rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x  # x <- p(x x^T) x, odd polynomial in the singular values
    return (x if wide else x.mT).to(m.dtype)


def as_matrix(name: str, p: torch.Tensor) -> torch.Tensor:
    """The 2-D map a block's weight is: W_Q, W_K, W_V (d_model, heads, d_head)
    map d_model -> heads*d_head; W_O (heads, d_head, d_model) the other way."""
    if name.endswith("W_O"):
        return p.reshape(-1, p.size(-1))
    return p.reshape(p.size(0), -1)


class Muon(torch.optim.Optimizer):
    """Orthogonalised Nesterov momentum for weight matrices.

    Each parameter's update is ``orthogonalize(nesterov momentum)``, scaled to
    an RMS of 0.2 (``0.2 * sqrt(max(rows, cols))``), with decoupled weight decay
    as in AdamW.  ``matmul_dtype``: the Newton-Schulz products' dtype (bf16 where
    the hardware has it; the weights and momentum stay fp32)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5, matmul_dtype: str = "float32"):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps,
                        matmul_dtype=matmul_dtype)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}  # matrices of one shape are orthogonalised together, as one stack
            for p, name in zip(group["params"], group["names"]):
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                m = as_matrix(name, p.grad.lerp(buf, group["momentum"]))  # Nesterov: look ahead along the momentum
                tall = m.size(0) > m.size(1)
                m = m.mT if tall else m  # (rows <= cols); orthogonalising m^T gives the transpose
                by_shape.setdefault(tuple(m.shape), []).append((p, m, tall))
            for shape, items in by_shape.items():
                updates = orthogonalize(torch.stack([m for _, m, _ in items]), group["ns_steps"],
                                        getattr(torch, group["matmul_dtype"]))
                for (p, _, tall), update in zip(items, updates):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_((update.mT if tall else update).reshape(p.shape),
                           alpha=-group["lr"] * 0.2 * max(shape) ** 0.5)


class Optimizers:
    """Several optimizers, each over its own parameters, stepped as one: what
    the training loop sees (``param_groups``, ``step``, ``zero_grad``, a
    ``state_dict`` for checkpoints)."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
