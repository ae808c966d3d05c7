"""The training loop: schedule, optimizer groups, sampler, reproducibility,
exact resume, checkpoints, divergence, and the command line's refusals."""

import json
import math
import os

import pytest
import torch

from gpt2lab import batches, recipe, runs
from gpt2lab import train as T
from gpt2lab.checkpoint import latest_checkpoint, load_model
from gpt2lab.errors import UserError
from gpt2lab.model import GPT, GPTConfig

from conftest import PARALLEL_SIZED, assert_same_run, assert_user_error, kill_9_after, run_cli


pytestmark = pytest.mark.usefixtures("token_cache")


def tiny_model(**kw):
    return GPTConfig.from_preset("tiny", n_ctx=16, **kw)


def cfg(corpus, out, **kw):
    base = dict(data=str(corpus), out=str(out), batch_size=4, max_steps=8, warmup_steps=2, lr=1e-2,
                min_lr=1e-3, eval_every=4, eval_batches=1, checkpoint_every=4, sample_tokens=0,
                progress=False, seed=3)
    base.update(kw)
    return T.TrainConfig(**base)


def losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rows]


def quiet(*a, **k):
    pass


def test_lr_schedule_warmup_then_cosine_to_floor():
    c = T.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [T.lr_at(s, c, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[9:110], lrs[10:111]))  # then decays
    assert lrs[60] == pytest.approx(0.55)  # halfway through the cosine
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)  # the floor


def test_lr_schedule_follows_the_time_budget():
    c = T.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_minutes=5)
    assert T.lr_at(50, c, 1010, minutes=2.5) == pytest.approx(0.55)  # half the time: half the cosine
    assert T.lr_at(50, c, 1010, minutes=5.0) == pytest.approx(0.1)  # time is up: the floor
    assert T.lr_at(1010, c, 1010, minutes=0.1) == pytest.approx(0.1)  # the steps ran out first
    assert T.lr_at(5, c, 1010, minutes=4.0) == pytest.approx(0.6)  # warmup counts steps
    untimed = T.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert T.lr_at(510, untimed, 1010, minutes=100.0) == pytest.approx(0.55)  # no budget: steps alone


def test_a_timed_run_ends_its_decay_when_time_is_up(corpus, tmp_path):
    result = T.train(cfg(corpus, tmp_path / "run", max_steps=100_000, max_minutes=0.15, warmup_steps=2,
                         eval_every=100_000, checkpoint_every=100_000), tiny_model(), log=quiet)
    assert result.stopped_by == "max_minutes" and result.step < 100_000
    lrs = [r["lr"] for r in losses(tmp_path / "run") if "lr" in r]
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decaying all along
    # the last step started in the second half of the time (steps of a tiny model are short, even on
    # a busy machine): past half the cosine, where counting 100,000 steps would barely have begun
    assert lrs[-1] < 1e-3 + 0.5 * (1e-2 - 1e-3)


def test_weight_decay_on_matrices_only():
    model = GPT(tiny_model())
    decay, no_decay = recipe.param_groups(model, T.TrainConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.W_Q" in decayed and "blocks.0.mlp.W_in" in decayed
    assert not any(n.endswith((".b", ".w")) or ".b_" in n for n in decayed)
    assert "embed.W_E" not in decayed and "pos_embed.W_pos" not in decayed
    decay2, _ = recipe.param_groups(model, T.TrainConfig(decay_embeddings=True))
    assert "embed.W_E" in {names[id(p)] for p in decay2["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_epoch_sampler_covers_every_window_once_and_resumes():
    s = batches.WindowSampler(n_tokens=16 * 10 + 1, n_ctx=16, batch_size=3, seed=1, epoch_mode=True)
    seen = torch.cat([s.next_step()[0] for _ in range(10)]).tolist()  # 30 windows = 3 epochs
    for e in range(3):
        assert sorted(seen[10 * e:10 * e + 10]) == [16 * i for i in range(10)]
    assert seen[:10] != seen[10:20]  # each epoch reshuffles
    state = s.state_dict()
    a = [s.next_step()[0].tolist() for _ in range(5)]
    s2 = batches.WindowSampler(16 * 10 + 1, 16, 3, seed=1, epoch_mode=True)
    s2.load_state_dict(state)
    assert [s2.next_step()[0].tolist() for _ in range(5)] == a


def test_random_sampler_state_round_trips():
    s = batches.WindowSampler(1000, 16, 4, seed=5)
    s.next_step()
    state = s.state_dict()
    a = s.next_step()[0]
    s2 = batches.WindowSampler(1000, 16, 4, seed=5)
    s2.load_state_dict(state)
    assert torch.equal(s2.next_step()[0], a)


def test_same_seed_same_losses(corpus, tmp_path):
    a = T.train(cfg(corpus, tmp_path / "a"), tiny_model(), log=quiet)
    b = T.train(cfg(corpus, tmp_path / "b"), tiny_model(), log=quiet)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    rows = losses(tmp_path / "a")
    # It learned: an untrained model (GPT-2's 0.02 init) guesses nearly uniformly, ln(d_vocab) nats;
    # 8 steps take the validation loss well below that, and the second evaluation below the first.
    uniform = math.log(json.loads((tmp_path / "a" / "config.json").read_text())["model"]["d_vocab"])
    assert rows[0]["loss"] == pytest.approx(uniform, abs=0.2)
    assert a.metrics["val_loss"] < rows[3]["val_loss"] < uniform - 1.0
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"val_loss", "val_bpb"} <= set(rows[3]) and rows[3]["val_bpb"] > 0
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-2 and saved["model"]["n_ctx"] == 16


@pytest.mark.parametrize("optimizer", recipe.OPTIMIZER_CHOICES)
def test_resume_matches_uninterrupted_run(corpus, tmp_path, optimizer):
    T.train(cfg(corpus, tmp_path / "full", optimizer=optimizer), tiny_model(), log=quiet)

    class Crash(Exception):
        pass

    def crash_at_6(step):
        if step == 6:
            raise Crash  # dies after logging steps 5-6, past the step-4 checkpoint

    with pytest.raises(Crash):
        T.train(cfg(corpus, tmp_path / "cut", optimizer=optimizer), tiny_model(), log=quiet, on_step=crash_at_6)
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000004"
    T.train(T.TrainConfig(), resume=tmp_path / "cut", log=quiet)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "cut")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_in_epoch_mode_matches(corpus, tmp_path):
    kw = dict(epochs=0.01, max_steps=1000, eval_every=3, checkpoint_every=3)
    full = T.train(cfg(corpus, tmp_path / "full", **kw), tiny_model(), log=quiet)
    assert full.stopped_by == "epochs"

    def crash(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train(cfg(corpus, tmp_path / "cut", **kw), tiny_model(), log=quiet, on_step=crash)
    T.train(T.TrainConfig(), resume=tmp_path / "cut", log=quiet)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_checkpoints_are_atomic_and_keep_last_k(corpus, tmp_path):
    run = tmp_path / "run"
    T.train(cfg(corpus, run, max_steps=10, checkpoint_every=2, keep_checkpoints=2), tiny_model(), log=quiet)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_00000008", "step_00000010"]  # no temporary directories left
    state = torch.load(run / "checkpoints" / "step_00000010" / runs.STATE_FILE, weights_only=True)
    assert state["step"] == 10 and "optimizer" in state and "sampler" in state
    # A half-written checkpoint (a crash mid-save) is a hidden temp dir, never picked up.
    (run / "checkpoints" / ".tmp-step_00000012-999").mkdir()
    assert latest_checkpoint(run).name == "step_00000010"


def test_nan_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    real_loss = GPT.loss
    calls = {"n": 0}

    def loss(self, *a, **k):
        calls["n"] += 1 if self.training else 0
        out = real_loss(self, *a, **k)
        return out * float("nan") if self.training and calls["n"] > 5 else out

    monkeypatch.setattr(GPT, "loss", loss)
    run = tmp_path / "run"
    with pytest.raises(T.TrainingDiverged, match=r"nan at step 6.*step_00000004"):
        T.train(cfg(corpus, run), tiny_model(), log=quiet)
    assert latest_checkpoint(run).name == "step_00000004"
    load_model(run)  # still loadable
    assert max(r["step"] for r in losses(run)) == 5


def test_refuses_out_dir_holding_another_run(corpus, tmp_path):
    run = tmp_path / "run"
    T.train(cfg(corpus, run, max_steps=2), tiny_model(), log=quiet)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    proc = run_cli("train", "--data", corpus, "--out", run, "--preset", "tiny", "--max-steps", "2",
                   env={"GPT2LAB_CACHE": os.environ["GPT2LAB_CACHE"]})
    assert_user_error(proc, "already holds a training run", "--resume")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("args, fragment", [
    (["--max-steps", "0"], "max-steps"),
    (["--max-steps", "-3"], "max-steps"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--batch-size", "0"], "batch-size"),
    (["--lr", "fast"], "--lr"),
    (["--data", "/no/such/file.txt"], "does not exist"),
    (["--preset", "nope"], "unknown preset"),
    (["--resume", "/no/such/run"], "no such run"),
])
def test_bad_input_is_one_line_error(tmp_path, args, fragment):
    proc = run_cli("train", "--out", tmp_path / "run", *args, env={"GPT2LAB_CACHE": str(tmp_path / "c")})
    assert_user_error(proc, fragment)


def test_bad_corpora_are_one_line_errors(tmp_path):
    env = {"GPT2LAB_CACHE": str(tmp_path / "c")}
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    assert_user_error(run_cli("train", "--data", empty, "--out", tmp_path / "r1", env=env), "empty")
    short = tmp_path / "short.txt"
    short.write_text("To be or not to be.", encoding="utf-8")
    assert_user_error(run_cli("train", "--data", short, "--out", tmp_path / "r2", env=env), "context window")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"ok\xc3\x28bad")
    assert_user_error(run_cli("train", "--data", binary, "--out", tmp_path / "r3", env=env), "b.txt", "offset 2")
    assert not (tmp_path / "r1").exists()  # nothing left behind


def test_resume_refuses_bad_dirs_and_incompatible_changes(corpus, tmp_path):
    env = {"GPT2LAB_CACHE": os.environ["GPT2LAB_CACHE"]}
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("train", "--resume", tmp_path / "empty", env=env), "config.json")
    run = tmp_path / "run"
    T.train(cfg(corpus, run, max_steps=2), tiny_model(), log=quiet)
    assert_user_error(run_cli("train", "--resume", run, "--d-model", "128", env=env), "incompatible")
    assert_user_error(run_cli("train", "--resume", run, "--lr", "0.5", env=env), "incompatible")


def test_unwritable_out_dir(tmp_path, corpus):
    """--out under a file: no one can create a directory there, root included."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("train", "--data", corpus, "--out", blocker / "run", env={"GPT2LAB_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    assert_user_error(proc, "cannot write to --out", "choose another --out")
    assert blocker.read_text() == "not a directory"


def test_two_runs_with_one_seed_are_bit_identical(corpus, tmp_path):
    """At the default settings (threads: one per core, at least 2 in CI;
    autocast, loss chunk, AdamW, tokenizer) and a batch big enough for the
    cores to split its work: every metrics row and every final tensor."""
    for name in ("a", "b"):
        T.train(cfg(corpus, tmp_path / name, batch_size=32, seed=9), GPTConfig.from_preset("tiny"), log=quiet)
    assert torch.get_num_threads() >= min(2, os.cpu_count())  # what train() chose: several threads
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_deterministic_kernels_change_nothing_on_a_cpu(corpus, tmp_path):
    """``--deterministic`` (every op must have a deterministic kernel) runs,
    and gives the very run the default settings give: on a CPU they already are."""
    try:
        for name, deterministic in (("default", False), ("deterministic", True)):
            T.train(cfg(corpus, tmp_path / name, batch_size=32, seed=9, max_steps=4, deterministic=deterministic),
                    GPTConfig.from_preset("tiny"), log=quiet)
            assert torch.are_deterministic_algorithms_enabled() == deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert_same_run(tmp_path / "default", tmp_path / "deterministic")


@pytest.mark.slow
def test_cli_resumes_after_kill_9_to_the_uninterrupted_run(corpus, tmp_path):
    """``kill -9`` in the middle of a run (asserted: the process died of
    signal 9, before its last step, past a checkpoint), then ``--resume``:
    every metrics row and every final tensor equal the uninterrupted run's."""
    args = ["--data", str(corpus), *PARALLEL_SIZED, "--max-steps", "12", "--eval-every", "4",
            "--checkpoint-every", "2"]
    full = run_cli("train", "--out", tmp_path / "full", *args, "--sample-tokens", "12")
    assert full.returncode == 0, full.stderr
    assert "sample" in full.stdout and (tmp_path / "full" / "loss.png").is_file()
    metrics = tmp_path / "cut" / "metrics.jsonl"
    assert kill_9_after(["train", "--out", tmp_path / "cut", *args], metrics, 5), "the run ended before it could be killed"
    killed_at = max(int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()
                    if '"step": ' in line)
    assert 5 <= killed_at < 12
    load_model(tmp_path / "cut")  # the last checkpoint is complete
    resumed = run_cli("train", "--resume", tmp_path / "cut", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    resumed_from = int(resumed.stdout.split(" from step ")[1].split()[0])
    assert f"resuming {tmp_path / 'cut'} from step" in resumed.stdout and 2 <= resumed_from <= killed_at
    assert_same_run(tmp_path / "cut", tmp_path / "full")


def test_char_tokenizer_is_built_from_the_corpus_and_saved(corpus, tmp_path):
    """``--tokenizer char``: the vocabulary is the training text's characters,
    the output layer fits it, and the run (and its resume) keeps it."""
    T.train(cfg(corpus, tmp_path / "c", tokenizer="char", max_steps=4), tiny_model(), log=quiet)
    model, tok = load_model(tmp_path / "c")
    chars = sorted(set(corpus.read_text(encoding="utf-8")))
    assert tok.kind == "char" and tok.chars == chars
    assert model.cfg.d_vocab == tok.n_vocab == len(chars) + 256 + 1
    T.train(T.TrainConfig(max_steps=6), resume=tmp_path / "c", train_overrides={"max_steps": 6}, log=quiet)
    assert latest_checkpoint(tmp_path / "c").name == "step_00000006"
    assert load_model(tmp_path / "c")[1].to_dict() == tok.to_dict()


PLAIN_PATH = dict(loss_chunk=0, adamw="loop", autocast="off")
# Batches of 48 windows of 64 tokens: 3,072 rows, so the chunked loss (--loss-chunk 1024, the default) runs
# three chunks a step, as in the default recipe (16 x 128 = 2 chunks), not one.
BIG_BATCH = dict(batch_size=48)
FP32_GAP, BF16_GAP = 1.9e-6, 1.6e-3  # measured by the two tests below (2 cores, AVX512-BF16)


def loss_curve_gap(corpus, tmp_path, fast_settings: dict) -> float:
    """Train the same seed with ``fast_settings`` and with the plain fp32 path;
    return the largest difference of train or validation loss at any step."""
    model = GPTConfig.from_preset("tiny", n_ctx=64)
    assert BIG_BATCH["batch_size"] * model.n_ctx >= 3 * T.TrainConfig().loss_chunk
    T.train(cfg(corpus, tmp_path / "fast", **BIG_BATCH, **fast_settings), model, log=quiet)
    T.train(cfg(corpus, tmp_path / "plain", **BIG_BATCH, **PLAIN_PATH), model, log=quiet)
    a, b = losses(tmp_path / "fast"), losses(tmp_path / "plain")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert any("val_loss" in r for r in a)
    diffs = [abs(ra[k] - rb[k]) for ra, rb in zip(a, b) for k in ("loss", "val_loss") if k in ra]
    print(f"{fast_settings}: max loss difference against the plain path over {len(a)} steps: {max(diffs):.2e}")
    return max(diffs)


def test_fast_path_keeps_the_loss_curve_of_the_plain_path(corpus, tmp_path):
    """In fp32 the fast path (chunked loss, fused AdamW) learns what the plain path learns, to rounding:
    measured FP32_GAP here, asserted within 10x of it (float32 sums in another order)."""
    assert loss_curve_gap(corpus, tmp_path, dict(autocast="off")) < 10 * FP32_GAP


def test_bf16_autocast_keeps_the_loss_curve(corpus, tmp_path):
    """The default on CPUs with native bf16 (and on CUDA): bf16 matmuls, fp32 weights and
    optimizer.  bf16 keeps 8 bits of mantissa (relative rounding 0.4%), so the curve moves by
    rounding: measured BF16_GAP here, asserted within 4x of it, far less than one step of learning
    changes the loss (about 0.3 nats per step here)."""
    assert loss_curve_gap(corpus, tmp_path, dict(autocast="bf16")) < 4 * BF16_GAP


@pytest.mark.slow
def test_compiled_loss_keeps_the_loss_curve(corpus, tmp_path):
    """``--compile``: torch.compile of the loss, against the plain path (fp32, as above)."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception as e:  # noqa: BLE001 - no C++ compiler, unsupported Python...
        pytest.skip(f"torch.compile cannot compile here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    assert loss_curve_gap(corpus, tmp_path, dict(autocast="off", compile=True)) < 10 * FP32_GAP


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adamw_implementations_take_the_same_step(impl):
    grads = None
    params = []
    for choice in ("loop", impl):
        torch.manual_seed(0)
        model = GPT(tiny_model(d_vocab=100))
        opt = recipe.make_optimizer(model, T.TrainConfig(adamw=choice))
        assert opt.param_groups[0]["fused"] is (True if choice == "fused" else None)
        for _ in range(3):
            if grads is None:
                grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
            for p, g in zip(model.parameters(), grads[_]):
                p.grad = g.clone()
            opt.step()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (params[0] - params[1]).abs().max() <= 1e-6


def test_bf16_autocast_keeps_fp32_master_weights_and_the_loss():
    """bf16 autocast (emulated on CPUs without native bf16) changes the loss by rounding only."""
    torch.manual_seed(0)
    model = GPT(tiny_model())
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    device = torch.device("cpu")
    values = {}
    for setting in ("off", "bf16"):
        loss = recipe.loss_function(model, T.TrainConfig(autocast=setting), device)(x, y)
        values[setting] = loss.item()
        model.zero_grad()
        loss.backward()
        assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    print(f"loss fp32 {values['off']:.5f}, bf16 autocast {values['bf16']:.5f}")
    assert values["bf16"] == pytest.approx(values["off"], abs=2e-2)


@pytest.mark.parametrize("field, value", [("autocast", "fp8"), ("adamw", "sgd"), ("optimizer", "sgd"),
                                          ("muon_momentum", 1.0)])
def test_bad_speed_settings_are_user_errors(field, value):
    with pytest.raises(UserError, match=f"--{field.replace('_', '-')}"):
        T.TrainConfig(**{field: value})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grad_accum_gives_the_curve_of_the_larger_batch_and_syncs_once_a_step(corpus, tmp_path, monkeypatch):
    """--batch-size 2 --grad-accum 2 against --batch-size 4: the same windows each step, the same
    losses to 1e-5 (fp32: only float sums in another order differ).  The accumulated run trains as
    a one-rank data-parallel job (torchrun's environment, a gloo group in this process), so that DDP
    is in use: gradients are exchanged on the last micro-step of each step only (no_sync before)."""
    from torch.nn.parallel import DistributedDataParallel

    from gpt2lab import distributed as D

    common = dict(autocast="off", max_steps=6, eval_every=3, eval_batches=2)
    T.train(cfg(corpus, tmp_path / "big", batch_size=4, **common), tiny_model(), log=quiet)
    syncs = []
    real_forward = DistributedDataParallel.forward

    def forward(self, *args, **kwargs):
        syncs.append(self.require_backward_grad_sync)  # False inside no_sync()
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(DistributedDataParallel, "forward", forward)
    for name, value in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    try:
        T.train(cfg(corpus, tmp_path / "accum", batch_size=2, grad_accum=2, **common), tiny_model(), log=quiet)
    finally:
        D.stop()
    assert syncs == [False, True] * 6
    a, b = losses(tmp_path / "big"), losses(tmp_path / "accum")
    assert [r["step"] for r in a] == [r["step"] for r in b] and [r["tokens"] for r in a] == [r["tokens"] for r in b]
    # (training loss only: validation scores eval_batches x batch_size windows, fewer for the smaller batch)
    assert max(abs(ra["loss"] - rb["loss"]) for ra, rb in zip(a, b)) <= 1e-5


def test_max_minutes_stops_by_time_saves_and_resumes(corpus, tmp_path):
    """--max-minutes 0.002 (0.12 s): the run stops by the clock long before --max-steps, with a
    checkpoint at the step it reached; resumed, it continues with the losses of an uninterrupted run
    (a constant learning rate, so that the schedule does not depend on where it stopped)."""
    steady = dict(warmup_steps=0, lr=1e-2, min_lr=1e-2, max_steps=200, eval_every=1000, checkpoint_every=1000)
    cut = tmp_path / "cut"
    result = T.train(cfg(corpus, cut, max_minutes=0.002, **steady), tiny_model(), log=quiet)
    assert result.stopped_by == "max_minutes" and 1 <= result.step < 200
    assert latest_checkpoint(cut).name == f"step_{result.step:08d}"
    load_model(cut)
    more = result.step + 3
    resumed = T.train(T.TrainConfig(), resume=cut, train_overrides=dict(max_minutes=60.0, max_steps=more), log=quiet)
    assert resumed.step == more and resumed.stopped_by == "max_steps"
    T.train(cfg(corpus, tmp_path / "full", **{**steady, "max_steps": more}), tiny_model(), log=quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("val_loss", "val_bpb")} for r in rows  # noqa: E731
                          if "loss" in r]  # (each run evaluates where it stops)
    assert strip(losses(cut)) == strip(losses(tmp_path / "full"))


@pytest.mark.slow
def test_the_readme_main_command_runs_the_default_recipe(tmp_path):
    """``gpt2lab train`` as the README's first command runs it, cut to 3 steps: the embedded corpus,
    a 4,096-token BPE trained when the run starts, the mini model with its 256-token context, Muon,
    the evaluation and the final sample."""
    proc = run_cli("train", "--max-steps", 3, "--out", tmp_path / "run", "--progress", "false", "--json",
                   env={"GPT2LAB_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["kind"] == "shakespeare" and saved["train"]["tokenizer"] == "bpe:4096"
    assert saved["tokenizer"]["kind"] == "bpe" and saved["model"]["d_vocab"] == 4096
    mini = GPTConfig.from_preset("mini")
    assert {k: saved["model"][k] for k in ("n_layers", "d_model", "n_heads")} == \
        {"n_layers": mini.n_layers, "d_model": mini.d_model, "n_heads": mini.n_heads}
    assert saved["model"]["n_ctx"] == 256 and saved["train"]["batch_size"] == 16
    assert saved["train"]["optimizer"] == "muon" and saved["train"]["lr"] == 8e-3
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["val_bpb"] > 0
    assert "sample" in proc.stdout and len(summary["sample"]) > 100  # the 200-token sample
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_val_bpb_is_what_gpt2lab_eval_says_on_the_validation_text(corpus, tmp_path):
    """The headline metric, tied to ``gpt2lab eval``: the validation split written out as text and
    scored by ``eval`` has exactly the bytes behind val_bpb, and the same bits per byte, to the
    difference that windows make (evaluation windows tile the split, so early positions of each
    have less history than eval's sliding window gives them: within 1%, 0.1% measured)."""
    from gpt2lab.data import parse_source, prepare_tokens
    from gpt2lab.tokenizer import load_tokenizer

    small = tmp_path / "small.txt"  # 1,000 lines of the corpus: a validation split of ~900 tokens
    small.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:1000]), encoding="utf-8")
    run, tok = tmp_path / "run", load_tokenizer("gpt2")
    shards = prepare_tokens(parse_source(str(small)), tok, T.TrainConfig().val_fraction, progress=False)
    val = [int(t) for t in shards.val if int(t) != tok.eot_token]
    n_windows = (len(shards.val) - 1) // 16  # windows of n_ctx 16 tiling the split, each scored once
    result = T.train(cfg(small, run, tokenizer="gpt2", eval_batches=n_windows // 4, eval_every=100), tiny_model(),
                     log=quiet)
    text = tmp_path / "val.txt"
    text.write_bytes(tok.decode_bytes(val))
    proc = run_cli("eval", "--model", run, "--text", text, "--json")
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ev["bytes"] == shards.header["val_bytes"]  # the bytes behind val_bpb
    assert abs(ev["tokens"] - len(val)) <= 2  # (the split may start inside a word, re-tokenized here)
    print(f"val_bpb {result.metrics['val_bpb']:.4f}, gpt2lab eval {ev['bits_per_byte']:.4f}")
    assert result.metrics["val_bpb"] == pytest.approx(ev["bits_per_byte"], rel=0.01)


@pytest.mark.parametrize("adapt", [False, True])
def test_adapt_threads_times_steps_on_one_thread_and_on_all(corpus, tmp_path, monkeypatch, adapt):
    seen = []
    step = T.optimization_step

    def spy(run, lr, warn):
        seen.append(torch.get_num_threads())
        return step(run, lr, warn)

    monkeypatch.setattr(T, "optimization_step", spy)
    T.train(cfg(corpus, tmp_path / "run", threads=2, adapt_threads=adapt), tiny_model(), log=quiet)
    # adapting: the first steps try each candidate (ThreadChooser), then the faster is kept
    assert set(seen[:2]) == ({1, 2} if adapt else {2}) and set(seen) <= {1, 2}
    assert torch.get_num_threads() == 2  # the count set outside a step is left as it was
