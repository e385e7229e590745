"""gpubpe: exact byte-level BPE tokenizer training, on a GPU or a CPU.

The public API is the names below; everything else is internal.

>>> import gpubpe
>>> model = gpubpe.train("corpus.txt", vocab_size=32000, special_tokens=["<|endoftext|>"])  # doctest: +SKIP
>>> model.save("tok/")  # doctest: +SKIP
"""

from ._version import __version__
from .trainer import LongTokenWarning, TrainingStoppedEarly, train, train_bpe, train_from_counts
from .counts import WordCounts, count
from .model import BPEModel, UnicodeTableWarning, load
from .patterns import GPT2_PATTERN
from .pretok import count_pretokens, pretokenize
from .tokenizer import Tokenizer
from .wordtable import WordTable

__all__ = [
    "BPEModel",
    "GPT2_PATTERN",
    "LongTokenWarning",
    "Tokenizer",
    "TrainingStoppedEarly",
    "UnicodeTableWarning",
    "WordCounts",
    "count",
    "count_pretokens",
    "load",
    "pretokenize",
    "train",
    "train_bpe",
    "train_from_counts",
    "WordTable",
]
