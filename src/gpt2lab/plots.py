"""Pictures: loss curves, attention patterns, per-token losses.

Everything here draws with matplotlib's headless Agg backend into PNG files
(or returns the figure, for a notebook), so it works on a server with no screen.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.cm  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.patches  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .errors import UserError  # noqa: E402


def read_metrics(run_dir) -> list[dict]:
    """The objects of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; is it a gpt2lab run directory?")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return rows


def loss_figure(runs: list[tuple[str, list[dict]]], metric: str = "loss"):
    """Train and validation curves against tokens seen (top), learning rate (bottom).

    ``metric="bpb"`` plots bits per byte, the measure that compares runs with
    different tokenizers: validation, and training where the rows have it
    (``train_bpb``, see :func:`with_train_bpb`)."""
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs):
        c = colors[i % len(colors)]
        train_key, val_key = ("train_bpb", "val_bpb") if metric == "bpb" else ("loss", "val_loss")
        train = [(r["tokens"], r[train_key]) for r in rows if train_key in r]
        val = [(r["tokens"], r[val_key]) for r in rows if val_key in r]
        if train:
            ax.plot(*zip(*train), color=c, alpha=0.35, lw=1, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=c, marker="o", ms=3, lw=1.5, label=f"{label} val")
        lr = [(r["tokens"], r["lr"]) for r in rows if "lr" in r]
        if lr:
            ax_lr.plot(*zip(*lr), color=c, lw=1)
    ax.set_ylabel("bits per byte" if metric == "bpb" else "loss (nats per token)")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("tokens seen")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs, out, metric: str = "loss") -> Path:
    """Overlay the curves of one or more runs into the PNG file ``out``."""
    if metric not in ("loss", "bpb"):
        raise UserError(f"unknown metric {metric!r}; choose loss or bpb")
    runs = [(Path(d).name or str(d), with_train_bpb(d, read_metrics(d))) for d in run_dirs]
    fig = loss_figure(runs, metric)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)  # readers never see half a picture
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def with_train_bpb(run_dir, rows: list[dict]) -> list[dict]:
    """The rows with the training loss also in bits per byte (``train_bpb``),
    where the run's ``config.json`` records the training text's bytes per token."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        per_token = float(config["tokens"]["train_bytes_per_token"])
    except (OSError, ValueError, KeyError, TypeError):
        return rows  # an older run: validation bits per byte only
    return [{**r, "train_bpb": r["loss"] / math.log(2) / per_token} if "loss" in r else r for r in rows]


def check_png_path(path, overwrite: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot take a new PNG."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out or pass --overwrite")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    if path.suffix.lower() != ".png":
        raise UserError(f"{path} must end in .png; the views are written as PNG images")
    return path


def save_figure(fig: Figure, path, overwrite: bool = False) -> Path:
    """Write ``fig`` as a PNG, refusing to replace an existing file unless asked."""
    path = check_png_path(path, overwrite)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def token_label(token: str) -> str:
    """A token made visible: spaces as '␣', newlines as '↵', tabs as '→'."""
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "→") or "∅"


def attention_figure(patterns, tokens: list[str], layers: list[int], heads: list[int]) -> Figure:
    """Attention heatmaps, one panel per head: rows are layers, columns heads.

    ``patterns``: ``(len(layers), len(heads), pos, pos)``; row ``i`` of a
    panel is where position ``i`` (the query, on the y axis) looks.  The
    upper triangle is empty because attention is causal."""
    patterns = np.asarray(patterns, dtype=np.float32)
    n_rows, n_cols, n_pos = patterns.shape[0], patterns.shape[1], patterns.shape[-1]
    side = max(2.5, min(6.0, 0.22 * n_pos + 1.0))  # inches per panel, big enough for the labels
    fig = Figure(figsize=(side * n_cols + 1.0, side * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    labels = [token_label(t) for t in tokens]
    font = max(4, min(9, 260 // max(n_pos, 1)))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(patterns[r, c], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(n_pos), labels, rotation=90, fontsize=font)
            ax.set_yticks(range(n_pos), labels, fontsize=font)
            ax.set_xlabel("key (attended to)", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


def token_loss_figure(tokens: list[str], losses, width: int = 80) -> Figure:
    """The text, each token on a patch coloured by its loss (nats): dark red
    where the model was surprised, pale where it saw the token coming.
    Tokens are laid out in a monospaced font, ``width`` characters a line;
    a newline inside a token starts a new line."""
    losses = np.asarray(losses, dtype=np.float32)
    cells, x, line = [], 0, 0  # (x, line, label, loss) for each token piece
    for token, loss in zip(tokens, losses):
        for k, piece in enumerate(token.split("\n")):
            if k > 0:  # the token held a newline
                cells.append((x, line, "↵", loss))
                x, line = 0, line + 1
            if not piece:
                continue
            if x + len(piece) > width and x > 0:
                x, line = 0, line + 1
            cells.append((x, line, piece, loss))
            x += len(piece)
    n_lines = line + 1
    n_cols = max(x0 + len(text) for x0, _, text, _ in cells) if cells else 1
    char = 9 * 0.6 / 72  # inches: a 9-point monospaced character is 0.6 em wide
    fig = Figure(figsize=(n_cols * char * 1.05 + 1.6, 0.2 * n_lines + 0.6), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Reds"]
    vmax = max(float(losses.max()), 1e-6)
    norm = matplotlib.colors.Normalize(vmin=0.0, vmax=vmax)
    for x0, y0, text, loss in cells:
        ax.add_patch(matplotlib.patches.Rectangle((x0, y0), max(len(text), 1), 1.0, facecolor=cmap(norm(loss)),
                                                  edgecolor="white", linewidth=0.6))
        ax.text(x0, y0 + 0.5, text, va="center", ha="left", family="monospace", fontsize=9,
                color="white" if norm(loss) > 0.6 else "black")
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, label="loss (nats)")
    return fig
