"""Loss curves; attention heatmaps and per-token losses written as real PNGs, never over a file."""

import json
import math

import matplotlib.image
import numpy as np
import pytest

from gpt2lab.errors import UserError
from gpt2lab.plots import (attention_figure, loss_figure, plot_runs, read_metrics, save_figure, token_label,
                           token_loss_figure, with_train_bpb)

from conftest import assert_user_error, run_cli


def fake_run(folder, scale):
    folder.mkdir()
    rows = [{"step": s, "tokens": 512 * s, "loss": scale * 10 / s, "lr": 1e-3, "tokens_per_sec": 1.0}
            for s in range(1, 11)]
    rows[4].update(val_loss=scale * 3.0, val_bpb=scale * 1.5)
    rows[9].update(val_loss=scale * 2.0, val_bpb=scale * 1.0)
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11, "tok'  # torn last line
    (folder / "metrics.jsonl").write_text(text, encoding="utf-8")
    return folder


def test_read_metrics_skips_a_torn_line(tmp_path):
    assert len(read_metrics(fake_run(tmp_path / "a", 1))) == 10


def test_plot_one_and_several_runs(tmp_path):
    a, b = fake_run(tmp_path / "a", 1.0), fake_run(tmp_path / "b", 1.2)
    out = plot_runs([a], a / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_cli("plot", a, b, "--out", tmp_path / "both.png", "--metric", "bpb")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "both.png").stat().st_size > 1000
    proc = run_cli("plot", a, "--json")  # one run: RUN_DIR/loss.png, named on the last line
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"plot": str(a / "loss.png")}


def test_bpb_plot_shows_the_training_loss_in_bits_per_byte_too(tmp_path):
    """Runs with different tokenizers (fine-tuned vs from scratch) compare on one bits-per-byte plot."""
    a, b = fake_run(tmp_path / "a", 1.0), fake_run(tmp_path / "b", 1.0)
    (a / "config.json").write_text(json.dumps({"tokens": {"train_bytes_per_token": 4.0}}))
    rows = with_train_bpb(a, read_metrics(a))
    assert rows[0]["train_bpb"] == pytest.approx(10 / math.log(2) / 4)
    fig = loss_figure([("a", rows), ("b", with_train_bpb(b, read_metrics(b)))], "bpb")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a train", "a val", "b val"]  # b: no config


def test_plot_bad_run_dir_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("plot", tmp_path / "empty"), "metrics.jsonl")
    assert_user_error(run_cli("plot", tmp_path / "missing"), "not a run directory")


def read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)  # (height, width, channels)


def causal_patterns(layers, heads, pos, seed=0):
    scores = np.random.default_rng(seed).normal(size=(layers, heads, pos, pos))
    scores[..., np.triu_indices(pos, 1)[0], np.triu_indices(pos, 1)[1]] = -np.inf
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_figure_one_panel_per_head(tmp_path):
    tokens = ["<|endoftext|>", "To", " be", ",", " or", "\n"]
    fig = attention_figure(causal_patterns(2, 3, 6), tokens, layers=[0, 1], heads=[0, 1, 2])
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 6
    assert heatmaps[4].get_title() == "layer 1, head 1"
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == [token_label(t) for t in tokens]
    image = read_png(save_figure(fig, tmp_path / "a.png"))
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_token_loss_figure_colours_follow_the_loss(tmp_path):
    tokens = ["To", " be", ",\n", " or", " not"]
    losses = [0.1, 5.0, 2.0, 9.0, 0.5]
    fig = token_loss_figure(tokens, losses)
    patches = fig.axes[0].patches
    assert len(patches) == 6  # the newline adds a '↵' cell
    darkness = [1 - np.mean(p.get_facecolor()[:3]) for p in patches]
    cell_losses = [0.1, 5.0, 2.0, 2.0, 9.0, 0.5]  # To, ␣be, ',', ↵, ␣or, ␣not
    for a in range(6):
        for b in range(6):
            if cell_losses[a] < cell_losses[b]:
                assert darkness[a] < darkness[b], (a, b)
    assert max(p.get_y() for p in patches) == 1  # two lines
    read_png(save_figure(fig, tmp_path / "t.png"))


def test_save_figure_refuses_to_overwrite_and_bad_paths(tmp_path):
    fig = token_loss_figure(["a"], [1.0])
    path = save_figure(fig, tmp_path / "x.png")
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        save_figure(token_loss_figure(["b", "c"], [1.0, 2.0]), path)
    assert path.read_bytes() == before
    save_figure(token_loss_figure(["b", "c"], [1.0, 2.0]), path, overwrite=True)
    assert path.read_bytes() != before
    with pytest.raises(UserError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    with pytest.raises(UserError, match=r"\.png"):
        save_figure(fig, tmp_path / "x.jpg")
