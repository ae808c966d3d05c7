"""Pictures: loss curves, attention patterns, per-token losses.

Everything here draws with matplotlib's headless Agg backend into PNG files
(or returns the figure, for a notebook), so it works on a server with no screen.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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

    ``metric="bpb"`` plots validation bits per byte only, the measure that
    compares runs with different tokenizers."""
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs):
        c = colors[i % len(colors)]
        train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
        val_key = "val_bpb" if metric == "bpb" else "val_loss"
        val = [(r["tokens"], r[val_key]) for r in rows if val_key in r]
        if metric == "loss" and train:
            ax.plot(*zip(*train), color=c, alpha=0.35, lw=1, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=c, marker="o", ms=3, lw=1.5, label=f"{label} val")
        lr = [(r["tokens"], r["lr"]) for r in rows if "lr" in r]
        if lr:
            ax_lr.plot(*zip(*lr), color=c, lw=1)
    ax.set_ylabel("validation bits per byte" if metric == "bpb" else "loss (nats per token)")
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
    runs = [(Path(d).name or str(d), read_metrics(d)) for d in run_dirs]
    fig = loss_figure(runs, metric)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)  # readers never see half a picture
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
