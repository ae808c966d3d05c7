"""Text in: corpora, reading files, and token shards on disk."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


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
