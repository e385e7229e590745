"""Training: validate, count into the WordTable, merge; from a corpus
(:func:`train`), from counts (:func:`train_from_counts`), and the CS336 adapter."""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from . import _validate, backends, config
from . import ties as _ties
from ._progress import bar, want_progress
from ._version import __version__
from .model import BPEModel, merges_digest
from .corpus import input_size, special_bytes
from .patterns import resolve_pattern
from .pretok import count_inputs, table_of, unicode as _unicode
from .wordtable import WordTable


class TrainingStoppedEarly(UserWarning):
    """Training made fewer merges than ``vocab_size`` asks for (the reason is in the message)."""


class LongTokenWarning(UserWarning):
    """Training made tokens so long that every export spells out megabytes per token."""


@dataclass
class TrainStats:
    """What a training run did, for the closing summary."""

    backend: str
    input_bytes: int
    pretokens: int
    unique_words: int
    num_merges: int
    vocab_size: int
    tokens: int
    pretoken_bytes: int
    seconds_count: float
    seconds_merge: float
    requested_merges: int = 0
    stop_reason: str = "the vocabulary size was reached"
    longest_token: int = 0
    replayed: int = 0  # merges replayed from a parent model

    @property
    def bytes_per_token(self) -> float:
        return self.pretoken_bytes / self.tokens if self.tokens else 0.0

    def summary(self) -> str:
        total = self.seconds_count + self.seconds_merge
        return "\n".join(
            [
                f"backend        {self.backend}",
                f"input          {self.input_bytes:,} bytes",
                f"pre-tokens     {self.pretokens:,} ({self.unique_words:,} unique)",
                f"merges         {self.num_merges:,} of {self.requested_merges:,}  (vocab size {self.vocab_size:,}): "
                f"{self.stop_reason}"
                + (f"; the first {self.replayed:,} replayed from the parent" if self.replayed else ""),
                f"longest token  {self.longest_token:,} bytes",
                f"bytes/token    {self.bytes_per_token:.3f} on the training data (special tokens aside)",
                f"time           pre-tokenize and count {self.seconds_count:.2f} s, "
                f"merge {self.seconds_merge:.2f} s, total {total:.2f} s",
            ]
        )


def _run_merges(run, table, num_merges: int, show: bool, options):
    """Run the backend in a worker thread while this thread waits, draws the
    bar from the progress counter, and takes interrupts.

    Always a thread, bar or not: a signal is handled only in the main thread
    and only between bytecodes, so a compiled loop called from the main
    thread would hold Ctrl-C until its end (and then fail inside Numba's
    dispatcher). Here Ctrl-C raises in this thread at once, sets the stop
    flag ``progress[1]``, which every backend checks after each merge (each
    batch on a device), and the interrupt propagates once the loop has
    returned: well within a second.
    """
    progress = np.zeros(2, np.int64)
    merges_bar = bar(show, total=num_merges, unit="merge", desc="merges")
    result: list = []
    error: list = []

    def work():
        try:
            result.append(run(table, num_merges, progress, options))
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=work, name="gpubpe-merge", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(config.PROGRESS_INTERVAL)
            if merges_bar is not None:
                merges_bar.update(int(progress[0]) - merges_bar.n)
    except KeyboardInterrupt:
        progress[1] = 1
        t.join()
        raise
    finally:
        if merges_bar is not None:
            merges_bar.update(int(progress[0]) - merges_bar.n)
            merges_bar.close()
    if error:
        raise error[0]
    return result[0]


def train_with_stats(
    inputs,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    backend: str = "auto",
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    pattern: str | None = None,
    max_token_length: int | None = None,
    ties: str | None = None,
    min_frequency: int | None = None,
    init: BPEModel | None = None,
    text_field: str = "text",
    text_column: str = "text",
) -> tuple[BPEModel, TrainStats]:
    """:func:`train`, also returning what the run did (:class:`TrainStats`)."""
    from .counts import WordCounts

    rules = _rules(backend, max_token_length=max_token_length, ties=ties, min_frequency=min_frequency, init=init)
    if isinstance(inputs, WordCounts) or (
        isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, WordCounts) for x in inputs)
    ):
        return _train_counts(inputs, vocab_size=vocab_size, special_tokens=special_tokens, rules=rules,
                             progress=progress, pattern=pattern)
    # 1. validate everything before reading a byte (a missing device fails in _rules, before counting)
    specials_str, pattern = _parent_settings(init, special_tokens, pattern)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    _check_parent_size(init, vocab_size)
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    paths, texts = _validate.inputs(inputs)
    specials = special_bytes(specials_str)
    show = want_progress(progress)

    # 2. pre-tokenize and count, streamed (threads on the GPT-2 path, processes on the regex path)
    t0 = time.perf_counter()
    nbytes = [0]
    read_bar = bar(show, total=input_size(paths), unit="B", unit_scale=True, desc="pre-tokenize")

    def on_bytes(n):
        nbytes[0] += n
        if read_bar is not None:
            read_bar.update(n)

    # the WordTable: the backend seam. On the CUDA backends the GPT-2 pattern is
    # pre-tokenized and counted on the device, and the table stays there for the
    # merge loop (other patterns: counted on the CPU, as for backend='cpu')
    manifest: list = []
    counter = rules.backend if rules.backend in ("cuda", "cuda-sim") and config.DEVICE_PRETOKENIZE else "cpu"
    if counter != "cpu" and rules.auto:
        size = input_size(paths)
        if size is not None and size < config.AUTO_DEVICE_COUNT_BYTES:
            counter = "cpu"  # too small to pay for the device's start-up
    table = table_of(count_inputs(paths, texts, specials, workers=nworkers, pattern=pattern, chunk_size=chunk_size,
                                  on_bytes=on_bytes, text_field=text_field, text_column=text_column,
                                  manifest=manifest, backend=counter))
    if read_bar is not None:
        read_bar.close()
    if nbytes[0] == 0:
        raise ValueError("the input is empty: nothing to train on")
    t1 = time.perf_counter()

    model, stats = _merge(table, vocab_size=vocab_size, special_tokens=specials_str, rules=rules, pattern=pattern,
                          show=show, source={"inputs": manifest if paths else "an iterable of text"})
    stats.input_bytes = nbytes[0]
    stats.seconds_count = t1 - t0
    return model, stats


def _train_counts(counts, *, vocab_size, special_tokens, rules, progress, pattern):
    """Training from :class:`~gpubpe.WordCounts` (several are merged first):
    the counts' pattern and special tokens are the model's; asking for others
    is an error, since the counts cannot be re-cut."""
    from .counts import WordCounts

    t0 = time.perf_counter()
    wc = WordCounts.merge(counts if isinstance(counts, (list, tuple)) else [counts])
    specials_str = _validate.special_tokens(special_tokens)
    if specials_str and list(specials_str) != wc.special_tokens:
        raise ValueError(f"the counts were made with special tokens {wc.special_tokens}, not {list(specials_str)}: "
                         "count again with these, or leave special_tokens out")
    if pattern is not None and resolve_pattern(pattern) != wc.pattern:
        raise ValueError("the counts were made with another pattern: count again with this one, or leave pattern out")
    parent = rules.parent
    if parent is not None and wc.special_tokens != parent.special_tokens:
        raise ValueError(f"init: the parent has special tokens {parent.special_tokens}, and the counts were made "
                         f"with {wc.special_tokens}: count again with the parent's")
    if parent is not None and wc.pattern != parent.pattern:
        raise ValueError("init: the counts were made with another pattern than the parent's: count again with "
                         "the parent's pattern (gpubpe.load(...).pattern)")
    specials_str = tuple(wc.special_tokens)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    _check_parent_size(rules.parent, vocab_size)
    table = wc.to_table()
    t1 = time.perf_counter()
    model, stats = _merge(table, vocab_size=vocab_size, special_tokens=specials_str, rules=rules, pattern=wc.pattern,
                          show=want_progress(progress),
                          source={"inputs": wc.meta.get("inputs", []), "counts": _table_digest(table)},
                          unicode=wc.meta.get("unicode"))
    stats.input_bytes = sum(int(i.get("size", 0)) for i in wc.meta.get("inputs", []))
    stats.seconds_count = t1 - t0
    return model, stats


@dataclass(frozen=True)
class _Rules:
    """Every option that decides the merges, checked, and the backend that runs them."""

    backend: str
    run: object
    max_token_length: int | None
    ties: str
    min_frequency: int
    parent: BPEModel | None
    auto: bool = False  # the backend was chosen by 'auto'


def _rules(backend, *, max_token_length, ties, min_frequency, init) -> _Rules:
    if init is not None and not isinstance(init, BPEModel):
        raise TypeError(f"init must be a gpubpe.BPEModel (gpubpe.load('tok/')), got {type(init).__name__}")
    if init is not None and not init.is_native():
        raise ValueError("init: the parent's ids are not in the trainer's layout (bytes 0..255, merges, special "
                         "tokens), so its ids cannot be kept: continue from a model gpubpe trained")
    if ties is None:
        ties = "cs336" if init is None else init.ties
    ties = _ties.check(ties)
    if init is not None and init.ties != ties:
        raise ValueError(f"init: the parent was trained with ties={init.ties!r}; continue with the same rule "
                         f"(ties={init.ties!r}), or the merges would not be one run")
    max_token_length = _validate.max_token_length(max_token_length)
    min_frequency = _validate.min_frequency(min_frequency)
    asked = _validate.backend(backend)
    name, run = backends.select(asked)
    return _Rules(name, run, max_token_length, ties, min_frequency, init, auto=asked == "auto")


def _parent_settings(parent, special_tokens, pattern):
    """``(special tokens, pattern)`` of a run from a corpus: the parent's when
    continuing (other special tokens are refused: the parent's merges were
    learnt on text cut its way; an explicit ``pattern=`` is taken as given)."""
    specials = _validate.special_tokens(special_tokens)
    if parent is None:
        return specials, resolve_pattern("gpt2" if pattern is None else pattern)
    if specials and list(specials) != parent.special_tokens:
        raise ValueError(f"init: the parent has special tokens {parent.special_tokens}, not {list(specials)}: "
                         "leave special_tokens out to use the parent's")
    return tuple(parent.special_tokens), resolve_pattern(parent.pattern if pattern is None else pattern)


def _check_parent_size(parent, vocab_size):
    if parent is not None and vocab_size < len(parent.vocab):
        raise ValueError(f"init: vocab_size={vocab_size:,} is below the parent's {len(parent.vocab):,}: a smaller "
                         f"vocabulary is a truncation of the parent (`gpubpe export --vocab-size`, "
                         f"BPEModel.truncated), not a continuation")


def _table_digest(table) -> str:
    h = hashlib.sha256()
    for a in (table.symbols, table.offsets, table.counts):
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()


def _first_duplicate(merge_ids) -> int:
    """The index of the first merge whose bytes an earlier token holds, or -1."""
    tok = [bytes([i]) for i in range(256)]
    seen = set(tok)
    for i, (a, b) in enumerate(merge_ids):
        t = tok[a] + tok[b]
        if t in seen:
            return i
        seen.add(t)
        tok.append(t)
    return -1


def _merge(table, *, vocab_size, special_tokens, rules, pattern, show, source, unicode=None):
    """The merge loop over a WordTable, its memory sized by the merges that can
    happen, and the model with what the run did (counting fields left zero).
    ``unicode``: the class table the counts were made with (default: the installed one)."""
    pretokens = int(table.counts.sum())
    pretoken_bytes = int(((table.offsets[1:] - table.offsets[:-1]) * table.counts).sum())
    requested = vocab_size - 256 - len(special_tokens)
    parent = rules.parent
    parent_ids = [] if parent is None else parent.merge_ids()
    forced = np.asarray(parent_ids, np.int32).reshape(-1, 2)
    # a parent's merges are made even where they change no word here
    num_merges = min(requested, len(forced) + table.max_merges())
    if rules.auto and rules.backend == "cuda" and table.symbols.shape[0] < config.AUTO_CUDA_MIN_SYMBOLS:
        # too small to pay for the device's start-up: 'auto' means the faster one
        rules = replace(rules, backend="cpu", run=backends.get("cpu"))
    if rules.backend == "cpu" and getattr(table, "on_device", False):
        table = table.to_host()  # counted on the device, merged on the CPU
    options = backends.MergeOptions(max_len=rules.max_token_length or 0, rank=_ties.byte_rank(rules.ties),
                                    forced=forced, min_count=rules.min_frequency)
    t1 = time.perf_counter()
    merge_ids, merge_counts, ntokens = _run_merges(rules.run, table, num_merges, show, options)
    merge_ids = np.asarray(merge_ids).tolist()
    if _ties.reuses_ids(rules.ties):
        dup = _first_duplicate(merge_ids)
        if dup >= 0:
            # HF keeps one id per distinct string, so its run leaves this one
            # at the first merge that repeats a token: the merges up to it
            # stand, and the rest is run again with that id reused (the plain
            # Python loop: a rare case, kept simple and exact)
            from .backends.cpu_python import merge_loop_python

            host = table.to_host() if getattr(table, "on_device", False) else table
            merges, merge_counts, ntokens = merge_loop_python(
                host.symbols, host.offsets, host.counts, requested, np.zeros(2, np.int64), options.max_len,
                options.rank, np.asarray(merge_ids[: dup + 1], np.int32), options.min_count, reuse=True)
            merge_ids = merges.tolist()
    t2 = time.perf_counter()

    made = len(merge_ids)
    unicode = unicode or _unicode.table_id()
    record = {
        "gpubpe": __version__,
        "pattern": pattern,
        "unicode": unicode,
        "special_tokens": list(special_tokens),
        "ties": rules.ties,
        "options": {"vocab_size": vocab_size, "max_token_length": rules.max_token_length,
                    "min_frequency": rules.min_frequency, "backend": rules.backend},
        **source,
        "parent": None if parent is None else {
            "vocab_size": len(parent.vocab),
            "merges_digest": merges_digest(parent_ids),
        },
        "merges_digest": merges_digest(merge_ids),
    }
    model = BPEModel.from_merge_ids(merge_ids, special_tokens, pattern=pattern, unicode=unicode,
                                    specials_after=None if parent is None else len(parent.merges),
                                    merge_counts=[int(c) for c in merge_counts], ties=rules.ties, record=record)
    longest = max((len(a) + len(b) for a, b in model.merges), default=1)
    # HF's vocab_size counts distinct token strings; the others count ids
    reached = (len({a + b for a, b in model.merges}) if _ties.reuses_ids(rules.ties) else made) >= requested
    if reached:
        reason = "the vocabulary size was reached"
    elif pretokens == 0:
        reason = "the input holds only special tokens: there is nothing to merge"
    elif rules.min_frequency and made < num_merges:
        reason = f"the best pair left occurs fewer than min_frequency={rules.min_frequency:,} times"
    elif rules.max_token_length is not None:
        reason = f"no pair is left whose token would fit in max_token_length={rules.max_token_length} bytes"
    else:
        reason = "no pair is left to merge (every pre-token is one token)"
    if not reached:
        warnings.warn(f"training stopped after {made:,} of {requested:,} merges: {reason}; "
                      f"the vocabulary has {len(model.vocab):,} ids, not {vocab_size:,}",
                      TrainingStoppedEarly, stacklevel=4)
    if longest > config.LONG_TOKEN_WARN_BYTES:
        warnings.warn(f"the longest token is {longest:,} bytes (a long run without a pre-token boundary); "
                      f"every export spells each token out: pass max_token_length= to cap "
                      f"tokens", LongTokenWarning, stacklevel=4)
    stats = TrainStats(
        backend=rules.backend,
        input_bytes=0,
        pretokens=pretokens,
        unique_words=table.num_words,
        num_merges=made,
        vocab_size=len(model.vocab),
        tokens=int(ntokens),
        pretoken_bytes=pretoken_bytes,
        seconds_count=0.0,
        seconds_merge=t2 - t1,
        requested_merges=requested,
        stop_reason=reason,
        longest_token=longest,
        replayed=len(forced),
    )
    return model, stats


def train_from_counts(
    word_counts,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    backend: str = "auto",
    pattern: str = "gpt2",
    progress: bool | None = None,
    max_token_length: int | None = None,
    ties: str = "cs336",
    min_frequency: int | None = None,
) -> BPEModel:
    """Train from pre-token counts instead of a corpus: the merge loop alone.

    word_counts:    ``{pre-token: count}`` (bytes or str keys, int counts > 0;
                    what :func:`gpubpe.count_pretokens` returns, or counts made
                    elsewhere and added up), or a :class:`gpubpe.WordTable`.
                    Counts are additive, so counting can be split over files,
                    processes or machines and merged first: the merges equal
                    those of training on the whole corpus.
    special_tokens: the special tokens the counts were made with (they cut the
                    text and are not in the counts); they get the last ids.
    pattern:        the pattern the counts were made with, recorded in the model.

    Other options as in :func:`train`.

    >>> counts = gpubpe.count_pretokens("corpus.txt", special_tokens=["<|endoftext|>"])  # doctest: +SKIP
    >>> model = gpubpe.train_from_counts(counts, vocab_size=32000, special_tokens=["<|endoftext|>"])  # doctest: +SKIP
    """
    specials_str = _validate.special_tokens(special_tokens)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    pattern = resolve_pattern(pattern)
    rules = _rules(backend, max_token_length=max_token_length, ties=ties, min_frequency=min_frequency, init=None)
    table = _word_table(word_counts)
    return _merge(table, vocab_size=vocab_size, special_tokens=specials_str, rules=rules, pattern=pattern,
                  show=want_progress(progress), source={"counts": _table_digest(table)})[0]


def train(
    inputs,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    backend: str = "auto",
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    pattern: str | None = None,
    max_token_length: int | None = None,
    ties: str | None = None,
    min_frequency: int | None = None,
    init: BPEModel | None = None,
    text_field: str = "text",
    text_column: str = "text",
) -> BPEModel:
    """Train a byte-level BPE tokenizer with the CS336 rules, exactly.

    inputs:         a path (a file, ``-`` for standard input, a directory, a glob;
                    plain or ``.gz``/``.xz``/``.bz2``/``.zst`` text, JSONL,
                    Parquet), a list of paths, an iterable of str (one stream,
                    joined like the lines of a file) or of ``list[str]``
                    (batches: each string a document), or word counts
                    (:class:`gpubpe.WordCounts`, or a list of them, merged).
                    Each file, record and batch string is a document of its own.
    vocab_size:     256 bytes + merges + special tokens. Fewer merges are made
                    when no pair is left.
    special_tokens: cut the input (longest first), never merge, get the last ids.
    backend:        'auto' (CUDA when a device answers, else CPU), 'cpu', 'cuda',
                    or 'cuda-sim' (the CUDA backend's code on the CPU, for tests).
    workers:        pre-tokenization workers (default: all cores): threads for the
                    GPT-2 pattern (the Numba code releases the GIL), processes for
                    other patterns.
    chunk_size:     bytes per pre-tokenization chunk (default: config.CHUNK_SIZE,
                    4 MiB, on the CPU; config.DEVICE_CHUNK_SIZE, 32 MiB, where
                    the device counts); the result does not depend on it.
    progress:       progress bars on stderr (default: when stderr is a terminal).
    pattern:        pre-tokenization: 'gpt2' (the default, or the parent's with
                    ``init``; the fast byte-level path),
                    'cl100k', 'o200k' (tiktoken's patterns) or any regex for the
                    `regex` package (slower, same results as regex.findall). The
                    model stores the regex itself.
    text_field:     the JSONL field that holds the text (default ``text``).
    text_column:    the Parquet column that holds the text (default ``text``).
    max_token_length: None (default: exact, no cap) or the most bytes a merged
                    token may hold: a pair whose token would be longer is never
                    merged (everything else, ties included, unchanged). HF
                    ``tokenizers``' own cap L lets tokens of at most
                    max(2, L - 1) bytes through: pass that for HF's behaviour.
    ties:           the rule for equal counts: 'cs336' (the default, or the
                    parent's with ``init``: the greatest
                    (left bytes, right bytes)), 'hf' (HF tokenizers' BpeTrainer
                    with ByteLevel, bit for bit, one id per distinct token
                    string) or 'rustbpe' (rustbpe and bpeasy); see :mod:`gpubpe.ties`.
    min_frequency:  stop at the first best pair that occurs fewer times (HF's
                    ``min_frequency``); the merges are a prefix of the run without it.
    init:           a model to continue (:func:`gpubpe.load`): the input is cut
                    and split with its special tokens and pattern, its merges are
                    replayed with training semantics, and training goes on to
                    ``vocab_size``; every parent id keeps its meaning, and the new
                    ids follow the parent's last id (its special tokens
                    included). Training to n and continuing to N gives exactly
                    the merges of training to N.

    Fewer merges than asked for (no pair left, only special tokens) warn with
    :class:`TrainingStoppedEarly`; tokens over a megabyte warn with
    :class:`LongTokenWarning`. Ctrl-C stops the merge loop within a second
    (``KeyboardInterrupt``).

    >>> model = train(["corpus.txt"], vocab_size=1000, special_tokens=["<|endoftext|>"])  # doctest: +SKIP
    >>> model.merges[:2]  # doctest: +SKIP
    [(b' ', b't'), (b'h', b'e')]
    """
    return train_with_stats(
        inputs,
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        backend=backend,
        workers=workers,
        chunk_size=chunk_size,
        progress=progress,
        pattern=pattern,
        max_token_length=max_token_length,
        ties=ties,
        min_frequency=min_frequency,
        init=init,
        text_field=text_field,
        text_column=text_column,
    )[0]


def _word_table(counts):
    """A :class:`~gpubpe.wordtable.WordTable` from a WordTable or ``{pre-token: count}``."""
    if isinstance(counts, WordTable):
        return counts
    if not hasattr(counts, "items"):
        raise TypeError(f"word_counts must be a dict of pre-token -> count or a WordTable, got {type(counts).__name__}")
    out: dict[bytes, int] = {}
    for w, c in counts.items():
        if isinstance(w, str):
            w = w.encode("utf-8", "surrogateescape")
        elif not isinstance(w, (bytes, bytearray)):
            raise TypeError(f"word_counts keys must be bytes or str, got {type(w).__name__} ({w!r:.40})")
        if not _validate.is_int(c):
            raise TypeError(f"word_counts values must be ints, got {type(c).__name__} for {w!r:.40}")
        if c < 0:
            raise ValueError(f"word_counts must not be negative, got {c} for {w!r:.40}")
        if c and w:
            out[bytes(w)] = out.get(bytes(w), 0) + int(c)
    if not out:
        raise ValueError("word_counts is empty: nothing to train on")
    return WordTable.from_counts(out)


def train_bpe(input_path, vocab_size: int, special_tokens: list[str], **kwargs):
    """The CS336 adapter, same signature: ``(vocab, merges)`` for ``input_path``.

    Options of :func:`train` (``backend=``, ``workers=``...) go through ``kwargs``.
    """
    kwargs.setdefault("progress", False)
    model = train(input_path, vocab_size=vocab_size, special_tokens=special_tokens, **kwargs)
    return model.vocab, model.merges
