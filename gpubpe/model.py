"""The trained model: plain data, and its native on-disk format."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .pretokenize import GPT2_PATTERN

FORMAT = "gpubpe-bpe"
VERSION = 1
MODEL_FILE = "model.json"


@dataclass
class BPEModel:
    """A trained byte-level BPE tokenizer, as plain data.

    vocab:          ``{id: token bytes}``; ids 0..255 are the single bytes, then one
                    id per merge in creation order, then the special tokens.
    merges:         ``[(left bytes, right bytes), ...]`` in creation order; merge
                    ``i`` created id ``256 + i``.
    special_tokens: in the order given; special token ``j`` has id
                    ``256 + len(merges) + j``.
    pattern:        the pre-tokenization regex.

    Two merges may create the same bytes (``(a, bc)`` and ``(ab, c)``); both
    ids stay in ``vocab``, and every export keeps the first (lowest) id for them.
    """

    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str] = field(default_factory=list)
    pattern: str = GPT2_PATTERN

    @classmethod
    def from_merge_ids(cls, merge_ids, special_tokens, pattern: str = GPT2_PATTERN) -> "BPEModel":
        """Build from merges as ``(left_id, right_id)`` rows (what the backends return)."""
        vocab = {i: bytes([i]) for i in range(256)}
        merges = []
        for i, (a, b) in enumerate(merge_ids):
            left, right = vocab[int(a)], vocab[int(b)]
            merges.append((left, right))
            vocab[256 + i] = left + right
        base = len(vocab)
        for j, s in enumerate(special_tokens):
            vocab[base + j] = s.encode("utf-8")
        return cls(vocab=vocab, merges=merges, special_tokens=list(special_tokens), pattern=pattern)

    def merge_ids(self) -> list[tuple[int, int]]:
        """Merges as id pairs, resolving each side to the id that created it."""
        first: dict[bytes, int] = {}
        out = []
        for i in range(256):
            first[bytes([i])] = i
        for i, (a, b) in enumerate(self.merges):
            out.append((first[a], first[b]))
            first.setdefault(a + b, 256 + i)
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``model.json`` into ``directory`` (created if needed); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab_size": len(self.vocab),
            # merge i is [left id, right id] and creates id 256 + i
            "merges": [list(p) for p in self.merge_ids()],
        }
        path = d / MODEL_FILE
        atomic_write_text(path, json.dumps(doc, ensure_ascii=False, separators=(",", ":")).replace('],[', '],\n['))
        return path


def load(directory: str | os.PathLike) -> BPEModel:
    """Read a model written by :meth:`BPEModel.save` (or ``gpubpe train --out``)."""
    d = Path(directory)
    path = d / MODEL_FILE if d.is_dir() else d
    if not path.exists():
        raise FileNotFoundError(f"no {MODEL_FILE} in {str(directory)!r}: point at a directory written by `gpubpe train --out`")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path} is not a gpubpe model (format {doc.get('format')!r} version {doc.get('version')!r})")
    model = BPEModel.from_merge_ids(doc["merges"], doc["special_tokens"], doc["pattern"])
    return model


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename: an
    interrupted run leaves the old file or none, never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
