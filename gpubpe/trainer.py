"""Training: validate, count into the WordTable, merge; from a corpus
(:func:`train`), from counts (:func:`train_from_counts`), and the CS336 adapter."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import _validate, backends, config
from ._progress import bar, want_progress
from .model import BPEModel
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
                f"{self.stop_reason}",
                f"longest token  {self.longest_token:,} bytes",
                f"bytes/token    {self.bytes_per_token:.3f} on the training data (special tokens aside)",
                f"time           pre-tokenize and count {self.seconds_count:.2f} s, "
                f"merge {self.seconds_merge:.2f} s, total {total:.2f} s",
            ]
        )


def _run_merges(run, table, num_merges: int, show: bool, max_token_length: int | None):
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
            result.append(run(table, num_merges, progress, max_token_length=max_token_length))
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
    chunk_size: int = config.CHUNK_SIZE,
    progress: bool | None = None,
    pattern: str = "gpt2",
    max_token_length: int | None = None,
    text_field: str = "text",
    text_column: str = "text",
) -> tuple[BPEModel, TrainStats]:
    """:func:`train`, also returning what the run did (:class:`TrainStats`)."""
    from .counts import WordCounts

    if isinstance(inputs, WordCounts) or (
        isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, WordCounts) for x in inputs)
    ):
        return _train_counts(inputs, vocab_size=vocab_size, special_tokens=special_tokens, backend=backend,
                             progress=progress, pattern=pattern, max_token_length=max_token_length)
    # 1. validate everything before reading a byte
    specials_str = _validate.special_tokens(special_tokens)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    pattern = resolve_pattern(pattern)
    backend, run, max_token_length = _select(backend, max_token_length)  # a missing device fails before counting
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

    # the WordTable: the backend seam
    table = table_of(count_inputs(paths, texts, specials, workers=nworkers, pattern=pattern, chunk_size=chunk_size,
                                  on_bytes=on_bytes, text_field=text_field, text_column=text_column))
    if read_bar is not None:
        read_bar.close()
    if nbytes[0] == 0:
        raise ValueError("the input is empty: nothing to train on")
    t1 = time.perf_counter()

    model, stats = _merge(table, vocab_size=vocab_size, special_tokens=specials_str, backend=backend, run=run,
                          pattern=pattern, max_token_length=max_token_length, show=show)
    stats.input_bytes = nbytes[0]
    stats.seconds_count = t1 - t0
    return model, stats


def _train_counts(counts, *, vocab_size, special_tokens, backend, progress, pattern, max_token_length):
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
    if pattern != "gpt2" and resolve_pattern(pattern) != wc.pattern:
        raise ValueError("the counts were made with another pattern: count again with this one, or leave pattern out")
    specials_str = tuple(wc.special_tokens)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    backend, run, max_token_length = _select(backend, max_token_length)
    table = wc.to_table()
    t1 = time.perf_counter()
    model, stats = _merge(table, vocab_size=vocab_size, special_tokens=specials_str, backend=backend, run=run,
                          pattern=wc.pattern, max_token_length=max_token_length, show=want_progress(progress))
    model.unicode = wc.meta.get("unicode") or model.unicode
    stats.input_bytes = sum(int(i.get("size", 0)) for i in wc.meta.get("inputs", []))
    stats.seconds_count = t1 - t0
    return model, stats


def _select(backend, max_token_length):
    """``(concrete backend name, backend, max_token_length)``, all checked: the
    options every entry point hands the merge loop."""
    max_token_length = _validate.max_token_length(max_token_length)
    name, run = backends.select(_validate.backend(backend))
    return name, run, max_token_length


def _merge(table, *, vocab_size, special_tokens, backend, run, pattern, max_token_length, show):
    """The merge loop over a WordTable, its memory sized by the merges that can
    happen, and the model with what the run did (counting fields left zero)."""
    pretokens = int(table.counts.sum())
    pretoken_bytes = int(((table.offsets[1:] - table.offsets[:-1]) * table.counts).sum())
    requested = vocab_size - 256 - len(special_tokens)
    num_merges = min(requested, table.max_merges())
    t1 = time.perf_counter()
    merge_ids, ntokens = _run_merges(run, table, num_merges, show, max_token_length)
    t2 = time.perf_counter()

    model = BPEModel.from_merge_ids(np.asarray(merge_ids).tolist(), special_tokens, pattern=pattern,
                                    unicode=_unicode.table_id())
    longest = max((len(a) + len(b) for a, b in model.merges), default=1)
    if len(model.merges) >= requested:
        reason = "the vocabulary size was reached"
    elif pretokens == 0:
        reason = "the input holds only special tokens: there is nothing to merge"
    elif max_token_length is not None:
        reason = f"no pair is left whose token would fit in max_token_length={max_token_length} bytes"
    else:
        reason = "no pair is left to merge (every pre-token is one token)"
    if len(model.merges) < requested:
        warnings.warn(f"training stopped after {len(model.merges):,} of {requested:,} merges: {reason}; "
                      f"the vocabulary has {len(model.vocab):,} ids, not {vocab_size:,}",
                      TrainingStoppedEarly, stacklevel=4)
    if longest > config.LONG_TOKEN_WARN_BYTES:
        warnings.warn(f"the longest token is {longest:,} bytes (a long run without a pre-token boundary); "
                      f"every export spells each token out: pass max_token_length= to cap "
                      f"tokens", LongTokenWarning, stacklevel=4)
    stats = TrainStats(
        backend=backend,
        input_bytes=0,
        pretokens=pretokens,
        unique_words=table.num_words,
        num_merges=len(model.merges),
        vocab_size=len(model.vocab),
        tokens=int(ntokens),
        pretoken_bytes=pretoken_bytes,
        seconds_count=0.0,
        seconds_merge=t2 - t1,
        requested_merges=requested,
        stop_reason=reason,
        longest_token=longest,
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
    table = _word_table(word_counts)
    name, run, max_token_length = _select(backend, max_token_length)
    return _merge(table, vocab_size=vocab_size, special_tokens=specials_str, backend=name, run=run,
                  pattern=pattern, max_token_length=max_token_length, show=want_progress(progress))[0]


def train(
    inputs,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    backend: str = "auto",
    workers: int | None = None,
    chunk_size: int = config.CHUNK_SIZE,
    progress: bool | None = None,
    pattern: str = "gpt2",
    max_token_length: int | None = None,
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
    chunk_size:     bytes per pre-tokenization chunk; the result does not depend on it.
    progress:       progress bars on stderr (default: when stderr is a terminal).
    pattern:        pre-tokenization: 'gpt2' (default; the fast byte-level path),
                    'cl100k', 'o200k' (tiktoken's patterns) or any regex for the
                    `regex` package (slower, same results as regex.findall). The
                    model stores the regex itself.
    text_field:     the JSONL field that holds the text (default ``text``).
    text_column:    the Parquet column that holds the text (default ``text``).
    max_token_length: None (default: exact, no cap) or the most bytes a merged
                    token may hold: a pair whose token would be longer is never
                    merged (everything else, ties included, unchanged).

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
