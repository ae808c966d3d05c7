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


def test_forced_agreement_of_a_model_with_its_own_greedy_text_is_total():
    import torch

    from benchmarks import generate
    from gpt2lab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", init_range=generate.INIT_RANGE)).eval()
    prompt = torch.randint(0, model.cfg.d_vocab, (2, 4))
    tokens = generate.greedy(model, prompt, 20)
    assert generate.forced_agreement(model, prompt, tokens) == 1.0
    assert generate.forced_agreement(model, prompt, tokens.roll(1, dims=1)) < 0.5  # shifted by one: wrong
    same = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    assert generate.first_difference(same) == 2  # rows part at 2, never (3), 0


@pytest.mark.slow
def test_train_benchmark_runs_both_sides_and_reports_mfu():
    from benchmarks import train

    result = train.run(("mini",), rounds=1, variants={train.TRANSFORMERS: None, train.OURS: {}, "fp32": dict(autocast="off")},
                       rss=False, batch=1, log=lambda s: None, contention=False)
    rows = {r["variant"]: r for r in result["presets"][0]["rows"]}
    assert set(rows) == {train.TRANSFORMERS, train.OURS, "fp32"}
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    assert rows["fp32"]["dtype"] == "float32" and 0 < rows["fp32"]["mfu"]
    assert "| mini | 1×256 | gpt2lab |" in train.table(result)


def test_generate_benchmark_gives_the_same_tokens_as_transformers():
    from benchmarks import generate

    result = generate.run(("tiny",), (1, 2), log=lambda s: None, new_tokens=8, prompt_len=4, repeats=1,
                          bandwidth_mib=16)
    assert [r["batch"] for r in result["runs"]] == [1, 2]
    for r in result["runs"]:
        assert r["same_tokens"] is True and r["distinct_tokens"] >= 4  # varied text, not one token repeated
        assert all(r["rate"][k] > 0 for k in ("gpt2lab", "gpt2lab bf16", "transformers"))
        assert r["bandwidth_GBps"] > 0 and r["weights_MB"]["bf16"] == r["weights_MB"]["fp32"] / 2
        assert 0 < r["roofline_fraction"]["gpt2lab"] and 0 < r["bf16_forced_agreement"] <= 1
    assert result["runs"][1]["bounds"]["gpt2lab"]["compute"] > 0  # batch 2: the compute bound too
    assert set(result["contention"]["rates"]) == {"quiet", "one core busy"}
    assert "| tiny | 2 | gpt2lab |" in generate.table(result) and "one core busy" in generate.table(result)


@pytest.mark.slow
def test_shards_benchmark_compares_with_tiktoken():
    from benchmarks import shards

    r = shards.run(rounds=1, log=lambda s: None)
    assert "| gpt2lab" in shards.table(r) and "tiktoken" in shards.table(r)


def test_tokenizers_benchmark_times_each_step_and_compares_the_trainers():
    from benchmarks import tokenizers

    result = tokenizers.run((300,), repeat=1, teaching_size=280, log=lambda s: None)
    steps = result["runs"][0]["median"]
    assert set(steps) == {"read", "count", "merges", "total"} and steps["total"][0] > 0
    assert result["teaching"]["same_merges"] is True
    assert result["density"]["bpe-300"]["n_vocab"] == 300
    assert "| 300 |" in tokenizers.table(result)


@pytest.mark.slow
def test_race_benchmark_trains_both_recipes_for_the_same_minutes(tmp_path, monkeypatch):
    from benchmarks import race

    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path / "cache"))
    result = race.run((0.05,), log=lambda s: None, max_chars=2000)
    row = result["rows"][0]
    for name in (race.ANCHOR, race.OURS):
        assert row[name]["stopped_by"] == "max_minutes" and row[name]["steps"] > 0
        assert 0 < row[name]["bpb"] < 10
    assert row["ratio"] == pytest.approx(row[race.OURS]["bpb"] / row[race.ANCHOR]["bpb"])
    assert "| 0.05 |" in race.table(result)


def test_train_benchmark_contention_run_reports_quiet_and_busy():
    from benchmarks import train

    c = train.run_contention(rounds=1, batch=1, n_ctx=16, d_vocab=300, log=lambda s: None)
    assert set(c["rates"]) == {"quiet", "one core busy"}
    assert all(v > 0 for rates in c["rates"].values() for v in rates.values())
    assert "one core busy" in train.table({"presets": [], "contention": c})


def test_sweep_benchmark_runs_every_point_of_its_grid(monkeypatch):
    """The grid and the table (training and scoring themselves are the race's, tested above)."""
    from benchmarks import sweep

    runs = []

    def fake_train(flags, minutes, out):
        runs.append((flags, minutes))
        return {"step": 10 * len(runs), "tokens": 100 * len(runs)}

    monkeypatch.setattr(sweep, "train", fake_train)
    monkeypatch.setattr(sweep, "held_out_bits_per_byte", lambda out, max_chars: 3.0 - 0.1 * len(runs))
    grid = sweep.parse_grid(["n-layers=1,2", "--tokenizer=char,bpe:300"])
    assert grid == {"n-layers": ["1", "2"], "tokenizer": ["char", "bpe:300"]}
    result = sweep.run(grid, minutes=0.5, log=lambda s: None)
    assert sorted(flags for flags, _ in runs) == sorted(["--n-layers", n, "--tokenizer", t]
                                                        for n in ("1", "2") for t in ("char", "bpe:300"))
    assert all(m == 0.5 for _, m in runs)
    assert [r["bpb"] for r in result["rows"]] == sorted(r["bpb"] for r in result["rows"])  # best first
    assert "| n-layers | tokenizer |" in sweep.table(result)
