"""Loss curves: one run, several runs overlaid, bits per byte."""

import json

from gpt2lab.plots import plot_runs, read_metrics

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


def test_plot_bad_run_dir_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("plot", tmp_path / "empty"), "metrics.jsonl")
    assert_user_error(run_cli("plot", tmp_path / "missing"), "not a run directory")
