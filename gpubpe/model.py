"""The trained model: plain data, and its native on-disk format."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ._files import read_checked, write_set
from .patterns import GPT2_PATTERN

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
    unicode:        the Unicode class table the corpus was pre-tokenized with
                    (``regex-<version>:<hash>``, see :func:`gpubpe.pretok.unicode.table_id`);
                    ``None`` when unknown (a model from another tool).
    specials_after: ``None`` (special tokens after every merge), or the number
                    of merges before them: a model continued from a parent
                    (``train(init=...)``) keeps every parent id, so its new
                    merges follow the parent's special tokens.
    merge_counts:   each merge's count when it was made (``None`` when unknown).
    ties:           the tie rule it was trained with (:mod:`gpubpe.ties`).
    record:         how it was made (gpubpe version, options, the inputs'
                    manifest or the counts' digest, the parent, a digest of the
                    merges): plain data, saved in ``model.json``.

    Two merges may create the same bytes (``(a, bc)`` and ``(ab, c)``); both
    ids stay in ``vocab``, and every export keeps the first (lowest) id for them.
    """

    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str] = field(default_factory=list)
    pattern: str = GPT2_PATTERN
    unicode: str | None = None
    specials_after: int | None = None
    merge_counts: list[int] | None = None
    ties: str = "cs336"
    record: dict | None = None

    @classmethod
    def from_merge_ids(cls, merge_ids, special_tokens, pattern: str = GPT2_PATTERN, unicode: str | None = None,
                       *, specials_after: int | None = None, **fields) -> "BPEModel":
        """Build from merges as ``(left_id, right_id)`` rows in the trainer's
        numbering (merge i makes 256 + i; what the backends return)."""
        n = len(merge_ids)
        after = n if specials_after is None else min(int(specials_after), n)
        nspecial = len(special_tokens)

        def model_id(t: int) -> int:  # trainer numbering -> this model's ids
            return t if t < 256 + after else t + nspecial

        vocab = {i: bytes([i]) for i in range(256)}
        merges = []
        for i, (a, b) in enumerate(merge_ids):
            left, right = vocab[model_id(int(a))], vocab[model_id(int(b))]
            merges.append((left, right))
            vocab[model_id(256 + i)] = left + right
        for j, s in enumerate(special_tokens):
            vocab[256 + after + j] = s.encode("utf-8")
        vocab = dict(sorted(vocab.items()))
        return cls(vocab=vocab, merges=merges, special_tokens=list(special_tokens), pattern=pattern, unicode=unicode,
                   specials_after=None if after == n else after, **fields)

    def special_ids(self) -> dict[str, int]:
        """``{special token: id}``: where the layout puts them when the model
        has one, else by the rule of :func:`assign_special_ids`."""
        if self.specials_after is not None:
            base = 256 + self.specials_after
            if all(self.vocab.get(base + j) == s.encode("utf-8") for j, s in enumerate(self.special_tokens)):
                return {s: base + j for j, s in enumerate(self.special_tokens)}
        return assign_special_ids(self.vocab, self.special_tokens)[1]

    def is_native(self) -> bool:
        """Whether ``model.json`` can hold this model: ids in the trainer's layout
        (bytes 0..255 by value, one id per merge in order, the special tokens
        after the merges or after ``specials_after`` of them)."""
        try:
            layout = BPEModel.from_merge_ids(self.merge_ids(), self.special_tokens, specials_after=self.specials_after)
        except (KeyError, ValueError):
            return False
        return layout.vocab == self.vocab

    def truncated(self, vocab_size: int) -> "BPEModel":
        """The model with ``vocab_size`` ids: the first merges and every special
        token. Greedy BPE is a prefix process (each merge depends only on those
        before it), so this is exactly the model training to ``vocab_size``
        would have made, from the same counts and options."""
        if not self.is_native():
            raise ValueError("only a model in the trainer's layout can be truncated (bytes, merges, special tokens)")
        n = vocab_size - 256 - len(self.special_tokens)
        if n < 0 or n > len(self.merges):
            raise ValueError(f"vocab_size must be between {256 + len(self.special_tokens):,} and {len(self.vocab):,} "
                             f"(this model's size), got {vocab_size:,}")
        kept = self.merge_ids()[:n]
        record = dict(self.record or {})
        if record:
            record["truncated_from"] = {"vocab_size": len(self.vocab), "merges_digest": record.get("merges_digest")}
            record["merges_digest"] = merges_digest(kept)
        return BPEModel.from_merge_ids(
            kept, self.special_tokens, self.pattern, self.unicode, specials_after=self.specials_after,
            merge_counts=None if self.merge_counts is None else self.merge_counts[:n], ties=self.ties,
            record=record or None)

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

    def to_json(self) -> bytes:
        """The ``model.json`` document, as bytes."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab_size": len(self.vocab),
            "unicode": self.unicode,
            "ties": self.ties,
            "special_tokens_after": self.specials_after,
            # merge i is [left id, right id] and creates id 256 + i (trainer
            # numbering: ids from 256 + special_tokens_after on are shifted
            # up by the number of special tokens)
            "merges": [list(p) for p in self.merge_ids()],
            "merge_counts": self.merge_counts,
            "record": self.record,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).replace("],[", "],\n[").encode("utf-8")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``model.json`` into ``directory`` (created if needed); returns its path.

        The directory holds one tokenizer: files another model left there
        (``tokenizer.json``...) are removed, and the set is swapped in whole
        (:mod:`gpubpe._files`), so an interruption never leaves two models mixed.
        """
        return write_set(directory, {MODEL_FILE: self.to_json()})[0]


def merges_digest(merge_ids) -> str:
    """SHA-256 of the merges as id pairs (trainer numbering): two runs made the
    same merges exactly when their digests agree."""
    doc = json.dumps([[int(a), int(b)] for a, b in merge_ids], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


def assign_special_ids(vocab, special_tokens) -> tuple[dict[int, bytes], dict[str, int]]:
    """``(vocab, {special: id})`` with an id for every special token.

    A special token takes the highest id holding its bytes: special tokens come
    after the merges in every layout, and a merge may have made the same bytes
    (a special "the" and the token "the" inside " there"). One that no id holds
    gets the next free id, in the order given; ``vocab`` is then a new dict.
    """
    last_id: dict[bytes, int] = {}
    for i in sorted(vocab):
        last_id[vocab[i]] = i
    ids: dict[str, int] = {}
    out = vocab
    next_id = max(vocab, default=-1) + 1
    for s in special_tokens:
        b = s.encode("utf-8")
        if b in last_id:
            ids[s] = last_id[b]
        else:
            if out is vocab:
                out = dict(vocab)
            out[next_id] = b
            last_id[b] = ids[s] = next_id
            next_id += 1
    return out, ids


def _malformed(path, what: str) -> ValueError:
    return ValueError(f"{path} is malformed: {what}; write it again with `gpubpe train --out` or `gpubpe export`")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def from_json(doc, path="model.json") -> BPEModel:
    """A model from the parsed ``model.json`` document, every field checked."""
    if not isinstance(doc, dict):
        raise _malformed(path, f"the document is a JSON {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path} is not a gpubpe model (format {doc.get('format')!r} version {doc.get('version')!r})")
    for key in ("pattern", "special_tokens", "merges"):
        if key not in doc:
            raise _malformed(path, f"the key {key!r} is missing")
    pattern, specials, merges = doc["pattern"], doc["special_tokens"], doc["merges"]
    if not isinstance(pattern, str) or not pattern:
        raise _malformed(path, f"'pattern' must be a non-empty string, got {str(pattern)[:80]!r}")
    if not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials):
        raise _malformed(path, f"'special_tokens' must be a list of non-empty strings, got {str(specials)[:80]}")
    if len(set(specials)) != len(specials):
        raise _malformed(path, "'special_tokens' lists a token twice")
    if not isinstance(merges, list):
        raise _malformed(path, f"'merges' must be a list of [left id, right id], got {type(merges).__name__}")
    for i, m in enumerate(merges):
        if not (isinstance(m, list) and len(m) == 2 and _is_int(m[0]) and _is_int(m[1])):
            raise _malformed(path, f"merge {i} is {str(m)[:80]}, not [left id, right id]")
        if not (0 <= m[0] < 256 + i and 0 <= m[1] < 256 + i):
            raise _malformed(path, f"merge {i} is {m}: its ids must be below {256 + i} (the ids made before it)")
    size = doc.get("vocab_size")
    made = 256 + len(merges) + len(specials)
    if size is not None and size != made:
        raise _malformed(path, f"'vocab_size' is {size!r} but the merges and special tokens make {made}")
    unicode = doc.get("unicode")
    if unicode is not None and not isinstance(unicode, str):
        raise _malformed(path, f"'unicode' must be a string or null, got {str(unicode)[:80]}")
    after = doc.get("special_tokens_after")
    if after is not None and not (_is_int(after) and 0 <= after < len(merges)):
        raise _malformed(path, f"'special_tokens_after' must be null or a merge count below {len(merges)}, got {after!r}")
    counts = doc.get("merge_counts")
    if counts is not None and not (isinstance(counts, list) and len(counts) == len(merges)
                                   and all(_is_int(c) and c >= 0 for c in counts)):
        raise _malformed(path, "'merge_counts' must be null or one count >= 0 per merge")
    from .ties import TIES

    ties = doc.get("ties", "cs336")
    if ties not in TIES:
        raise _malformed(path, f"'ties' must be one of {', '.join(TIES)}, got {str(ties)[:80]!r}")
    record = doc.get("record")
    if record is not None and not isinstance(record, dict):
        raise _malformed(path, f"'record' must be an object or null, got {type(record).__name__}")
    return BPEModel.from_merge_ids(merges, specials, pattern, unicode=unicode, specials_after=after,
                                   merge_counts=counts, ties=ties, record=record)


def load(directory: str | os.PathLike) -> BPEModel:
    """Read a model written by :meth:`BPEModel.save` (or ``gpubpe train --out``).

    A model pre-tokenized with another Unicode table than the installed
    ``regex`` gives (a newer or older ``regex``) loads with a
    :class:`UnicodeTableWarning`: text in the characters whose class changed
    may pre-tokenize differently now.
    """
    d = Path(directory)
    path = d / MODEL_FILE if d.is_dir() else d
    if not path.exists():
        raise FileNotFoundError(f"no {MODEL_FILE} in {str(directory)!r}: point at a directory written by `gpubpe train --out`")
    try:
        doc = json.loads(read_checked(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _malformed(path, f"it is not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise _malformed(path, f"it is not JSON ({e.msg} at line {e.lineno})") from None
    model = from_json(doc, path)
    check_unicode(model, path)
    return model


class UnicodeTableWarning(UserWarning):
    """A model was trained under another Unicode class table than the one installed."""


def check_unicode(model: BPEModel, where="the model") -> None:
    """Warn when ``model`` was pre-tokenized with another class table than the installed one."""
    if model.unicode is None:
        return
    from .pretok import unicode as _unicode

    now = _unicode.table_id()
    if model.unicode.rsplit(":", 1)[-1] != now.rsplit(":", 1)[-1]:
        warnings.warn(
            f"{where} was trained with the Unicode table {model.unicode}, and the installed regex gives "
            f"{now}: text in the characters whose class changed may pre-tokenize differently "
            f"(install the regex version the model names to match it exactly)",
            UnicodeTableWarning,
            stacklevel=3,
        )
