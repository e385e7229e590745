"""The Numba pre-tokenizer against `regex` across all of Unicode.

Every case runs the Numba engine, whatever the input size (``pretokenize``
would hand small inputs to ``regex`` itself, which would compare the oracle
with itself). The oracle is ``regex.findall`` of the GPT-2 pattern on
``data.decode("utf-8", "surrogateescape")``. The inputs aim at the classes
the table encodes: code points from all planes and from the blocks that
recent Unicode versions assigned or reclassified (where the table is most
likely to lag the installed ``regex``), ASCII words, digits and contractions,
every kind of whitespace, and bytes that are not UTF-8.
"""

import random

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import gpubpe
from gpubpe import config
from gpubpe.pretok import unicode as _unicode

from ._helpers import max_examples

from gpubpe import corpus as C  # noqa: E402
from gpubpe import patterns as PAT  # noqa: E402
import gpubpe.pretok as PT  # noqa: E402
GPT2 = PAT.GPT2_PATTERN
EOT = "<|endoftext|>"


def oracle(data: bytes) -> list[bytes]:
    text = data.decode("utf-8", "surrogateescape")
    return [s.encode("utf-8", "surrogateescape") for s in regex.findall(GPT2, text)]


def numba(data: bytes) -> list[bytes]:
    return PT._pretokenize_numba(data, ())


def cp_bytes(cp: int) -> bytes:
    # surrogates come out as ED A0..BF xx, which is not UTF-8: three "other" bytes
    return chr(cp).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# Ranges assigned or reclassified in Unicode 14 to 17 (CJK extensions H, I, J
# and beyond, Tangut and Khitan supplements, Cuneiform, new Latin and
# Armenian letters, mathematical letters and digits, ...).
RECENT = [
    (0x0550, 0x05FF), (0x0860, 0x08FF), (0x1AB0, 0x1AFF), (0x1C80, 0x1CFF), (0x2070, 0x20A0),
    (0xA700, 0xA7FF), (0xAB00, 0xABFF), (0x10700, 0x107FF), (0x10D40, 0x10EFF), (0x11B00, 0x11BFF),
    (0x11D00, 0x11DFF), (0x11F00, 0x11FFF), (0x12400, 0x126FF), (0x13460, 0x143FF), (0x16100, 0x1613F),
    (0x16D40, 0x16D7F), (0x16FE0, 0x16FFF), (0x18B00, 0x191FF), (0x1AFF0, 0x1B1FF), (0x1CC00, 0x1CEBF),
    (0x1D2C0, 0x1D2FF), (0x1D400, 0x1D7FF), (0x1DF00, 0x1E0FF), (0x1E290, 0x1E2FF), (0x1E4D0, 0x1E6FF),
    (0x2B730, 0x2B8FF), (0x2CEA0, 0x2CEBF), (0x2EBE0, 0x2EE6F), (0x30000, 0x3134F), (0x31350, 0x323AF),
    (0x323B0, 0x33FFF), (0x3CFF0, 0x3FFFF),
]  # fmt: skip

UNICODE_SPACES = [
    "\t", "\n", "\v", "\f", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2005", "\u200a",
    "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
]  # fmt: skip
NOT_SPACES = ["\x1c", "\x1d", "\x1e", "\x1f", "\u200b", "\u180e", "\u2060", "\ufeff"]  # \s? no, for regex

ASCII = [
    "a", "Z", "word", "Hello", "x1", "0", "42", "1234567890", " ", "  ", "\n", "\r\n", "\t", " \n ",
    ",", ".", "!?", "$", "-", "_", "(", ")", "\"", "'", "''", "'s", "'t", "'d", "'m", "'ll", "'ve", "'re",
    "'S", "'LL", "'l", "'v", "it's", "we'll", "they've", "IT'S", "<|", "|>", EOT,
]  # fmt: skip

INVALID = [
    b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xf5", b"\xfe", b"\xff", b"\xc0\xaf", b"\xc1\x81",  # stray, never valid, overlong
    b"\xe0\x80\xaf", b"\xe0\x81\x81", b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf",  # overlong 3 and 4 bytes
    b"\xed\xa0\x80", b"\xed\xbf\xbf",  # encoded surrogates
    b"\xf4\x90\x80\x80", b"\xf7\xbf\xbf\xbf",  # above U+10FFFF
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3", b"\xf0\xbd\x80",  # truncated (the last one: U+3D000 cut short)
]  # fmt: skip

any_cp = st.integers(0, 0x10FFFF)
recent_cp = st.sampled_from(RECENT).flatmap(lambda r: st.integers(*r))
plane_0_to_3 = st.integers(0, 0x3FFFF)

piece = st.one_of(
    any_cp.map(cp_bytes),
    recent_cp.map(cp_bytes),
    st.lists(recent_cp, min_size=1, max_size=6).map(lambda cps: b"".join(map(cp_bytes, cps))),  # runs of new letters
    plane_0_to_3.map(cp_bytes),
    st.sampled_from(ASCII).map(str.encode),
    st.sampled_from(UNICODE_SPACES + NOT_SPACES).map(str.encode),
    st.sampled_from(INVALID),
    recent_cp.map(lambda cp: cp_bytes(cp)[:-1]),  # a new code point cut short
    st.binary(min_size=1, max_size=4),
)
fuzz_bytes = st.lists(piece, max_size=50).map(b"".join)


# ---------------------------------------------------------------------------
# Fuzz
# ---------------------------------------------------------------------------


@settings(max_examples=max_examples(600), deadline=None)
@given(fuzz_bytes)
def test_fuzz_state_machine_matches_regex(data):
    assert numba(data) == oracle(data)


@settings(max_examples=max_examples(300), deadline=None)
@given(st.lists(st.one_of(recent_cp, plane_0_to_3, st.sampled_from([0x20, 0x27, 0x31, 0x61, 0x0A, 0x3000])), max_size=40))
def test_fuzz_code_point_strings(cps):
    # well-formed text only: every character decodes, so each class decision shows
    data = "".join(map(chr, cps)).encode("utf-8", "surrogatepass")
    assert numba(data) == oracle(data)


@settings(max_examples=max_examples(200), deadline=None)
@given(fuzz_bytes)
def test_fuzz_public_pretokenize_on_the_numba_engine(data):
    data = data.replace(b"|>", b"|>x")  # special tokens inside words too
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "NUMBA_PRETOKENIZE_BYTES", 0)

        def no_regex(*args, **kwargs):
            raise AssertionError("the regex engine ran")

        mp.setattr(PT, "findall_piece", no_regex)
        got = gpubpe.pretokenize(data, special_tokens=[EOT])
    expected = [t for piece in C.split_specials(data, (EOT.encode(),)) for t in oracle(piece)]
    assert got == expected


# ---------------------------------------------------------------------------
# Every block of code points
# ---------------------------------------------------------------------------

TEMPLATES = ("a{c}b {c}{c} 1{c}", " {c}'s{c}  {c}\n{c}", "{c}1 {c}a\u3000{c}")


def _samples(block: int, classes: np.ndarray, rng: random.Random, extra: int) -> list[int]:
    """First and last code point of the block, both sides of every change of
    class inside it, and ``extra`` more at random."""
    lo = block * 256
    row = classes[lo : lo + 256]
    change = np.flatnonzero(row[1:] != row[:-1])
    picked = {lo, lo + 255}
    picked.update(int(lo + i) for i in change)
    picked.update(int(lo + i + 1) for i in change)
    picked.update(rng.sample(range(lo, lo + 256), min(extra, 256)))
    return sorted(picked)


def _render(cps: list[int]) -> bytes:
    out = []
    for cp in cps:
        c = cp_bytes(cp).decode("utf-8", "surrogateescape")
        out.extend(t.format(c=c) for t in TEMPLATES)
    return "".join(out).encode("utf-8", "surrogateescape")


def test_every_block():
    # The samples are picked from the table in use, but the answers come from
    # regex: a change of class the table lacks still shows as a mismatch on
    # the random or boundary samples of its block.
    classes = _unicode.all_classes()
    rng = random.Random(0)
    extra = max_examples(16)
    cases = 0
    for block in range(0x1100):
        cps = _samples(block, classes, rng, extra)
        cases += len(cps)
        data = _render(cps)
        if numba(data) != oracle(data):
            bad = next(cp for cp in cps if numba(_render([cp])) != oracle(_render([cp])))
            pytest.fail(f"U+{bad:04X} (class {_unicode.CLASS_NAMES[classes[bad]]} in table {_unicode.table_id()}): {_render([bad])!r}")
    assert cases >= 0x1100 * 2


# Runs of code points whose class differs between regex 2026.5.9 and
# 2026.11.19 (other -> letter, other -> number for the Cuneiform numbers).
CHANGED = [
    (0x0558, 0x0558), (0x058B, 0x058C), (0x208F, 0x208F), (0x209D, 0x209F), (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2),
    (0xAB6C, 0xAB6D), (0x107BB, 0x107BF), (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DF1, 0x11DF1),
    (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686), (0x18CD6, 0x18CDA), (0x18D1F, 0x18D20),
    (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6),
    (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF), (0x2B81E, 0x2B81E),
    (0x3D000, 0x3FC3F),
]  # fmt: skip


def test_code_points_that_changed_between_regex_versions():
    # whichever of the two is installed, the engine must agree with it here
    cps = sorted({cp for lo, hi in CHANGED for cp in (lo - 1, lo, (lo + hi) // 2, hi, hi + 1)})
    data = _render(cps)
    if numba(data) != oracle(data):
        bad = [hex(cp) for cp in cps if numba(_render([cp])) != oracle(_render([cp]))]
        pytest.fail(f"differs from regex {regex.__version__} at {bad} (table {_unicode.table_id()})")


@settings(max_examples=max_examples(200), deadline=None)
@given(st.lists(fuzz_bytes, min_size=1, max_size=4).map(b"\n".join), st.integers(1, 64), st.sampled_from([1, 2]),
       st.sampled_from([1, 3, 4096]), st.sampled_from([1, 5, 1 << 20]))
def test_fuzz_counting_engine_matches_regex(data, chunk_size, workers, batch, task):
    # The counting path keys and counts each pre-token as the scanner ends it
    # (pretok.machine.scan_count, mode 1): its counts must be regex's, for any
    # chunking, number of worker threads, table batch (a batch of one
    # pre-token regrows the tables between every two of them) and task size
    # (with 2 workers a chunk is cut into tasks at most `task` bytes apart).
    from collections import Counter

    from gpubpe.pretok.tables import count_numba

    sp = (EOT.encode(),)
    data = data.replace(b"|>", b"|>x") + EOT.encode() + data[: len(data) // 2]
    blocks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "PRETOK_BATCH", batch)
        mp.setattr(config, "PRETOK_TASK_BYTES", task)
        got = count_numba(C.cut_stream(blocks, sp, chunk_size), sp, workers).to_dict()
    assert got == Counter(t for piece in C.split_specials(data, sp) for t in oracle(piece))
