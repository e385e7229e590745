"""train() and the CS336 adapter: validate, count, build the WordTable, merge."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import _validate, backends, config
from .model import BPEModel
from .pretokenize import count_table, encode_specials, input_size, iter_chunks, resolve_pattern


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
                f"merges         {self.num_merges:,}  (vocab size {self.vocab_size:,})",
                f"bytes/token    {self.bytes_per_token:.3f} on the training data (special tokens aside)",
                f"time           pre-tokenize and count {self.seconds_count:.2f} s, "
                f"merge {self.seconds_merge:.2f} s, total {total:.2f} s",
            ]
        )


def _want_progress(progress) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


def _bar(enabled: bool, **kw):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety, not a dependency to fail on
        return None
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


def _run_merges(run, table, num_merges: int, show: bool):
    """Run the backend; a watcher updates the bar from its progress counter.

    The backends release the GIL (Numba ``nogil``, CuPy waits), so the loop
    runs in a worker thread and this thread reads the counter.
    """
    progress = np.zeros(1, np.int64)
    bar = _bar(show, total=num_merges, unit="merge", desc="merges")
    if bar is None:
        return run(table, num_merges, progress)
    result: list = []
    error: list = []

    def work():
        try:
            result.append(run(table, num_merges, progress))
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while t.is_alive():
        t.join(config.PROGRESS_INTERVAL)
        bar.update(int(progress[0]) - bar.n)
    bar.update(int(progress[0]) - bar.n)
    bar.close()
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
) -> tuple[BPEModel, TrainStats]:
    """:func:`train`, also returning what the run did (:class:`TrainStats`)."""
    # 1. validate everything before reading a byte
    specials_str = _validate.special_tokens(special_tokens)
    vocab_size = _validate.vocab_size(vocab_size, len(specials_str))
    backend = _validate.backend(backend)
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    pattern = resolve_pattern(pattern)
    paths, texts = _validate.inputs(inputs)
    run = backends.get(backend)  # a missing device fails here, not after counting
    specials = encode_specials(specials_str)
    show = _want_progress(progress)

    # 2. pre-tokenize and count, streamed, in worker processes
    t0 = time.perf_counter()
    nbytes = [0]
    bar = _bar(show, total=input_size(paths), unit="B", unit_scale=True, desc="pre-tokenize")

    def on_bytes(n):
        nbytes[0] += n
        if bar is not None:
            bar.update(n)

    chunks = iter_chunks(paths, texts, specials, chunk_size, on_bytes, pattern=pattern)
    table = count_table(chunks, specials, workers=nworkers, pattern=pattern)  # the WordTable: the backend seam
    if bar is not None:
        bar.close()
    if nbytes[0] == 0:
        raise ValueError("the input is empty: nothing to train on")
    t1 = time.perf_counter()

    pretokens = int(table.counts.sum())
    pretoken_bytes = int(((table.offsets[1:] - table.offsets[:-1]) * table.counts).sum())

    # 3. the merge loop
    num_merges = vocab_size - 256 - len(specials_str)
    merge_ids, ntokens = _run_merges(run, table, num_merges, show)
    t2 = time.perf_counter()

    model = BPEModel.from_merge_ids(np.asarray(merge_ids).tolist(), specials_str, pattern=pattern)
    stats = TrainStats(
        backend=backends.resolve(backend),
        input_bytes=nbytes[0],
        pretokens=pretokens,
        unique_words=table.num_words,
        num_merges=len(model.merges),
        vocab_size=len(model.vocab),
        tokens=int(ntokens),
        pretoken_bytes=pretoken_bytes,
        seconds_count=t1 - t0,
        seconds_merge=t2 - t1,
    )
    return model, stats


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
) -> BPEModel:
    """Train a byte-level BPE tokenizer with the CS336 rules, exactly.

    inputs:         a path, a list of paths, or an iterable of str (one stream,
                    joined like the lines of a file). Each file is a document of
                    its own.
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
    )[0]


def train_bpe(input_path, vocab_size: int, special_tokens: list[str], **kwargs):
    """The CS336 adapter, same signature: ``(vocab, merges)`` for ``input_path``.

    Options of :func:`train` (``backend=``, ``workers=``...) go through ``kwargs``.
    """
    kwargs.setdefault("progress", False)
    model = train(input_path, vocab_size=vocab_size, special_tokens=special_tokens, **kwargs)
    return model.vocab, model.merges
