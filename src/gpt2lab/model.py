"""GPT-2, written from scratch as a chapter you can read top to bottom.

A GPT-2 turns a sequence of token ids into, at every position, a score (a
*logit*) for every token of the vocabulary being the next one.  It does so
in four movements:

1. **Embed**: look up a vector for each token and add a vector for each
   position.  This sum starts the *residual stream*, a `(batch, pos, d_model)`
   tensor that every later layer reads from and adds to.
2. **Blocks**: `n_layers` identical blocks.  Each one normalises the stream
   (LayerNorm), lets positions exchange information (causal self-attention),
   adds the result back, then normalises again and transforms each position
   on its own (an MLP), adding that back too.  GPT-2 normalises *before*
   each sub-layer ("pre-LN"), which keeps deep stacks trainable.
3. **Final LayerNorm**.
4. **Unembed**: multiply by the token embedding matrix, transposed.  Input
   and output share that matrix ("tied embeddings"), which is why GPT-2
   small has 124M parameters rather than 163M.

Parameters are laid out as ``(in, out)`` matrices, the layout of OpenAI's
checkpoints and of Hugging Face's ``Conv1D``, so real GPT-2 weights load
without any transposing (see ``checkpoint.py``).

Wherever there is a fast way to compute something, the plain way sits right
beside it and ``tests/test_model.py`` proves the two agree:

* attention: a plain path that builds the full attention pattern (good for
  learning and for plots) and a fast path through PyTorch's fused
  ``scaled_dot_product_attention``;
* generation: a :class:`KVCache` so that each new token costs one position of
  compute instead of re-running the whole sequence;
* the loss: a chunked output layer + cross-entropy that never materialises
  the full ``(batch, pos, d_vocab)`` logits tensor;
* matrix products with only a few rows (generation's one new position per
  sequence), spread over every CPU core by :func:`matmul`, and in bf16 read
  from weights packed in oneDNN's own layout (:meth:`GPT.pack_weights`).

Looking inside: the activation cache
------------------------------------

Every interesting intermediate tensor passes through a :class:`HookPoint`,
an identity layer that can record what flows through it.
``GPT.run_with_cache(tokens)`` returns the logits and a dict of those
recordings, named by where the hook sits in the module tree (``L`` is a
layer number; shapes are for ``tokens`` of shape ``(batch, pos)``):

===================================  ==============================  ==========================================
name                                 shape                           what it is
===================================  ==============================  ==========================================
``hook_embed``                       (batch, pos, d_model)           token embeddings ``W_E[tokens]``
``hook_pos_embed``                   (pos, d_model)                  position embeddings ``W_pos[positions]``
``blocks.L.hook_resid_pre``          (batch, pos, d_model)           residual stream entering block L
``blocks.L.ln1.hook_scale``          (batch, pos, 1)                 LayerNorm's divisor ``sqrt(var + eps)``
``blocks.L.ln1.hook_normalized``     (batch, pos, d_model)           LayerNorm output (after ``w``, ``b``)
``blocks.L.attn.hook_q``             (batch, n_heads, pos, d_head)   queries (``hook_k``, ``hook_v`` alike)
``blocks.L.attn.hook_attn_scores``   (batch, n_heads, pos, pos)      ``q.k / sqrt(d_head)``, future = -inf
``blocks.L.attn.hook_pattern``       (batch, n_heads, pos, pos)      softmax of the scores; rows sum to 1
``blocks.L.attn.hook_z``             (batch, n_heads, pos, d_head)   pattern-weighted values, per head
``blocks.L.hook_attn_out``           (batch, pos, d_model)           what attention adds to the stream
``blocks.L.hook_resid_mid``          (batch, pos, d_model)           stream between attention and MLP
``blocks.L.ln2.hook_scale``          (batch, pos, 1)                 as for ``ln1``
``blocks.L.ln2.hook_normalized``     (batch, pos, d_model)           as for ``ln1``
``blocks.L.mlp.hook_pre``            (batch, pos, d_mlp)             MLP hidden layer before GELU
``blocks.L.mlp.hook_post``           (batch, pos, d_mlp)             after GELU
``blocks.L.hook_mlp_out``            (batch, pos, d_model)           what the MLP adds to the stream
``blocks.L.hook_resid_post``         (batch, pos, d_model)           residual stream leaving block L
``ln_final.hook_scale``              (batch, pos, 1)                 final LayerNorm's divisor
``ln_final.hook_normalized``         (batch, pos, d_model)           final LayerNorm output, fed to unembed
===================================  ==============================  ==========================================

A hook that is not recording costs one attribute test, so training pays
nothing for them.  The fused kernels do not expose the LayerNorm scale or
the attention scores and pattern, so while one of those hooks records, its
layer takes the plain path instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The shape of a GPT-2.  Names follow the classic clean-transformer
    walkthrough so that what you read there maps one to one onto this code.

    ``d_head`` and ``d_mlp`` may be left as ``None``: they are then derived
    as ``d_model // n_heads`` and ``4 * d_model``, GPT-2's own ratios.
    """

    d_vocab: int = 50257  # number of distinct tokens
    n_ctx: int = 1024  # longest sequence the model can see (learned positions)
    d_model: int = 768  # width of the residual stream
    n_heads: int = 12  # attention heads per layer
    d_head: int | None = None  # width of one head's queries, keys and values
    d_mlp: int | None = None  # width of the MLP's hidden layer
    n_layers: int = 12  # number of transformer blocks
    layer_norm_eps: float = 1e-5
    init_range: float = 0.02  # std of the normal initialisation
    dropout: float = 0.0  # one rate for embeddings, attention and residual outputs

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"model config: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        for name in ("d_head", "d_mlp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.d_head * self.n_heads != self.d_model:
            raise ValueError(
                f"model config: d_model ({self.d_model}) must equal n_heads ({self.n_heads}) "
                f"x d_head ({self.d_head}); set d_head to {self.d_model // self.n_heads} or change n_heads"
            )
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"model config: dropout must be in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"model config: layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if not self.init_range > 0:
            raise ValueError(f"model config: init_range must be positive, got {self.init_range!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named preset with some fields changed.  Derived widths are
        re-derived unless given, so ``from_preset("mini", d_model=128)`` works."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        fields = dict(PRESETS[name])
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Presets by name.  The four GPT-2 sizes are OpenAI's; `mini` is the classic
# walkthrough's demo model; `tiny` is small enough for tests to run in seconds.
# All use GPT-2's vocabulary and derive d_head and d_mlp (d_model / n_heads, 4 x d_model).
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layers=12, d_model=768, n_heads=12, n_ctx=1024),
    "gpt2-medium": dict(n_layers=24, d_model=1024, n_heads=16, n_ctx=1024),
    "gpt2-large": dict(n_layers=36, d_model=1280, n_heads=20, n_ctx=1024),
    "gpt2-xl": dict(n_layers=48, d_model=1600, n_heads=25, n_ctx=1024),
    "mini": dict(n_layers=2, d_model=256, n_heads=4, n_ctx=256),  # 4 heads of 64, MLP 1024
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, n_ctx=32),  # 4 heads of 16, MLP 256
}


# ---------------------------------------------------------------------------
# Hook points: named places where activations can be recorded
# ---------------------------------------------------------------------------


class HookPoint(nn.Module):
    """An identity layer that, while ``store`` is a dict, records a detached
    copy of what passes through it under its ``name``.

    ``GPT`` names every hook after its place in the module tree (for example
    ``blocks.0.attn.hook_pattern``); :meth:`GPT.run_with_cache` switches the
    chosen ones on for one forward pass and off again."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None
        self.store: dict | None = None

    @property
    def recording(self) -> bool:
        return self.store is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.store is not None:
            self.store[self.name] = x.detach()
        return x


# ---------------------------------------------------------------------------
# One matrix product, with a fast path for generation
# ---------------------------------------------------------------------------

FEW_ROWS = 8  # at most this many rows of x take the fast paths of `matmul` and `Unembed`


def generation_shaped(x: torch.Tensor) -> bool:
    """True for a few rows on a CPU without gradients: generation's one new
    position per sequence, where a product is limited by reading the weights."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and x.numel() // x.shape[-1] <= FEW_ROWS


def weight_state(W: torch.Tensor) -> tuple:
    """Which memory ``W`` reads, and a counter of the in-place changes made there
    (views share their base's counter; an optimizer step bumps it)."""
    return W.data_ptr(), W._version, W.dtype, W.device


class Packed(NamedTuple):
    weight: torch.Tensor  # W^T in oneDNN's blocked layout: opaque, read only by its own product
    source: tuple  # weight_state(W) when it was packed

    def copies(self, W: torch.Tensor) -> bool:
        """True while ``W`` is unchanged since it was packed."""
        return self.source == weight_state(W)


class PackedWeights(dict):
    """Weight matrices copied into oneDNN's blocked layout, by name (``"W_in"``).

    In bf16, PyTorch's CPU product of one row by a weight matrix reads the
    weights at about half the speed of its fp32 one, so halving the bytes made
    generation slower.  oneDNN, the library under PyTorch's CPU kernels, has
    a fast bf16 kernel for it, but it wants the weights in its own blocked
    layout, an opaque tensor only its own product reads.  The packs are a
    cache of the weights: a copy of the model (``copy.deepcopy``) or a pickle
    starts without them."""

    def __deepcopy__(self, memo) -> "PackedWeights":
        return PackedWeights()

    def __reduce__(self):
        return PackedWeights, ()

    def pack(self, name: str, W: torch.Tensor) -> None:
        """Pack ``W`` (d_in, d_out) as ``name``."""
        self[name] = Packed(torch.ops.mkldnn._reorder_linear_weight(W.T, 1), weight_state(W))


def matmul(x: torch.Tensor, W: torch.Tensor, packed: Packed | None = None) -> torch.Tensor:
    """``x @ W`` for a weight matrix ``W`` of shape ``(d_in, d_out)``.

    In training ``x`` has thousands of rows and the plain product keeps every
    core busy.  In generation it has one row per sequence: a matrix-vector
    product, whose speed is the speed of streaming ``W`` from memory, and
    PyTorch's CPU kernel for it (MKL's) runs on one core while the others
    wait.  So without gradients, on a CPU with several threads, we cut
    ``d_in`` into ``p`` blocks: ``x @ W = sum_b x[block b] @ W[block b]``.
    The ``p`` smaller products run as one batched ``bmm``, which PyTorch
    spreads over the cores, and ``W.view`` makes the blocks without copying.
    It is the same sum grouped differently: results agree to float rounding
    (``tests/test_model.py``), and generation runs about 1.5x faster on 2 cores.

    ``packed``: ``W`` in oneDNN's layout (see :class:`PackedWeights`), used
    for generation-shaped products while ``W`` is still what was packed.
    """
    if packed is not None and packed.copies(W) and generation_shaped(x):
        return torch.ops.mkldnn._linear_pointwise(x, packed.weight, None, "none", [], "")  # (..., d_out)
    d_in = W.shape[0]
    rows = x.numel() // d_in
    threads = torch.get_num_threads()
    p = 2 * threads if threads > 1 else 1  # two blocks per core balance the load
    while d_in % p:  # blocks of equal width (p = 1, the plain product, always divides)
        p -= 1
    if p == 1 or not generation_shaped(x) or W.stride(-1) != 1:
        return x @ W  # the plain product
    blocks = x.reshape(rows, p, d_in // p).transpose(0, 1)  # (p, rows, d_in / p)
    out = torch.bmm(blocks, W.view(p, d_in // p, -1)).sum(0)  # (rows, d_out)
    return out.view(*x.shape[:-1], W.shape[1])


# ---------------------------------------------------------------------------
# Components, in the order the data flows through them
# ---------------------------------------------------------------------------


class Embed(nn.Module):
    """Token embedding: row ``t`` of ``W_E`` is the vector for token ``t``.
    The same matrix, transposed, later turns vectors back into logits.

    The lookup is plain indexing, ``W_E[tokens]``, but its *gradient* is
    where the order of additions matters.  Row ``t`` of the gradient sums
    one vector per occurrence of token ``t`` in the batch.  Indexing's
    backward (``index_put_`` with ``accumulate=True``) splits the batch over
    the CPU cores, and each core adds its vectors into the shared rows with
    atomic float additions, in whatever order the cores arrive: the sum, and
    so the whole run, changes in the last bits from one run to the next.
    ``F.embedding`` gives each core a range of *rows* instead, and each adds
    its tokens in batch order: the same sum every time, just as fast.
    ``forward_plain`` keeps the indexing, and ``tests/test_model.py`` checks
    that the two agree."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))  # (d_vocab, d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (batch, pos) integer ids
        return F.embedding(tokens, self.W_E)  # (batch, pos, d_model), a reproducible gradient

    def forward_plain(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens]  # (batch, pos, d_model), the same lookup; its gradient's sum order varies


class PosEmbed(nn.Module):
    """Learned position embedding: GPT-2 has no notion of order other than
    this one vector per position, added to the token's vector."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))  # (n_ctx, d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: (pos,) or (batch, pos) integer positions
        return self.W_pos[positions]  # (pos, d_model) or (batch, pos, d_model)
        # (a training batch's positions are all different: no sums in the gradient to reorder)


class LayerNorm(nn.Module):
    """Centre each position's vector, scale it to unit variance, then apply a
    learned per-feature scale ``w`` and shift ``b``.  This keeps the residual
    stream's size under control however many blocks add to it."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))  # (d_model,)
        self.b = nn.Parameter(torch.zeros(cfg.d_model))  # (d_model,)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, pos, d_model)
        x = x - x.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt())  # (batch, pos, 1)
        return self.hook_normalized(x / scale * self.w + self.b)  # (batch, pos, d_model)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation as one fused kernel (which hides the scale:
        while the scale is being recorded, take the plain path)."""
        if self.hook_scale.recording:
            return self.forward(x)
        return self.hook_normalized(F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps))


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    Without a cache, generating token ``n`` re-runs the model on all ``n``
    previous tokens.  But a position's key and value never change once
    computed (attention is causal), so we keep them and feed the model only
    the newest token: each step then costs one position of compute.

    The buffers are allocated once, for ``max_len`` positions, so no memory is
    copied as the sequence grows.
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        max_len = max_len or cfg.n_ctx
        shape = (cfg.n_layers, batch, cfg.n_heads, max_len, cfg.d_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (layer, batch, head, max_len, d_head)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled so far

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values and return all of them so far."""
        # k, v: (batch, head, new_pos, d_head)
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store {end}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (batch, head, end, d_head)

    def advance(self, n: int) -> None:
        """Called by the model once every layer has stored ``n`` new positions."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


class Attention(nn.Module):
    """Causal multi-head self-attention: the only place where positions
    exchange information.

    Each head projects every position into a *query* ("what am I looking
    for?"), a *key* ("what do I contain?") and a *value* ("what do I pass
    on?").  A position's output is the average of the values of all earlier
    positions (and itself), weighted by how well its query matches their keys.
    """

    def __init__(self, cfg: GPTConfig, fast: bool = True):
        super().__init__()
        self.cfg = cfg
        self.fast = fast  # use fused scaled_dot_product_attention
        d, h, e = cfg.d_model, cfg.n_heads, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(d, h, e))  # (d_model, n_heads, d_head)
        self.W_K = nn.Parameter(torch.empty(d, h, e))
        self.W_V = nn.Parameter(torch.empty(d, h, e))
        self.b_Q = nn.Parameter(torch.zeros(h, e))  # (n_heads, d_head)
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))  # (n_heads, d_head, d_model)
        self.b_O = nn.Parameter(torch.zeros(d))  # (d_model,)
        self.dropout = cfg.dropout
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        self.packed = PackedWeights()  # filled by GPT.pack_weights

    def pack(self) -> None:
        for name in ("W_Q", "W_K", "W_V"):
            self.packed.pack(name, getattr(self, name).flatten(1))  # (d_model, n_heads * d_head)
        self.packed.pack("W_O", self.W_O.flatten(0, 1))  # (n_heads * d_head, d_model)

    def project(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, packed: Packed | None) -> torch.Tensor:
        """One of the query/key/value projections, for all heads at once."""
        # x: (batch, pos, d_model); W: (d_model, n_heads, d_head)
        out = matmul(x, W.flatten(1), packed) + b.flatten()  # (batch, pos, n_heads * d_head)
        return out.unflatten(-1, W.shape[1:]).transpose(1, 2)  # (batch, n_heads, pos, d_head)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (batch, pos, d_model)
        # mask: optional (batch, 1, pos, key_pos) boolean, True where a query may attend.
        #       When None, plain causal attention over the positions given.
        q = self.hook_q(self.project(x, self.W_Q, self.b_Q, self.packed.get("W_Q")))  # (batch, head, pos, d_head)
        k = self.hook_k(self.project(x, self.W_K, self.b_K, self.packed.get("W_K")))
        v = self.hook_v(self.project(x, self.W_V, self.b_V, self.packed.get("W_V")))
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (batch, head, key_pos, d_head), earlier positions included
        # The fused kernel never forms the pattern: recording it needs the plain path.
        if self.fast and not (self.hook_pattern.recording or self.hook_attn_scores.recording):
            z = self.attend_fast(q, k, v, mask)
        else:
            z = self.attend(q, k, v, mask)[0]
        z = self.hook_z(z).transpose(1, 2).flatten(2)  # (batch, pos, n_heads * d_head)
        out = matmul(z, self.W_O.flatten(0, 1), self.packed.get("W_O")) + self.b_O  # (batch, pos, d_model)
        return F.dropout(out, self.dropout, self.training)

    def attend(self, q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain path: build the attention pattern explicitly.

        Returns the mixed values and the pattern ``(batch, head, pos, key_pos)``,
        whose row ``i`` says how much position ``i`` attends to each earlier one."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (batch, head, pos, key_pos)
        if mask is None:
            mask = causal_mask(q.shape[2], k.shape[2], q.device)
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))  # the future is invisible
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # (batch, head, pos, key_pos); rows sum to 1
        pattern = F.dropout(pattern, self.dropout, self.training)
        return pattern @ v, pattern  # (batch, head, pos, d_head)

    def attend_fast(self, q, k, v, mask=None) -> torch.Tensor:
        """The fast path: one fused kernel computes the same thing without
        storing the pattern (flash / memory-efficient attention)."""
        p = self.dropout if self.training else 0.0
        n_q, n_k = q.shape[2], k.shape[2]
        if mask is None and n_q == n_k:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if mask is None and n_q > 1:
            # SDPA's is_causal aligns the mask top-left; queries that follow a
            # KV cache need it aligned bottom-right, so we build it ourselves.
            mask = causal_mask(n_q, n_k, q.device)
        # (a single new query may see every cached key: no mask at all)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """True where query ``i`` may see key ``j``.  Queries are the *last*
    ``n_queries`` of the ``n_keys`` positions (they differ with a KV cache)."""
    offset = n_keys - n_queries
    q = torch.arange(n_queries, device=device)[:, None] + offset
    k = torch.arange(n_keys, device=device)[None, :]
    return k <= q  # (n_queries, n_keys)


class MLP(nn.Module):
    """A two-layer network applied to each position independently: widen to
    ``d_mlp``, apply GELU, project back.  Most of GPT-2's parameters live here."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))  # (d_model, d_mlp)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))  # (d_mlp, d_model)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.dropout = cfg.dropout
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()
        self.packed = PackedWeights()  # filled by GPT.pack_weights

    def pack(self) -> None:
        self.packed.pack("W_in", self.W_in)
        self.packed.pack("W_out", self.W_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, pos, d_model)
        pre = self.hook_pre(matmul(x, self.W_in, self.packed.get("W_in")) + self.b_in)  # (batch, pos, d_mlp)
        post = self.hook_post(gelu(pre))  # (batch, pos, d_mlp)
        out = matmul(post, self.W_out, self.packed.get("W_out")) + self.b_out  # (batch, pos, d_model)
        return F.dropout(out, self.dropout, self.training)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with GPT-2's tanh approximation (what ``transformers`` calls
    ``gelu_new``); the exact erf form differs in the 4th decimal place."""
    return F.gelu(x, approximate="tanh")


class TransformerBlock(nn.Module):
    """Pre-LayerNorm residual block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.
    Each sub-layer *adds* to the residual stream; nothing overwrites it."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, resid_pre: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # resid_pre: (batch, pos, d_model)
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1.forward_fast(resid_pre), cache, self.layer, mask))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2.forward_fast(resid_mid)))
        resid_post = self.hook_resid_post(resid_mid + mlp_out)
        return resid_post  # (batch, pos, d_model)


class Unembed(nn.Module):
    """Turn the final residual stream into logits over the vocabulary, using
    the token embedding matrix transposed (tied weights: no parameters of its own).

    ``W_U`` is a transposed *view* of ``W_E``: no copy, so training updates
    one matrix.  But a matrix-vector product read through that view strides
    across memory and runs about 3x slower on a CPU than on a contiguous
    ``(d_model, d_vocab)`` matrix.  Generation does one such product per
    token, and it is most of a small model's work, so on a CPU, without
    gradients, a few rows are multiplied by a contiguous copy, made once and
    kept until ``W_E`` changes (it costs the memory of a second ``W_E``), or
    by ``W_E`` packed for oneDNN when the model's weights are packed."""

    def __init__(self, embed: Embed):
        super().__init__()
        self.embed = [embed]  # a plain list, so the tied matrix is registered (and counted) once
        self._copy: torch.Tensor | None = None
        self._copy_of: tuple | None = None  # which W_E (weight_state) the copy was made from
        self.packed = PackedWeights()  # filled by GPT.pack_weights

    def pack(self) -> None:
        self.packed.pack("W_U", self.W_U)

    @property
    def W_U(self) -> torch.Tensor:
        return self.embed[0].W_E.T  # (d_model, d_vocab)

    def contiguous_W_U(self) -> torch.Tensor:
        """``W_U`` laid out row by row, remade whenever ``W_E`` has changed."""
        W_E = self.embed[0].W_E
        source = weight_state(W_E)
        if self._copy_of != source:
            with torch.no_grad():
                self._copy = W_E.T.contiguous()  # (d_model, d_vocab)
            self._copy_of = source
        return self._copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, pos, d_model)
        if not generation_shaped(x) or self.embed[0].W_E.is_inference():  # (no version counter to key a copy on)
            return x @ self.W_U  # (batch, pos, d_vocab)
        packed = self.packed.get("W_U")
        if packed is not None and packed.copies(self.W_U):
            return matmul(x, self.W_U, packed)  # (batch, pos, d_vocab)
        return matmul(x, self.contiguous_W_U())  # (batch, pos, d_vocab), generation's fast path


# ---------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------


class GPT(nn.Module):
    """GPT-2: embeddings, ``n_layers`` blocks, a final LayerNorm, tied unembedding."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(self.embed)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.hook_points: dict[str, HookPoint] = {}  # name -> hook, every hook of the model
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_points[name] = module
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialisation: every matrix ~ N(0, 0.02²), biases 0,
        LayerNorm scale 1.  The two projections that write into the residual
        stream (attention ``W_O`` and MLP ``W_out``) are shrunk by
        ``1/sqrt(2 * n_layers)``: each block adds two such terms, and this
        keeps the stream's variance from growing with depth."""
        std = self.cfg.init_range
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("W_O", "W_out")):
                nn.init.normal_(p, 0.0, residual_std, generator=generator)
            elif name.split(".")[-1].startswith("W_"):
                nn.init.normal_(p, 0.0, std, generator=generator)
            elif name.endswith(".w"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    @torch.no_grad()
    def crop_context(self, n_ctx: int) -> None:
        """See at most ``n_ctx`` positions from now on, by keeping the first
        ``n_ctx`` rows of ``W_pos`` (nanoGPT's ``crop_block_size``).  Nothing
        else in GPT-2 depends on the context length, and a causal model's
        first positions never look further ahead, so their logits do not
        change: a cropped ``gpt2`` is ``gpt2`` on shorter texts, cheaper to
        fine-tune (attention costs grow with the square of the context)."""
        if not 0 < n_ctx <= self.cfg.n_ctx:
            raise ValueError(f"cannot crop the context to {n_ctx}: it must be between 1 and n_ctx={self.cfg.n_ctx}")
        W_pos = self.pos_embed.W_pos
        self.pos_embed.W_pos = nn.Parameter(W_pos[:n_ctx].clone(), requires_grad=W_pos.requires_grad)
        self.cfg = dataclasses.replace(self.cfg, n_ctx=n_ctx)

    @torch.no_grad()
    def pack_weights(self) -> None:
        """Keep a copy of every weight matrix in oneDNN's blocked layout, for
        generation in bf16 on a CPU (:class:`PackedWeights`): one more copy of
        the weights in memory, for 1.4x to 1.8x the tokens per second at batch 1
        (benchmarks/README.md).  A weight changed since it was packed is read
        as it is (the plain path): the packs never go stale."""
        for module in self.modules():
            if isinstance(module, (Attention, MLP, Unembed)):
                module.pack()

    def set_fast_attention(self, fast: bool) -> None:
        """Switch every layer between the fused and the plain attention path."""
        for block in self.blocks:
            block.attn.fast = fast

    def num_params(self, include_position: bool = True) -> int:
        """Parameter count, the tied embedding counted once (124,439,808 for ``gpt2``)."""
        n = sum(p.numel() for p in self.parameters())
        return n if include_position else n - self.pos_embed.W_pos.numel()

    def flops_per_token(self, n_ctx: int | None = None) -> int:
        """Model FLOPs of one training token (forward + backward), for MFU.

        Every weight is used in one multiply-add (2 FLOPs) per token forward
        and two backward (gradient of the input and of the weight): 6 per
        parameter.  Position embeddings are a lookup, not a matmul.  Attention
        adds ``q @ k`` and ``pattern @ v``, each ``2 * n_ctx * d_model`` FLOPs
        per token forward, times 3 with the backward: ``12 * n_layers * n_ctx * d_model``
        (counted for the full square, as PaLM's MFU does, though causal masking halves it)."""
        n_ctx = n_ctx or self.cfg.n_ctx
        return 6 * self.num_params(include_position=False) + 12 * self.cfg.n_layers * n_ctx * self.cfg.d_model

    def residual(self, tokens: torch.Tensor, cache: KVCache | None = None,
                 positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Everything up to (and including) the final LayerNorm."""
        # tokens: (batch, pos)
        n = tokens.shape[1]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + n, device=tokens.device)  # (pos,)
        if positions.max() >= self.cfg.n_ctx:
            raise ValueError(f"sequence of {int(positions.max()) + 1} positions exceeds n_ctx={self.cfg.n_ctx}")
        x = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))  # (batch, pos, d_model)
        x = F.dropout(x, self.cfg.dropout, self.training)
        for block in self.blocks:
            x = block(x, cache, mask)  # (batch, pos, d_model)
        if cache is not None:
            cache.advance(n)
        return self.ln_final.forward_fast(x)  # (batch, pos, d_model)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the next token at every position: ``(batch, pos, d_vocab)``.

        ``cache``: a :class:`KVCache`; ``tokens`` are then the positions that
        follow the ones already cached.  ``positions`` and ``mask`` let a
        caller place left-padded prompts (see ``generate.py``)."""
        return self.unembed(self.residual(tokens, cache, positions, mask))

    @torch.no_grad()
    def run_with_cache(self, tokens: torch.Tensor, names=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model and record its activations (see the table at the top).

        ``names``: ``None`` records every hook; a list records those names;
        a function ``name -> bool`` records the names it accepts.  Recording
        fewer keeps memory bounded: a full cache of ``gpt2`` on 1,024 tokens
        holds about 170 tensors.  Returns ``(logits, cache)``; the cached
        tensors are detached and gradients are off."""
        if names is None:
            chosen = list(self.hook_points.values())
        elif callable(names):
            chosen = [h for n, h in self.hook_points.items() if names(n)]
        else:
            names = [names] if isinstance(names, str) else list(names)
            unknown = [n for n in names if n not in self.hook_points]
            if unknown:
                raise ValueError(f"unknown activation name(s) {', '.join(map(repr, unknown[:5]))}; "
                                 f"valid names look like {next(iter(self.hook_points))!r} or "
                                 "'blocks.0.attn.hook_pattern' (see GPT.hook_points)")
            chosen = [self.hook_points[n] for n in names]
        cache: dict[str, torch.Tensor] = {}
        for hook in chosen:
            hook.store = cache
        try:
            logits = self(tokens)
        finally:  # never leave a hook recording, even if the forward pass failed
            for hook in chosen:
                hook.store = None
        return logits, cache

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        """Mean cross-entropy (nats per token) of predicting ``targets``.

        With ``chunk_size > 0`` the output layer and the loss are computed a
        chunk of positions at a time, so the full ``(batch, pos, d_vocab)``
        fp32 logits never exist at once (see :func:`chunked_cross_entropy`)."""
        x = self.residual(tokens)  # (batch, pos, d_model)
        if chunk_size > 0:
            return chunked_cross_entropy(x, self.embed.W_E, targets, chunk_size)
        logits = self.unembed(x)  # (batch, pos, d_vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Output layer + cross-entropy, a chunk of rows at a time, gradients included.

    The gradient of mean cross-entropy w.r.t. the logits is
    ``(softmax(logits) - onehot(target)) / n``: it needs nothing but the
    logits themselves.  So while a chunk's logits exist we turn them, in
    place, into that gradient and multiply it into the gradients of the two
    inputs right away, then throw the chunk away.  Three matmuls per chunk
    (logits, grad of x, grad of W_E) instead of the four of a backward pass
    that recomputes the logits, and never more than ``chunk`` rows of
    ``d_vocab`` floats alive.  ``backward`` only scales what was computed.

    The softmax is done in place on one reused buffer with a single ``exp``
    (``torch.logsumexp`` would allocate a fresh chunk-sized tensor and
    exponentiate everything a second time): on ``mini``'s 8,192 x 50,257
    output layer that makes the whole loss 1.5x faster under bf16.

    Under autocast (bf16) the matmuls run in the autocast dtype; the softmax,
    the loss and the accumulated ``W_E`` gradient stay fp32."""

    @staticmethod
    def forward(ctx, x, W_E, targets, chunk_size, want_grad, want_grad_W):
        # x: (n, d_model); W_E: (d_vocab, d_model), the tied embedding; targets: (n,)
        n = x.shape[0]
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        with torch.autocast(device_type, enabled=False):
            W = W_E.to(dtype)  # (d_vocab, d_model)
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            grad_x = torch.empty_like(x) if want_grad else None  # (n, d_model)
            want_grad_W = want_grad and want_grad_W  # not for a frozen embedding (fine-tuning's --train-only)
            grad_W = torch.zeros(W_E.shape, dtype=torch.float32, device=x.device) if want_grad_W else None
            # Buffers made once and reused by every chunk: a fresh 200 MB tensor per chunk costs page faults.
            rows = min(chunk_size, n)
            buffer = torch.empty((rows, W.shape[0]), dtype=dtype, device=x.device)  # (chunk, d_vocab)
            low = dtype != torch.float32  # bf16 matmuls; softmax, loss and gradients in fp32
            logits32 = torch.empty((rows, W.shape[0]), dtype=torch.float32, device=x.device) if low else None
            grad_W_low = torch.empty_like(W) if low and want_grad_W else None  # (d_vocab, d_model)
            for s in range(0, n, chunk_size):
                xs, ts = x[s:s + chunk_size].to(dtype), targets[s:s + chunk_size]  # (chunk, d_model), (chunk,)
                c = xs.shape[0]
                logits = torch.mm(xs, W.T, out=buffer[:c])  # (chunk, d_vocab)
                if low:
                    logits = logits32[:c].copy_(logits)  # softmax and loss in fp32
                # loss = logsumexp(logits) - logits[target], and the softmax for the gradient, in
                # place with one exp (a stable softmax: subtract the row's max first)
                picked = logits.gather(1, ts[:, None])  # (chunk, 1)
                top = logits.amax(dim=-1, keepdim=True)  # (chunk, 1)
                e = logits.sub_(top).exp_()  # (chunk, d_vocab): exp(logits - max)
                norm = e.sum(dim=-1, keepdim=True)  # (chunk, 1)
                total += (top + norm.log() - picked).sum()
                if not want_grad:
                    continue
                g = e.div_(norm)  # softmax: (chunk, d_vocab)
                g[torch.arange(c, device=x.device), ts] -= 1.0  # n * d loss / d logits (1/n applied in backward)
                if low:  # bf16 products, fp32 gradients
                    g = buffer[:c].copy_(g)
                    grad_x[s:s + chunk_size] = g @ W  # (chunk, d_model)
                    if want_grad_W:
                        grad_W += torch.mm(g.T, xs, out=grad_W_low)  # (d_vocab, d_model)
                else:  # fp32: write straight into the gradients
                    torch.mm(g, W, out=grad_x[s:s + chunk_size])
                    if want_grad_W:
                        grad_W.addmm_(g.T, xs)  # accumulated in place
        ctx.save_for_backward(grad_x, grad_W)  # (a None is saved as None)
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_W = ctx.saved_tensors
        scale = grad_out / ctx.n  # grad_out is d(final loss)/d(this loss): 1, or 1/grad_accum
        return grad_x * scale, None if grad_W is None else grad_W * scale, None, None, None, None


def chunked_cross_entropy(x: torch.Tensor, W_E: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int) -> torch.Tensor:
    """Mean cross-entropy of ``x @ W_E.T`` against ``targets`` without ever
    holding more than ``chunk_size`` rows of logits."""
    # x: (batch, pos, d_model); W_E: (d_vocab, d_model); targets: (batch, pos)
    # (inside forward, grad mode is always off: decide here whether gradients will be wanted)
    want_grad = torch.is_grad_enabled() and (x.requires_grad or W_E.requires_grad)
    return _ChunkedCrossEntropy.apply(x.flatten(0, 1), W_E, targets.flatten(), chunk_size, want_grad,
                                      W_E.requires_grad)
