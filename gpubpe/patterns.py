"""Pre-tokenization patterns: the names gpubpe knows, and the checks every regex passes.

A leaf: it imports nothing of gpubpe's, so the model, the corpus reader and the
tokenizer can all name a pattern without loading the pre-tokenizer.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# tiktoken's cl100k_base and o200k_base patterns, verbatim.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN}


def resolve_pattern(pattern) -> str:
    """The regex text for ``pattern``: a name in :data:`PATTERNS` or a regex string.

    Refused, each with a message that says what to write instead:

    * a bare word that is not a known name (``GPT2``, ``gpt-2``, ``cl100k_base``):
      as a regex it would match only that literal word and train on nothing;
    * a regex with capture groups: ``findall`` would return the groups, not
      the pre-tokens;
    * a regex that can match the empty string (``\\w*``): its empty matches
      carry no text, so a tokenizer built on it drops every character it
      does not cover;

    A regex that leaves characters of ordinary text unmatched (``\\w+``) is
    taken, with a warning: what it does not match is neither trained on nor
    encoded.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str (a name or a regex), got {type(pattern).__name__}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern in PATTERNS.values():
        return pattern
    if pattern == "":
        raise ValueError("pattern must not be empty: use 'gpt2' (the default), 'cl100k', 'o200k' or a regex")
    names = ", ".join(map(repr, PATTERNS))
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", pattern):
        key = re.sub(r"[^a-z0-9]", "", pattern.lower()).removesuffix("base")
        near = [n for n in PATTERNS if n == key]
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(
            f"unknown pattern name {pattern!r}: {hint}use one of {names} or a regex "
            f"(to match the literal word, write '(?:{pattern})')"
        )
    try:
        rx = compiled(pattern)
    except Exception as e:  # regex.error, with the position of the mistake
        raise ValueError(f"pattern is not a valid regex for the `regex` package: {e}") from None
    if rx.groups:
        raise ValueError(
            f"pattern {pattern[:80]!r} has {rx.groups} capture group(s): findall would return the groups, "
            "not the pre-tokens; write each group as (?:...)"
        )
    for probe in _PATTERN_PROBES:
        for m in rx.finditer(probe):
            if m.start() == m.end():
                raise ValueError(
                    f"pattern {pattern[:80]!r} can match the empty string (at {m.start()} in {probe!r}): an "
                    "empty match holds no text; use + instead of * (e.g. \\w+ not \\w*) or add an alternative"
                )
        if "".join(rx.findall(probe)) != probe:
            warnings.warn(
                f"pattern {pattern[:80]!r} leaves characters of {probe!r} unmatched: they are neither trained "
                "on nor encoded (the tokenizer drops them); add a catch-all alternative such as |\\s+|[^\\s]",
                stacklevel=3,
            )
    return pattern


_PATTERN_PROBES = ("", "Hello, world! It's 2024.\n\tx  y\u00e9\u4e2d\u0661 \u00a0z")


def is_gpt2(pattern: str) -> bool:
    return pattern == GPT2_PATTERN or pattern == "gpt2"



def is_line_cut(pattern: str) -> bool:
    """Patterns that never join a newline to a following letter (cl100k, o200k)."""
    return pattern == CL100K_PATTERN or pattern == O200K_PATTERN


@lru_cache(maxsize=8)
def compiled(pattern: str):
    import regex

    return regex.compile(pattern)
