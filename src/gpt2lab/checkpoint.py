"""Weights on disk: gpt2lab checkpoints and Hugging Face GPT-2 directories.

A **gpt2lab checkpoint** is a directory holding

* ``model.safetensors``: the parameters, under gpt2lab's own names;
* ``model.json``: ``{"format": "gpt2lab", "model": <GPTConfig>, "tokenizer": <tokenizer description>}``;
* optionally the training state (see ``runs.py``).

A **run directory** (what ``gpt2lab train`` writes) holds ``checkpoints/``
with one such directory per saved step; pointing any command at the run
directory uses its latest checkpoint.

A **Hugging Face GPT-2 directory** holds ``config.json`` and
``model.safetensors`` (or ``pytorch_model.bin``).  Its ``Conv1D`` layers store
matrices as ``(in, out)``, exactly our layout, so the mapping below is
mostly renaming and splitting the fused query/key/value matrix into three.

Loading is strict everywhere: a missing tensor, an unexpected one or a
shape mismatch is an error, never a silent partial load.  Nothing is ever
unpickled: ``.bin`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from .errors import UserError
from .model import GPT, GPTConfig
from .tokenizer import EOT, Tokenizer, gpt2_tokenizer, hf_tokenizer, load_tokenizer

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------------
# Small, safe file helpers
# ---------------------------------------------------------------------------


def write_atomic(path: Path, write) -> None:
    """Write a file so that a crash leaves either the old or the new file,
    never half of one: write a temporary file, fsync it, rename it over."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a read-only folder: say which file could not be written
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Serialise first, then write with plain Python file calls: a full disk
    then surfaces as an ``OSError`` naming the file and the reason ("No space
    left on device"), where the serialisers' own writers report it as an
    opaque ``SafetensorError`` or ``RuntimeError``.  Costs one copy of the
    bytes in memory while writing."""
    write_atomic(path, lambda p: Path(p).write_bytes(data))


def write_json(path: Path, obj) -> None:
    write_atomic(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; restore or regenerate the file") from None


def torch_load_safely(path: Path, fix: str):
    """``torch.load`` of a pickle, with ``weights_only=True``: only tensors
    and plain containers (dicts, lists, numbers, strings) come out.  A pickle
    can name any Python function to call while it is being loaded (that is
    how it rebuilds objects), so a file from elsewhere that names anything
    else (``os.system``, ``builtins.open``...) is refused before any of it
    runs.  ``fix`` ends the error message: what the user can do instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        culprit = f"calls {found.group(1)} when loaded" if found else "holds objects other than tensors"
        raise UserError(f"refusing to load {path}: it {culprit}, and only tensors and plain containers are "
                        f"allowed (unpickling anything else could run code); {fix}") from None
    except Exception as e:  # noqa: BLE001 - any other failure means an unusable file
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; {fix}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); re-export or re-download it") from None


# ---------------------------------------------------------------------------
# gpt2lab checkpoints
# ---------------------------------------------------------------------------


def save_model(model: GPT, tokenizer: Tokenizer, folder: Path) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_bytes_atomic(folder / MODEL_FILE, save_safetensors(tensors))
    write_json(folder / MODEL_META, {"format": "gpt2lab", "version": 1,
                                     "model": model.cfg.to_dict(), "tokenizer": tokenizer.to_dict()})


def load_state_strict(model: GPT, state: dict[str, torch.Tensor], source) -> None:
    """``load_state_dict`` that names every missing, unexpected or misshapen tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise UserError(f"weights in {source} do not match the model: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(f"weights in {source} do not match the config: {name} has shape "
                            f"{tuple(tensor.shape)}, the config expects {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (highest step), or None."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    steps = [p for p in folder.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / MODEL_META).is_file()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def newest_run(base="runs") -> Path | None:
    """The run under ``base`` whose newest complete checkpoint was written last, or None."""
    base = Path(base)
    runs = [(ckpt, run) for run in (base.iterdir() if base.is_dir() else ()) if run.is_dir()
            for ckpt in [latest_checkpoint(run)] if ckpt is not None]
    return max(runs, key=lambda pair: (pair[0] / MODEL_META).stat().st_mtime, default=(None, None))[1]


def resolve_model_path(path, flag: str = "--model") -> tuple[str, Path]:
    """Say what ``path`` is: ``("gpt2lab", checkpoint_dir)`` or ``("hf", dir)``.
    ``flag``: the option that named it, for the error messages."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model path {path} does not exist; give a run directory, a checkpoint or a "
                        f"Hugging Face GPT-2 directory to {flag}")
    if path.is_file():
        path = path.parent  # model.safetensors or model.json named directly
    if (path / MODEL_META).is_file():
        return "gpt2lab", path
    if (path / CHECKPOINTS).is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"run directory {path} has no complete checkpoint yet; train it first")
        return "gpt2lab", ckpt
    if (path / "config.json").is_file():
        return "hf", path
    raise UserError(f"{path} is neither a gpt2lab run/checkpoint (model.json) nor a Hugging Face GPT-2 "
                    f"directory (config.json); point {flag} at one of those")


def read_model(path, flag: str = "--model") -> tuple[GPTConfig, dict[str, torch.Tensor], Tokenizer, Path]:
    """What a run, a checkpoint or a Hugging Face directory holds, without
    building a model: its config, its weights under gpt2lab's names, its
    tokenizer, and the folder they were read from."""
    kind, folder = resolve_model_path(path, flag)
    if kind == "hf":
        cfg = config_from_hf(read_json(folder / "config.json"), folder / "config.json")
        return cfg, hf_to_gpt2lab(read_hf_weights(folder), cfg), gpt2_tokenizer(), folder
    meta = read_json(folder / MODEL_META)
    if meta.get("format") != "gpt2lab" or not isinstance(meta.get("model"), dict):
        raise UserError(f"{folder / MODEL_META} is not a gpt2lab model description; re-save the checkpoint")
    cfg = config_from_dict(meta["model"], folder / MODEL_META)
    tokenizer = load_tokenizer(meta.get("tokenizer", {"kind": "gpt2"}))
    return cfg, read_safetensors(folder / MODEL_FILE), tokenizer, folder


def load_model(path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """Load a model and its tokenizer from a run, a checkpoint or a Hugging Face directory."""
    cfg, state, tokenizer, folder = read_model(path)
    model = GPT(cfg)
    load_state_strict(model, state, folder)
    return model.to(device).eval(), tokenizer


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of weights, whatever file they came from: SHA-256 over
    each tensor's gpt2lab name, dtype, shape and bytes, in name order.  The
    same weights read from a Hugging Face directory or from its gpt2lab
    checkpoint hash alike; one changed bit changes the hash."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_from_dict(d: dict, source) -> GPTConfig:
    try:
        return GPTConfig(**d)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad model config in {source}: {e}") from None


# ---------------------------------------------------------------------------
# Hugging Face GPT-2 format
# ---------------------------------------------------------------------------

# Buffers that old GPT-2 checkpoints carry but that are not parameters (the
# causal mask, rebuilt on the fly).  They are skipped by name, on purpose.
HF_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def config_from_hf(hf: dict, source) -> GPTConfig:
    """Map Hugging Face's ``GPT2Config`` field names onto ours."""
    try:
        d_model = hf["n_embd"]
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"{source}: activation {act!r} is not GPT-2's tanh GELU; gpt2lab cannot load it")
        return GPTConfig(d_vocab=hf["vocab_size"], n_ctx=hf["n_positions"], d_model=d_model,
                         n_heads=hf["n_head"], n_layers=hf["n_layer"], d_mlp=hf.get("n_inner") or 4 * d_model,
                         layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                         init_range=hf.get("initializer_range", 0.02))
    except KeyError as e:
        raise UserError(f"{source} lacks the GPT-2 field {e}; is this a GPT-2 config.json?") from None
    except ValueError as e:
        raise UserError(f"bad GPT-2 config in {source}: {e}") from None


def hf_to_gpt2lab(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename (and split) a Hugging Face GPT-2 state dict into gpt2lab's names.
    Every tensor must be used; leftovers are reported as unexpected."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not HF_BUFFERS.search(k)}
    if "lm_head.weight" in sd:  # tied to wte: must be the same matrix
        lm_head = sd.pop("lm_head.weight")
        if "wte.weight" in sd and not torch.equal(lm_head, sd["wte.weight"]):
            raise UserError("lm_head.weight differs from wte.weight: gpt2lab's GPT-2 ties them")
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str, shape=None):
        if src not in sd:
            return  # reported as missing by load_state_strict
        t = sd.pop(src)
        if shape is not None and t.numel() != torch.Size(shape).numel():
            raise UserError(f"weights do not match the config: {src} has shape {tuple(t.shape)}, "
                            f"the config expects {tuple(shape)} elements' worth")
        out[dst] = t.reshape(shape) if shape is not None else t  # other shapes are checked on load

    take("wte.weight", "embed.W_E")
    take("wpe.weight", "pos_embed.W_pos")
    for i in range(cfg.n_layers):
        p, q = f"h.{i}.", f"blocks.{i}."
        take(p + "ln_1.weight", q + "ln1.w")
        take(p + "ln_1.bias", q + "ln1.b")
        # The fused query/key/value projection, split into our three.
        for kind, shape, split in (("weight", (d, 3 * d), lambda t: t.split(d, dim=1)),
                                   ("bias", (3 * d,), lambda t: t.split(d))):
            src = p + "attn.c_attn." + kind
            if src not in sd:
                continue
            if sd[src].shape != shape:
                raise UserError(f"weights do not match the config: {src} has shape {tuple(sd[src].shape)}, "
                                f"the config expects {shape}")
            for name, part in zip("QKV", split(sd.pop(src))):
                if kind == "weight":
                    out[q + f"attn.W_{name}"] = part.reshape(d, h, e)  # (d_model, n_heads, d_head)
                else:
                    out[q + f"attn.b_{name}"] = part.reshape(h, e)  # (n_heads, d_head)
        take(p + "attn.c_proj.weight", q + "attn.W_O", (h, e, d))
        take(p + "attn.c_proj.bias", q + "attn.b_O")
        take(p + "ln_2.weight", q + "ln2.w")
        take(p + "ln_2.bias", q + "ln2.b")
        take(p + "mlp.c_fc.weight", q + "mlp.W_in")
        take(p + "mlp.c_fc.bias", q + "mlp.b_in")
        take(p + "mlp.c_proj.weight", q + "mlp.W_out")
        take(p + "mlp.c_proj.bias", q + "mlp.b_out")
    take("ln_f.weight", "ln_final.w")
    take("ln_f.bias", "ln_final.b")
    out.update({f"(hf) {k}": v for k, v in sd.items()})  # leftovers: reported as unexpected
    return out


def gpt2lab_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_gpt2lab`, with ``transformer.`` prefixes."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    d = model.cfg.d_model
    out = {"wte.weight": sd["embed.W_E"], "wpe.weight": sd["pos_embed.W_pos"],
           "ln_f.weight": sd["ln_final.w"], "ln_f.bias": sd["ln_final.b"]}
    for i in range(model.cfg.n_layers):
        p, q = f"h.{i}.", f"blocks.{i}."
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = sd[q + "ln1.w"], sd[q + "ln1.b"]
        out[p + "attn.c_attn.weight"] = torch.cat([sd[q + f"attn.W_{n}"].reshape(d, d) for n in "QKV"], dim=1)
        out[p + "attn.c_attn.bias"] = torch.cat([sd[q + f"attn.b_{n}"].reshape(d) for n in "QKV"])
        out[p + "attn.c_proj.weight"] = sd[q + "attn.W_O"].reshape(d, d)
        out[p + "attn.c_proj.bias"] = sd[q + "attn.b_O"]
        out[p + "ln_2.weight"], out[p + "ln_2.bias"] = sd[q + "ln2.w"], sd[q + "ln2.b"]
        out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = sd[q + "mlp.W_in"], sd[q + "mlp.b_in"]
        out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = sd[q + "mlp.W_out"], sd[q + "mlp.b_out"]
    return {"transformer." + k: v.contiguous() for k, v in out.items()}


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    st, binary = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        return read_safetensors(st)
    if binary.is_file():
        sd = torch_load_safely(binary, "convert a trusted copy to model.safetensors")
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f"{binary} is not a plain state dict of tensors")
        return sd
    raise UserError(f"{folder} has config.json but neither model.safetensors nor pytorch_model.bin")


def hf_config(cfg: GPTConfig, eot_token: int = 50256) -> dict:
    """Our config in Hugging Face ``GPT2Config`` terms."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.d_vocab, "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_mlp,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_range, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "bos_token_id": eot_token, "eos_token_id": eot_token,
        "tie_word_embeddings": True, "scale_attn_weights": True,
    }


def export_hf(model: GPT, tokenizer: Tokenizer, folder, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained`` loads,
    and ``tokenizer.json`` + ``tokenizer_config.json`` that ``AutoTokenizer.from_pretrained``
    loads to the same ids as ``tokenizer``."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"{folder} already exists and is not empty; choose a new --to directory or pass --overwrite")
    if model.cfg.d_head * model.cfg.n_heads != model.cfg.d_model:
        raise UserError("Hugging Face GPT-2 requires d_head * n_heads == d_model")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror}; choose another --to directory") from None
    tensors = gpt2lab_to_hf(model)
    write_bytes_atomic(folder / "model.safetensors", save_safetensors(tensors, metadata={"format": "pt"}))
    write_json(folder / "config.json", hf_config(model.cfg, tokenizer.eot_token))
    hf_tok = hf_tokenizer(tokenizer)  # same ids as ours
    write_atomic(folder / "tokenizer.json", lambda p: hf_tok.save(str(p)))
    # Name the generic class: otherwise AutoTokenizer picks GPT2Tokenizer for a
    # "gpt2" model and rebuilds a GPT-2-style pipeline that a char vocabulary does not fit.
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
        "model_max_length": model.cfg.n_ctx, "clean_up_tokenization_spaces": False})
    return folder
