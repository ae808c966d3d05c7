"""The bad-input catalogue: every command, fed wrong arguments and broken
files, answers with one line that names the problem and the fix, exits with
status 2, prints no traceback, and leaves every existing file as it was.

The cases run in this process through ``cli.main`` (the function behind
``python -m gpt2lab``), so the catalogue costs no interpreter start-ups;
``test_cli.py`` and ``test_train.py`` check the same one-line errors through
real subprocesses.  Each row: the arguments (``{W}`` is the workspace), the
fragments of the error line that say what is wrong, and the one that says how
to fix it."""

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from gpt2lab import cli
from gpt2lab import runs
from gpt2lab import train as T
from gpt2lab.checkpoint import MODEL_META, hf_config, latest_checkpoint
from gpt2lab.model import GPTConfig

from conftest import Booby

CATALOGUE = [
    # serve
    (["serve", "--model", "{W}/missing"], ["does not exist"], "give a run directory"),
    (["serve", "--model", "{W}/run", "--port", "70000"], ["--port must be"], "between 0 and 65535"),
    # tokenize
    (["tokenize", "{W}/missing.txt"], ["missing.txt does not exist"], "check the path"),
    (["tokenize", "{W}/adir"], ["is a directory"], "give a text file"),
    (["tokenize", "{W}/latin1.txt"], ["not UTF-8"], "convert it to UTF-8"),
    (["tokenize", "{W}/text.txt", "--tokenizer", "{W}/missing.json"], ["unknown tokenizer"], "use 'gpt2'"),
    (["tokenize", "{W}/text.txt", "--tokenizer", "{W}/text.txt"], ["cannot read tokenizer file"], "retrain"),
    (["tokenize"], ["the following arguments are required: file"], "--help"),
    # eval
    (["eval", "--model", "{W}/missing", "--text", "{W}/text.txt"], ["does not exist"], "give a run directory"),
    (["eval", "--model", "{W}/run", "--text", "{W}/missing.txt"], ["does not exist"], "check the path"),
    (["eval", "--model", "{W}/run", "--text", "{W}/empty.txt"], ["is empty"], "give a file with some text"),
    (["eval", "--model", "{W}/adir", "--text", "{W}/text.txt"], ["is neither"], "point --model at one"),
    (["eval", "--model", "{W}/corrupt", "--text", "{W}/text.txt"], ["not a readable safetensors"], "re-export"),
    (["eval", "--model", "{W}/badjson", "--text", "{W}/text.txt"],
     ["cannot read", "model.json"], "regenerate the file"),
    (["eval", "--model", "{W}/reshaped", "--text", "{W}/text.txt"], ["do not match the config"], "W_E"),
    (["eval", "--model", "{W}/hf-fields", "--text", "{W}/text.txt"], ["lacks the GPT-2 field"], "GPT-2 config.json"),
    (["eval", "--model", "{W}/hf-pickle", "--text", "{W}/text.txt"],
     ["refusing to load", "pytorch_model.bin: it calls io.open"], "convert a trusted copy"),
    (["eval", "--model", "{W}/no-ckpt", "--text", "{W}/text.txt"], ["no complete checkpoint"], "train it first"),
    # export
    (["export", "--model", "{W}/run", "--to", "{W}/adir"], ["already exists and is not empty"], "--overwrite"),
    (["export", "--model", "{W}/missing", "--to", "{W}/out"], ["does not exist"], "give a run directory"),
    (["export", "--model", "{W}/run", "--to", "{W}/text.txt/sub"],
     ["cannot create", "text.txt/sub"], "choose another --to"),
    (["export", "--model", "{W}/run"], ["required: --to"], "--help"),
    # info
    (["info"], ["no model given"], "give --model PATH or --preset NAME"),
    (["info", "--preset", "gpt5"], ["unknown preset 'gpt5'"], "choose one of"),
    (["info", "--model", "{W}/hf-fields"], ["lacks the GPT-2 field"], "GPT-2 config.json"),
    # tokenizer train
    (["tokenizer", "train", "--data", "{W}/missing.txt", "--out", "{W}/t.json"], ["does not exist"], "give a file"),
    (["tokenizer", "train", "--data", "{W}/text.txt", "--out", "{W}/other.json"],
     ["already exists"], "pass --overwrite"),
    (["tokenizer", "train", "--data", "{W}/text.txt", "--out", "{W}/t.json", "--vocab-size", "3"],
     ["vocab size 3 is too small"], "pass --vocab-size 257 or more"),
    (["tokenizer", "train", "--data", "{W}/latin1.txt", "--out", "{W}/t.json"], ["not UTF-8"], "convert it"),
    (["tokenizer"], ["required: ACTION"], "--help"),
    # generate
    (["generate", "--model", "{W}/missing"], ["does not exist"], "give a run directory"),
    (["generate", "--model", "{W}/run", "--max-new-tokens", "1000000"],
     ["got 1000000"], "must be between 1 and 100,000"),
    (["generate", "--model", "{W}/run", "--num-samples", "1000"], ["got 1000"], "must be between 1 and 64"),
    (["generate", "--model", "{W}/run", "--temperature", "0"], ["--temperature must be > 0"], "use --greedy"),
    (["generate", "--model", "{W}/run", "--top-p", "2"], ["--top-p must be in (0, 1]"], "1 keeps every token"),
    (["generate", "--model", "{W}/run", "--prompt-file", "{W}/latin1.txt"], ["not UTF-8"], "convert it"),
    (["generate", "--model", "{W}/run", "--interactive", "--prompt", "hi"],
     ["--interactive reads prompts from standard input"], "drop --prompt"),
    (["generate", "--model", "{W}/corrupt"], ["not a readable safetensors"], "re-export"),
    # attention, inspect
    (["attention", "--model", "{W}/run", "--text", "hi", "--layer", "7", "--out", "{W}/a.png"],
     ["--layer 7 does not exist"], "numbered 0 to 1"),
    (["attention", "--model", "{W}/run", "--text", "hi", "--out", "{W}/a.txt"], ["a.txt"], "must end in .png"),
    (["attention", "--model", "{W}/run", "--text", "hi", "--out", "{W}/adir/notes.md"],
     ["already exists"], "pass --overwrite"),
    (["inspect", "--model", "{W}/run", "--text", "hi", "--out", "{W}/missing/i.png"],
     ["does not exist"], "create it first"),
    (["inspect", "--model", "{W}/hf-pickle", "--text", "hi", "--out", "{W}/i.png"],
     ["refusing to load"], "convert a trusted copy"),
    # train: flags
    (["train", "--max-steps", "0"], ["got 0"], "--max-steps must be a positive integer"),
    (["train", "--lr", "fast"], ["--lr", "invalid float value"], "--help"),
    (["train", "--min-lr", "1", "--lr", "0.1"], ["--min-lr (1.0)"], "must not exceed --lr (0.1)"),
    (["train", "--beta2", "1.5"], ["got 1.5"], "--beta2 must be in [0, 1)"),
    (["train", "--val-fraction", "1.5"], ["got 1.5"], "--val-fraction must be between 0 and 1"),
    (["train", "--on-nan", "ignore"], ["got 'ignore'"], "--on-nan must be stop or skip"),
    (["train", "--spike-factor", "0.5"], ["--spike-factor must be above 1"], "0 to turn spike reports off"),
    (["train", "--device", "abacus"], ["unknown --device 'abacus'"], "use cpu"),
    (["train", "--preset", "nope", "--data", "{W}/text.txt"], ["unknown preset 'nope'"], "choose one of"),
    # train: data and run directories
    (["train", "--data", "{W}/missing.txt", "--out", "{W}/new"], ["does not exist"], "give a file, a directory"),
    (["train", "--data", "{W}/empty.txt", "--out", "{W}/new"], ["is empty"], "give some text"),
    (["train", "--data", "{W}/latin1.txt", "--out", "{W}/new"], ["not UTF-8"], "convert it to UTF-8"),
    (["train", "--data", "{W}/text.txt", "--out", "{W}/new"], ["fewer than one context window"], "--n-ctx"),
    (["train", "--data", "{W}/text.txt", "--tokenizer", "{W}/missing.json"], ["unknown tokenizer"], "use 'gpt2'"),
    (["train", "--data", "{W}/text.txt", "--out", "{W}/run"], ["already holds a training run"], "--resume"),
    (["train", "--data", "{W}/text.txt", "--out", "{W}/text.txt"], ["is a file"], "choose a directory"),
    (["train", "--data", "{W}/text.txt", "--out", "{W}/adir"], ["is not empty"], "choose a new or empty"),
    # train --resume
    (["train", "--resume", "{W}/missing"], ["no such run directory"], "give the --out directory"),
    (["train", "--resume", "{W}/adir"], ["no config.json"], "is it a gpt2lab run directory"),
    (["train", "--resume", "{W}/run", "--preset", "tiny"],
     ["--preset cannot be combined with --resume"], "drop --preset"),
    (["train", "--resume", "{W}/run", "--lr", "0.5"], ["field lr was"], "start a new --out"),
    (["train", "--resume", "{W}/run", "--tokenizer", "{W}/other.json"], ["field tokenizer was"], "start a new --out"),
    (["train", "--resume", "{W}/run-no-ckpt"], ["no checkpoint to resume from"], "start a new run"),
    (["train", "--resume", "{W}/run-foreign"], ["has model d_model 128"], "belongs to another run"),
    (["train", "--resume", "{W}/run-pickle"],
     ["training_state.pt: it calls io.open", "could run code"], "resume only runs you trust"),
    # train --init-from (fine-tuning): the model and tokenizer come from PATH
    (["train", "--init-from", "{W}/missing", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["does not exist"], "Hugging Face GPT-2 directory to --init-from"),
    (["train", "--init-from", "{W}/adir", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["is neither a gpt2lab run"], "point --init-from at one of those"),
    (["train", "--init-from", "{W}/corrupt", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["not a readable safetensors file"], "re-export"),
    (["train", "--init-from", "{W}/run", "--tokenizer", "gpt2", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["--tokenizer gpt2 contradicts --init-from"], "drop --tokenizer"),
    (["train", "--init-from", "{W}/run", "--n-ctx", "32", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["--n-ctx 32 is larger than the context"], "give --n-ctx 16 or less"),
    (["train", "--init-from", "{W}/run", "--d-model", "128", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["--d-model 128 contradicts --init-from", "whose d_model is 64"], "drop --d-model"),
    (["train", "--init-from", "{W}/run", "--preset", "tiny", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["--preset cannot be combined with --init-from"], "drop --preset"),
    (["train", "--resume", "{W}/run", "--init-from", "{W}/run"], ["--init-from cannot be combined with --resume"],
     "drop --init-from"),
    (["train", "--init-from", "{W}/run", "--train-only", "last-3", "--data", "{W}/corpus.txt", "--out", "{W}/new"],
     ["only 2 blocks"], "give last-2 or fewer"),
    (["train", "--train-only", "heads", "--data", "{W}/corpus.txt"], ["got 'heads'"],
     "--train-only must be all, no-embeddings or last-N"),
    # plot
    (["plot", "{W}/missing"], ["is not a run directory"], "give the --out directory"),
    (["plot", "{W}/adir"], ["has no metrics.jsonl"], "is it a gpt2lab run directory"),
    (["plot", "{W}/run", "--metric", "accuracy"], ["invalid choice: 'accuracy'"], "--help"),
    (["plot", "{W}/run", "--out", "{W}/missing/loss.png"], ["cannot write", "loss.png"], "choose another --out"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Every file and directory the catalogue points at."""
    os.environ.setdefault("GPT2LAB_CACHE", str(tmp_path_factory.mktemp("token-cache")))
    w = tmp_path_factory.mktemp("workspace")
    (w / "text.txt").write_text("To be, or not to be, that is the question.\n" * 3, encoding="utf-8")
    (w / "empty.txt").write_text("", encoding="utf-8")
    (w / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (w / "adir").mkdir()
    (w / "adir" / "notes.md").write_text("a file that must survive\n")
    (w / "other.json").write_text("{}")
    corpus = w / "corpus.txt"
    corpus.write_text("the king is dead long live the queen my lord\n" * 400, encoding="utf-8")
    run = w / "run"
    T.train(T.TrainConfig(data=str(corpus), out=str(run), batch_size=2, max_steps=1, warmup_steps=1, eval_every=1,
                          eval_batches=1, checkpoint_every=1, sample_tokens=0, progress=False),
            GPTConfig.from_preset("tiny", n_ctx=16), log=lambda *a: None)
    ckpt = latest_checkpoint(run)
    meta = json.loads((ckpt / MODEL_META).read_text())
    # Broken checkpoints, each a copy of the good one with one thing wrong.
    for name in ("corrupt", "badjson", "reshaped"):
        shutil.copytree(ckpt, w / name)
    (w / "corrupt" / "model.safetensors").write_bytes(b"\x00" * 64)
    (w / "badjson" / MODEL_META).write_text("{not json")
    (w / "reshaped" / MODEL_META).write_text(json.dumps({**meta, "model": {**meta["model"], "d_vocab": 1000}}))
    (w / "no-ckpt" / "checkpoints").mkdir(parents=True)
    (w / "hf-fields").mkdir()
    (w / "hf-fields" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (w / "hf-pickle").mkdir()
    (w / "hf-pickle" / "config.json").write_text(json.dumps(hf_config(GPTConfig.from_preset("tiny"))))
    torch.save({"wte.weight": torch.zeros(2), "x": Booby(w / "PWNED")}, w / "hf-pickle" / "pytorch_model.bin")
    # Runs that cannot be resumed.
    shutil.copytree(run, w / "run-no-ckpt", ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("run-foreign", "run-pickle"):
        shutil.copytree(run, w / name)
    foreign = latest_checkpoint(w / "run-foreign") / MODEL_META
    foreign.write_text(json.dumps({**meta, "model": {**meta["model"], "d_model": 128}}))
    state_path = latest_checkpoint(w / "run-pickle") / runs.STATE_FILE
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "x": Booby(w / "PWNED")}, state_path)
    return w


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its size, modification time and (small files) content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and st.st_size < 1 << 20 else None
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
    return out


def run_main(argv: list[str]) -> tuple[int, str]:
    """``gpt2lab ARGV`` in this process: (exit status, standard error)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's errors
            code = e.code
    return code, err.getvalue()


def test_catalogue_has_every_command_and_enough_cases():
    commands = {" ".join(argv[:2]) if argv[0] in cli.GROUPS else argv[0] for argv, _, _ in CATALOGUE}
    assert commands >= set(cli.COMMANDS) | set(cli.GROUPS), "a command without bad-input cases"
    assert len(CATALOGUE) >= 30
    assert all(problem and fix for _, problem, fix in CATALOGUE)  # each row: what is wrong, and how to fix it


@pytest.mark.parametrize("argv, problem, fix", CATALOGUE, ids=[" ".join(a)[:60] for a, _, _ in CATALOGUE])
def test_bad_input_is_one_line_naming_problem_and_fix(workspace, argv, problem, fix, monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where a crash log would go
    before = snapshot(workspace)
    argv = [a.replace("{W}", str(workspace)) for a in argv]
    code, err = run_main(argv)
    # What a terminal shows: a progress bar that erased itself with carriage returns is gone.
    lines = [l.rsplit("\r", 1)[-1] for l in err.split("\n") if l.rsplit("\r", 1)[-1].strip()]
    assert code == 2, (code, err)  # 2: the user's error (1 is kept for internal errors)
    assert len(lines) == 1 and lines[0].startswith(f"gpt2lab {argv[0]}: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for fragment in [*problem, fix]:
        assert fragment in lines[0], lines[0]
    assert snapshot(workspace) == before, "files changed"
    assert not (workspace / "PWNED").exists()
    assert not list(tmp_path.iterdir())  # no crash log either
    print(f"{' '.join(argv).replace(str(workspace), 'W')}  ->  {lines[0].replace(str(workspace), 'W')}")


def test_an_internal_error_prints_one_line_and_the_path_of_its_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(cli.COMMANDS["info"], "run", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, err = run_main(["info", "--preset", "tiny"])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "internal error: ZeroDivisionError: a bug, not bad input" in lines[0]
    (log,) = tmp_path.iterdir()
    assert str(log) in lines[0] and "Traceback" not in err
    assert "Traceback" in log.read_text() and "raise ZeroDivisionError" in log.read_text()
