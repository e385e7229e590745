"""Exports and loaders: HF ``tokenizer.json``, GPT-2 ``vocab.json`` + ``merges.txt``,
tiktoken ranks, and the native ``model.json`` (DESIGN §2).

Every writer takes a :class:`~gpubpe.BPEModel` (or anything with a
``to_model()``, such as a :class:`~gpubpe.Tokenizer`); every loader returns a
:class:`~gpubpe.BPEModel`, which :meth:`gpubpe.Tokenizer.from_model` encodes with.

Duplicate bytes. Two merges may create the same bytes (``(a, bc)`` and
``(ab, c)``). The native format keeps both ids. The other formats map bytes to
one id, and keep the first (lowest):

- ``tokenizer.json``, ``vocab.json`` + ``merges.txt``: the vocab holds the
  first id only (the later id is a hole in the id range); the merges list
  holds both merges at their ranks, and both produce the first id. HF and
  GPT-2 encoders apply merges by rank, so they encode exactly as gpubpe does.
- ``tokenizer.tiktoken``: one rank per bytes, the first id. tiktoken has no
  merges list: it merges the adjacent pair whose concatenation has the lowest
  rank, so the later merge takes the earlier merge's priority. Encodings can
  differ from gpubpe's only in pre-tokens where that priority matters; a
  tokenizer loaded back from this file lacks the later merge.

Models without duplicate bytes (the usual case) round-trip exactly through
every format. One more case only the native format and ``tokenizer.json``
hold: a special token with the same bytes as a merged token (``vocab.json``
maps a string to one id; there the special token's id wins).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from ._files import atomic_write_bytes, read_checked, write_set
from .model import MODEL_FILE, BPEModel, assign_special_ids, load
from .patterns import GPT2_PATTERN

HF_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TIKTOKEN_FILE = "tokenizer.tiktoken"

FORMATS = ("native", "hf", "gpt2", "tiktoken")


# ---------------------------------------------------------------------------
# GPT-2's byte-to-unicode escaping
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte: index ``b`` gives the char for byte ``b``.

    The 188 printable bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for
    themselves; the other 68, in byte order, take U+0100 upward (space is
    ``Ġ``, newline ``Ċ``).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + n)
            n += 1
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(bytes_to_unicode())}


def escape(token: bytes) -> str:
    """``token`` in GPT-2's byte-to-unicode alphabet."""
    # latin-1 maps byte b to code point b, which translate() looks up in the
    # table in C (1.5x the speed of a join over the bytes)
    return token.decode("latin-1").translate(bytes_to_unicode())


class _Escaped(dict):
    """``{token bytes: escape(token)}``, each token escaped once: one export
    writes the vocab and the merges twice (tokenizer.json, vocab.json and
    merges.txt), 190,000 escapes at vocab 32,000 for 32,000 distinct tokens."""

    def __missing__(self, token: bytes) -> str:
        s = self[token] = escape(token)
        return s


def unescape(s: str) -> bytes:
    """The bytes behind a GPT-2 escaped string; ``ValueError`` for a char outside the alphabet."""
    table = _unicode_to_byte()
    try:
        return bytes([table[c] for c in s])
    except KeyError as e:
        raise ValueError(f"{s!r} is not byte-to-unicode escaped ({e.args[0]!r} is no byte's stand-in)") from None


class _NotPlain(Exception):
    """A value :func:`_dumps_indented` leaves to ``json.dumps``."""


def _dumps_indented(doc, indent: int) -> str:
    """``json.dumps(doc, ensure_ascii=False, indent=indent)``, the same text.

    With ``indent``, ``json`` formats in Python (its C encoder has no
    indentation): 0.12 s of tokenizer.json at vocab 32,000 (2-core VM). Here
    strings go through the C string encoder and every list or dict is one
    ``join``. Only str keys, str, int, bool and None values, lists, tuples
    and dicts are written here; any other value leaves the document to
    ``json.dumps``."""
    enc = json.encoder.encode_basestring  # the C encoder where there is one; what ensure_ascii=False uses

    def value(v, pad: str) -> str:
        if isinstance(v, str):
            return enc(v)
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if type(v) is int:
            return int.__repr__(v)
        inner = pad + step
        if isinstance(v, dict):
            if not v:
                return "{}"
            if not all(type(k) is str for k in v):
                raise _NotPlain
            # str and int values inline: a call per vocab entry or merge side is most of the time
            items = [f"{inner}{enc(k)}: "
                     f"{enc(x) if type(x) is str else int.__repr__(x) if type(x) is int else value(x, inner)}"
                     for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(v, (list, tuple)):
            if not v:
                return "[]"
            sep = ",\n" + inner
            items = [enc(x) if type(x) is str else value(x, inner) for x in v]
            return "[\n" + inner + sep.join(items) + "\n" + pad + "]"
        raise _NotPlain

    step = " " * indent
    try:
        return value(doc, "")
    except _NotPlain:
        return json.dumps(doc, ensure_ascii=False, indent=indent)


# ---------------------------------------------------------------------------
# The common view of what is exported
# ---------------------------------------------------------------------------


def _as_model(obj) -> BPEModel:
    if isinstance(obj, BPEModel):
        return obj
    to_model = getattr(obj, "to_model", None)
    if callable(to_model):
        return to_model()
    raise TypeError(f"expected a gpubpe.BPEModel or gpubpe.Tokenizer, got {type(obj).__name__}")


def _ordinary_tokens(tok: BPEModel) -> list[tuple[int, bytes]]:
    """``(id, bytes)`` of every non-special token, first id per bytes, by id."""
    special = set(tok.special_ids().values())
    seen: set[bytes] = set()
    out = []
    for i in sorted(tok.vocab):
        b = tok.vocab[i]
        if i in special or b in seen:
            continue
        seen.add(b)
        out.append((i, b))
    return out


def _specials(tok: BPEModel) -> list[tuple[int, str]]:
    return sorted((i, s) for s, i in tok.special_ids().items())


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def onig_pattern(pattern: str) -> str:
    """``pattern`` as HF ``tokenizers`` (Oniguruma) reads it like ``regex`` does.

    Oniguruma takes ``X{m,n}+`` as ``(X{m,n})+``, a repetition, where ``regex``
    and tiktoken take a possessive interval: cl100k's ``\\p{N}{1,3}+`` would
    swallow whole runs of digits. The interval is written greedy instead, which
    splits alike wherever nothing after it in the alternative can backtrack
    into it (true of cl100k, and of every pattern whose possessive interval
    ends its alternative); tests check cl100k and o200k against tiktoken.
    """
    return re.sub(r"(?<!\\)(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def hf_json(obj, *, _escaped: _Escaped | None = None, _ordinary: list | None = None) -> dict:
    """The HF ``tokenizers`` document (``tokenizer.json``) for a model or tokenizer.

    Pre-tokenization is a ``Split`` on the model's pattern followed by
    ``ByteLevel`` without its own regex and without a prefix space, so any
    pattern exports, not only GPT-2's. (``_escaped``, ``_ordinary``: what
    :func:`export` made once for all its writers.)
    """
    tok = _as_model(obj)
    esc = _Escaped() if _escaped is None else _escaped
    vocab = {esc[b]: i for i, b in (_ordinary_tokens(tok) if _ordinary is None else _ordinary)}
    last = max(vocab.values(), default=-1)
    if any(i < last for i, _ in _specials(tok)):
        # HF gives an added token that the model's vocab lacks the id after the
        # model's last one, whatever the file says: special tokens between the
        # merges (a continued model) must be in the model's vocab to keep theirs
        for i, sp in _specials(tok):
            vocab.setdefault(escape(sp.encode("utf-8")), i)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, s in _specials(tok)
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pattern)}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            # pairs, not "a b" strings: the form tokenizers >= 0.20 writes
            "merges": [[esc[a], esc[b]] for a, b in tok.merges],
        },
    }


def write_hf(obj, path: str | os.PathLike) -> Path:
    """Write ``tokenizer.json``: loads with ``tokenizers.Tokenizer.from_file`` and
    ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``."""
    return atomic_write_bytes(path, _hf_bytes(_as_model(obj)))


def _hf_bytes(tok: BPEModel, escaped: _Escaped | None = None, ordinary: list | None = None) -> bytes:
    return _dumps_indented(hf_json(tok, _escaped=escaped, _ordinary=ordinary), 1).encode("utf-8")


def write_gpt2(obj, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write GPT-2-style ``vocab.json`` (escaped token -> id) and ``merges.txt``.

    Special tokens are in ``vocab.json`` with their ids, escaped like every
    other entry (GPT-2's own file holds ``<|endoftext|>`` the same way).
    """
    vocab, merges = _gpt2_bytes(_as_model(obj))
    return atomic_write_bytes(vocab_path, vocab), atomic_write_bytes(merges_path, merges)


def _gpt2_bytes(tok: BPEModel, escaped: _Escaped | None = None, ordinary: list | None = None
                ) -> tuple[bytes, bytes]:
    esc = _Escaped() if escaped is None else escaped
    vocab = {esc[b]: i for i, b in (_ordinary_tokens(tok) if ordinary is None else ordinary)}
    for i, s in _specials(tok):
        vocab[escape(s.encode("utf-8"))] = i
    lines = ["#version: 0.2"] + [f"{esc[a]} {esc[b]}" for a, b in tok.merges]
    return _dumps_indented(vocab, 0).encode("utf-8"), ("\n".join(lines) + "\n").encode("utf-8")


def tiktoken_ranks(obj) -> dict[bytes, int]:
    """``{token bytes: rank}`` for ``tiktoken.Encoding(mergeable_ranks=...)``;
    rank = id, the first id for duplicate bytes, special tokens left out."""
    return {b: i for i, b in _ordinary_tokens(_as_model(obj))}


def write_tiktoken(obj, path: str | os.PathLike) -> Path:
    """Write a ``.tiktoken`` file: ``base64(token) rank`` per line, by rank."""
    return atomic_write_bytes(path, _tiktoken_bytes(_as_model(obj)))


def _tiktoken_bytes(tok: BPEModel, ordinary: list | None = None) -> bytes:
    ranks = {b: i for i, b in (_ordinary_tokens(tok) if ordinary is None else ordinary)}  # tiktoken_ranks
    return "".join(f"{base64.b64encode(b).decode('ascii')} {r}\n" for b, r in ranks.items()).encode("ascii")


def to_tiktoken(obj, *, name: str = "gpubpe"):
    """A ``tiktoken.Encoding`` with the same ids (needs ``tiktoken``).

    >>> enc = to_tiktoken(load_any(Path("tokenizer/")))  # doctest: +SKIP
    >>> enc.encode("hello <|endoftext|>", allowed_special="all")  # doctest: +SKIP
    """
    import tiktoken

    tok = _as_model(obj)
    return tiktoken.Encoding(
        name,
        pat_str=tok.pattern,
        mergeable_ranks=tiktoken_ranks(tok),
        special_tokens=tok.special_ids(),
    )


def export(obj, directory: str | os.PathLike, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``obj`` into ``directory`` in each of ``formats``; returns the paths.

    native: ``model.json`` (needs a BPEModel, or a Tokenizer in the trainer's
    id layout); hf: ``tokenizer.json``; gpt2: ``vocab.json`` + ``merges.txt``;
    tiktoken: ``tokenizer.tiktoken``.

    The directory holds one tokenizer: the files are written as a set that
    replaces whatever set was there (files of another model that ``formats``
    does not name are removed), so no interruption or full disk leaves two
    models mixed (:mod:`gpubpe._files`). Every file is built in memory
    before the first byte is written.
    """
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
    files: dict[str, bytes] = {}
    if "native" in formats:
        files[MODEL_FILE] = _native(obj).to_json()
    tok = _as_model(obj)
    escaped = _Escaped()  # shared by the writers: each token escaped once, the token list made once
    ordinary = _ordinary_tokens(tok) if {"hf", "gpt2", "tiktoken"} & set(formats) else None
    if "hf" in formats:
        files[HF_FILE] = _hf_bytes(tok, escaped, ordinary)
    if "gpt2" in formats:
        files[VOCAB_FILE], files[MERGES_FILE] = _gpt2_bytes(tok, escaped, ordinary)
    if "tiktoken" in formats:
        files[TIKTOKEN_FILE] = _tiktoken_bytes(tok, ordinary)
    return write_set(directory, files)


def _native(obj) -> BPEModel:
    model = _as_model(obj)
    if not model.is_native():
        raise ValueError(
            "this tokenizer's ids are not in the trainer's layout (bytes 0..255 by value, merges, then "
            "special tokens), so model.json cannot hold it: export it as hf, gpt2 or tiktoken"
        )
    return model


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _read_gpt2_vocab(path: Path) -> dict[int, bytes]:
    """``{id: bytes}``: escaped entries unescaped, the others (special tokens
    written raw by other tools) as their UTF-8."""
    doc = json.loads(read_checked(path).decode("utf-8"))
    vocab: dict[int, bytes] = {}
    for s, i in doc.items():
        try:
            vocab[int(i)] = unescape(s)
        except ValueError:
            vocab[int(i)] = s.encode("utf-8")
    return vocab


def _read_gpt2_merges(path: Path) -> list[tuple[bytes, bytes]]:
    merges = []
    # as open(path, encoding="utf-8") reads it (universal newlines), from the checked bytes
    with io.TextIOWrapper(io.BytesIO(read_checked(path)), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: a merge line is two escaped tokens split by one space, got {line!r}")
            merges.append((unescape(parts[0]), unescape(parts[1])))
    return merges


def _model(vocab, merges, special_tokens, pattern) -> BPEModel:
    """A loaded model: specials that no id holds get the next free ids (see
    :func:`~gpubpe.model.assign_special_ids`), each distinct special once."""
    specials = list(dict.fromkeys(special_tokens or ()))
    vocab, _ = assign_special_ids(vocab, specials)
    return BPEModel(vocab=vocab, merges=merges, special_tokens=specials, pattern=pattern)


def load_gpt2(
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    *,
    special_tokens: Sequence[str] | None = None,
    pattern: str = GPT2_PATTERN,
) -> BPEModel:
    """A model from GPT-2-style ``vocab.json`` + ``merges.txt``.

    Only the ``special_tokens`` given are matched in text (as in the CS336
    ``from_files``); :func:`load_any` on a directory also finds the special
    tokens that ``gpubpe`` wrote into ``vocab.json``.
    """
    vocab = _read_gpt2_vocab(Path(vocab_path))
    merges = _read_gpt2_merges(Path(merges_path))
    return _model(vocab, merges, special_tokens, pattern)


def _gpt2_extra_tokens(vocab: Mapping[int, bytes], merges) -> list[str]:
    """Entries that are neither a byte nor made by a merge: the special tokens."""
    made = {a + b for a, b in merges}
    extra = []
    for i in sorted(vocab):
        b = vocab[i]
        if len(b) > 1 and b not in made:
            extra.append(b.decode("utf-8", "replace"))
    return extra


def load_hf(path: str | os.PathLike) -> BPEModel:
    """A model from an HF ``tokenizer.json`` holding a byte-level BPE."""
    path = Path(path)
    doc = json.loads(read_checked(path).decode("utf-8"))
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r}; only byte-level BPE loads")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"{path}: {key}={model[key]!r} is not byte-level BPE; only byte-level BPE loads")
    vocab = {int(i): unescape(s) for s, i in model["vocab"].items()}
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m  # legacy "a b" strings or pairs
        merges.append((unescape(a), unescape(b)))
    specials = []
    for t in sorted(doc.get("added_tokens") or [], key=lambda t: t["id"]):
        vocab[int(t["id"])] = t["content"].encode("utf-8")
        specials.append(t["content"])
    return _model(vocab, merges, specials, _hf_pattern(doc.get("pre_tokenizer"), path))


def _hf_pattern(pre, path: Path) -> str:
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            if step.get("add_prefix_space"):
                raise ValueError(f"{path}: ByteLevel add_prefix_space=true changes the text; not supported")
            return GPT2_PATTERN  # ByteLevel's built-in regex is GPT-2's
    raise ValueError(f"{path}: no pre-tokenization regex found (a Split regex or ByteLevel use_regex)")


def read_tiktoken(path: str | os.PathLike) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a ``.tiktoken`` file (same as tiktoken's ``load_tiktoken_bpe``)."""
    ranks = {}
    with io.BytesIO(read_checked(path)) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'base64 rank', got {line[:80]!r}") from None
    return ranks


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover merges from tiktoken ranks, in rank order.

    Each token's bytes are merged with tiktoken's rule using only the ranks
    below its own; what is left are the two halves that make it. A token that
    does not come out as two halves is not reachable by BPE: an error.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built by merging two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def load_tiktoken(
    path: str | os.PathLike,
    *,
    special_tokens: Sequence[str] | Mapping[str, int] | None = None,
    pattern: str = GPT2_PATTERN,
) -> BPEModel:
    """A model from a ``.tiktoken`` ranks file.

    The file holds neither special tokens nor the pattern: give them.
    ``special_tokens`` as a list takes the ids after the largest rank, in order;
    as a dict, the ids given.
    """
    ranks = read_tiktoken(path)
    vocab = {r: b for b, r in ranks.items()}
    specials: list[str] = []
    if special_tokens:
        if isinstance(special_tokens, Mapping):
            for s, i in sorted(special_tokens.items(), key=lambda kv: kv[1]):
                vocab[int(i)] = s.encode("utf-8")
                specials.append(s)
        else:
            specials = list(special_tokens)  # ids after the largest rank, in order
    return _model(vocab, merges_from_ranks(ranks), specials, pattern)


def load_any(path: Path, *, special_tokens: Sequence[str] | None = None) -> BPEModel:
    """The model in ``path`` (a directory or one file; see :meth:`gpubpe.Tokenizer.load`). A file that is not what its name says
    (wrong JSON shape, ids out of range, a merge of unknown tokens) is a
    ``ValueError`` naming the file, never a ``KeyError`` from deep inside."""
    try:
        return _load_any(Path(path), special_tokens)
    except (KeyError, IndexError, AttributeError, TypeError) as e:
        if isinstance(e, TypeError) and "special_tokens" in str(e):
            raise
        raise ValueError(f"{path} is malformed ({type(e).__name__}: {e}): write it again with "
                         "`gpubpe train --out` or `gpubpe export`") from None


def _load_any(path: Path, special_tokens) -> BPEModel:
    # Every reader goes through read_checked: a set that an interrupted write
    # left mixed or unfinished is refused for the files actually read.
    if path.is_dir():
        for name in (MODEL_FILE, HF_FILE, VOCAB_FILE, TIKTOKEN_FILE):
            if (path / name).exists():
                if name == VOCAB_FILE and not (path / MERGES_FILE).exists():
                    continue
                return _load_any(path / name, special_tokens)
        raise FileNotFoundError(
            f"{str(path)!r} holds no tokenizer ({MODEL_FILE}, {HF_FILE}, {VOCAB_FILE} + {MERGES_FILE} or "
            f"{TIKTOKEN_FILE}): point at a directory written by `gpubpe train --out` or `gpubpe export`"
        )
    if not path.exists():
        raise FileNotFoundError(f"no such tokenizer file or directory: {str(path)!r}")
    name = path.name
    if name == MODEL_FILE:
        return load(path)
    if name.endswith(".tiktoken"):
        return load_tiktoken(path, special_tokens=special_tokens)
    if name == VOCAB_FILE or name.endswith("vocab.json"):
        merges_path = path.with_name(MERGES_FILE)
        vocab = _read_gpt2_vocab(path)
        merges = _read_gpt2_merges(merges_path)
        specials = special_tokens if special_tokens is not None else _gpt2_extra_tokens(vocab, merges)
        return _model(vocab, merges, specials, GPT2_PATTERN)
    if name.endswith(".json"):
        return load_hf(path)
    raise ValueError(f"{str(path)!r}: unknown tokenizer file (expected {MODEL_FILE}, {HF_FILE}, "
                     f"{VOCAB_FILE} or *.tiktoken)")
