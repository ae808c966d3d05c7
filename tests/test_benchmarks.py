"""The benchmarks still run: each one, shrunk to a single short round.

They are timed by hand (``python -m benchmarks``), not here; this only keeps
them from drifting away from the package's API, and checks the one thing a
benchmark asserts about correctness: generation gives the same tokens as
``transformers``."""

import pytest

from conftest import ROOT

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch, threads):
    monkeypatch.syspath_prepend(ROOT)  # `benchmarks` sits beside `src`, not inside the package
    threads(1)  # single short steps; a second thread only adds noise on a busy machine


@pytest.mark.slow
def test_train_benchmark_runs_both_sides_and_reports_mfu():
    from benchmarks import train

    result = train.run(("mini",), rounds=1, variants={train.TRANSFORMERS: None, train.OURS: {}, "fp32": dict(autocast="off")},
                       rss=False, batch=1, log=lambda s: None)
    rows = {r["variant"]: r for r in result["presets"][0]["rows"]}
    assert set(rows) == {train.TRANSFORMERS, train.OURS, "fp32"}
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    assert rows["fp32"]["dtype"] == "float32" and 0 < rows["fp32"]["mfu"]
    assert "| mini | 1×256 | gpt2lab |" in train.table(result)


def test_generate_benchmark_gives_the_same_tokens_as_transformers():
    from benchmarks import generate

    result = generate.run(("tiny",), (1, 2), log=lambda s: None, new_tokens=8, prompt_len=4, repeats=1)
    assert [r["batch"] for r in result["runs"]] == [1, 2]
    for r in result["runs"]:
        assert r["same_tokens"] is True and r["distinct_tokens"] >= 4  # varied text, not one token repeated
        assert r["gpt2lab_tokens_per_sec"] > 0 and r["transformers_tokens_per_sec"] > 0
    assert "| tiny | 2 |" in generate.table(result)


@pytest.mark.slow
def test_shards_benchmark_compares_with_tiktoken():
    from benchmarks import shards

    r = shards.run(rounds=1, log=lambda s: None)
    assert "| gpt2lab" in shards.table(r) and "tiktoken" in shards.table(r)
