"""The pre-tokenizer against the `regex` oracle, and exact counting.

The oracle is ``regex.findall(GPT2, data.decode("utf-8", "surrogateescape"))``
(tests/reference.py): lists of pre-tokens are compared, not just counts.
"""

import random
import subprocess
import sys
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import gpubpe
from gpubpe import config

from ._helpers import FIXTURES, max_examples
from .reference import GPT2, reference_merges_from_counts, reference_pretokens

from gpubpe import corpus as C  # noqa: E402
from gpubpe import patterns as PAT  # noqa: E402
import gpubpe.pretok as PT  # noqa: E402
from gpubpe.pretok import regex_engine as RE, tables as TB, unicode as U  # noqa: E402
EOT = "<|endoftext|>"

# ---------------------------------------------------------------------------
# Inputs built to hit every corner of the pattern
# ---------------------------------------------------------------------------

# every character regex's \s matches, and the ASCII separators it does not
SPACES = [chr(c) for c in range(0x110000) if regex.match(r"\s", chr(c))]
NOT_SPACES = ["\x1c", "\x1d", "\x1e", "\x1f", "\u200b", "\u180e", "\ufeff"]

FRAGMENTS = [
    "'", "'s", "'S", "'d", "'m", "'t", "'ll", "'LL", "'ve", "'re", "'l", "'v", "''s", "'''", "it's", "IT'S",
    "a", "Z", "word", "é", "e\u0301", "\u0301", "\u200d", "ß", "日本", "𐐀",
    "0", "42", "٣", "५", "１", "𝟎", "Ⅷ", "½",
    ",", ".", "!?", "$", "€", "🙂", "👍🏽", "\u00ad",
    " ", "  ", "\n", "\r\n", "\t", " \n ", EOT, "<|", "|>",
]  # fmt: skip

INVALID = [
    b"\x80", b"\xbf", b"\xff", b"\xfe", b"\xc0\xaf", b"\xc1\xbf",  # stray continuation, never-valid, overlong 2-byte
    b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",  # overlong 3- and 4-byte
    b"\xc1\x81", b"\xe0\x81\x81", b"\xf0\x80\x81\x81", b"\xc0\xa0", b"\xe0\x80\xb1",  # overlong 'A', ' ', '1'
    b"\xed\xa0\x80", b"\xed\xbf\xbf",  # UTF-8-encoded surrogates
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",  # above U+10FFFF
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3",  # truncated
]  # fmt: skip


def _code_point_bytes(cp: int) -> bytes:
    return chr(cp).encode("utf-8", "surrogatepass")  # surrogates give ED A0..BF xx: invalid UTF-8


piece = st.one_of(
    st.sampled_from(FRAGMENTS).map(lambda s: s.encode()),
    st.sampled_from(SPACES + NOT_SPACES).map(lambda s: s.encode()),
    st.sampled_from(INVALID),
    st.integers(0, 0x10FFFF).map(_code_point_bytes),  # all planes
    st.integers(0, 0x7F).map(lambda b: bytes([b])),
    st.binary(max_size=4),
)
fuzz_bytes = st.lists(piece, max_size=40).map(b"".join)


def numba_pretokens(data: bytes, special_tokens=()) -> list[bytes]:
    """The Numba state machine, whatever the size threshold."""
    return PT._pretokenize_numba(data, C.special_bytes(special_tokens))


@pytest.fixture
def engine(request, monkeypatch):
    """Run the public functions on the Numba engine or the regex engine."""
    monkeypatch.setattr(config, "NUMBA_PRETOKENIZE_BYTES", 0 if request.param == "numba" else 1 << 62)
    return request.param


both_engines = pytest.mark.parametrize("engine", ["numba", "regex"], indirect=True)


# ---------------------------------------------------------------------------
# The state machine against the oracle
# ---------------------------------------------------------------------------


@settings(max_examples=max_examples(400), deadline=None)
@given(fuzz_bytes)
def test_state_machine_matches_regex(data):
    assert numba_pretokens(data) == reference_pretokens(data)


@settings(max_examples=max_examples(150), deadline=None)
@given(fuzz_bytes)
def test_special_tokens_inside_words(data):
    data = data.replace(b"|>", b"|>x")  # make specials sit inside words too
    assert numba_pretokens(data, [EOT]) == reference_pretokens(data, [EOT])


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"it's", [b"it", b"'s"]),
        (b"IT'S", [b"IT", b"'", b"S"]),  # contractions are lower case only
        (b"''s", [b"''", b"s"]),  # the other-run takes both apostrophes
        (b" 's", [b" '", b"s"]),  # a space joins the run after it, never a contraction
        (b"we'll've", [b"we", b"'ll", b"'ve"]),
        (b"a  b", [b"a", b" ", b" b"]),  # a whitespace run gives its last space to the word
        (b"a \n b", [b"a", b" \n", b" b"]),
        (b"a\n\nb", [b"a", b"\n", b"\n", b"b"]),  # a lone non-space whitespace stands alone
        (b"a  ", [b"a", b"  "]),  # at the end the whole run is one
        ("a\u3000b".encode(), [b"a", "\u3000".encode(), b"b"]),  # only U+0020 joins a word
        (b"x\x1cy", [b"x", b"\x1c", b"y"]),  # \x1c is not \s for regex
        ("é\u0301".encode(), ["é".encode(), "\u0301".encode()]),  # a combining mark is not \p{L}
        (b"ab\xffcd", [b"ab", b"\xff", b"cd"]),
        (b" \xed\xa0\x80!", [b" \xed\xa0\x80!"]),  # an encoded surrogate is three "other" bytes
        (b"\xe0\x81\x81x", [b"\xe0\x81\x81", b"x"]),  # an overlong 'A' is three "other" bytes, not a letter
        (" ٣٤5".encode(), [" ٣٤5".encode()]),  # digits of every script are one \p{N} run
    ],
)
def test_corners(text, expected):
    assert reference_pretokens(text) == expected  # the oracle agrees with the reading above
    assert numba_pretokens(text) == expected


def test_every_whitespace_and_separator():
    for s in SPACES + NOT_SPACES:
        for ctx in ("a{0}b", "a{0}{0}b", "a {0}b", "a{0} b", "{0}", "a{0}", "'{0}s", "1{0}{0} {0}x"):
            data = ctx.format(s).encode()
            assert numba_pretokens(data) == reference_pretokens(data), (hex(ord(s)), ctx)


@pytest.mark.parametrize("name", ["corpus.en", "german.txt", "tinystories_sample.txt", "address.txt"])
def test_real_text_slices(name):
    data = (FIXTURES / name).read_bytes()
    assert numba_pretokens(data, [EOT]) == reference_pretokens(data, [EOT])
    rng = random.Random(name)
    for _ in range(200):  # arbitrary byte offsets: UTF-8 sequences cut at both ends
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randrange(1, 400))
        assert numba_pretokens(data[a:b]) == reference_pretokens(data[a:b])


# ---------------------------------------------------------------------------
# Resynchronisation: chunks pre-tokenize independently
# ---------------------------------------------------------------------------


def _resync_points(data: bytes) -> list[int]:
    """Byte offsets where a non-whitespace character is followed by a whitespace one."""
    text = data.decode("utf-8", "surrogateescape")
    out, pos = [], 0
    for i, ch in enumerate(text):
        if i and regex.match(r"\s", ch) and not regex.match(r"\s", text[i - 1]):
            out.append(pos)
        pos += len(ch.encode("utf-8", "surrogateescape"))
    return out


# Runs of ASCII letters and digits are consumed eight bytes at a time
# (pretok.machine._run_end_mask): runs of every length around multiples of 8,
# ended by every ASCII byte and by multibyte letters, digits, spaces and
# invalid bytes, and cut short by the end of the input at every offset.
RUN_ENDS = [bytes([b]) for b in range(128)] + [s.encode() for s in ("é", "日", "٣", "\u00a0", "🙂")] + [b"\xff", b"\xc3"]


@settings(max_examples=max_examples(300), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["letters", "digits"]), st.integers(0, 26), st.sampled_from(RUN_ENDS)),
                min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_letter_and_digit_runs_of_every_length(runs, rnd):
    parts = []
    for kind, n, end in runs:
        alphabet = "abcxyzABCXYZ" if kind == "letters" else "0123456789"
        parts.append("".join(rnd.choice(alphabet) for _ in range(n)).encode() + end)
    data = b"".join(parts)
    for cut in range(len(data) + 1):  # the run ends at the piece end too, at every offset
        assert numba_pretokens(data[:cut]) == reference_pretokens(data[:cut])


def test_swar_run_masks_agree_with_the_class_table():
    # _run_end_mask's high bits are set exactly on the bytes that are not
    # ASCII of the class, for every byte value in every one of the 8 lanes
    from gpubpe.pretok import machine as M

    cls = U.scan_tables()[0]
    for k in (M.LETTER, M.NUMBER):
        for lane in range(8):
            for b in range(256):
                filler = ord("a") if k == M.LETTER else ord("0")
                word = bytearray([filler] * 8)
                word[lane] = b
                mask = int(M._run_end_mask.py_func(np.uint64(int.from_bytes(word, "little")), k))
                assert bool(mask >> (8 * lane + 7) & 1) == (cls[b] != k), (k, lane, b)
                assert mask & ~(0x80 << (8 * lane)) == 0, (k, lane, b)


@pytest.mark.parametrize("specials", [(EOT,), ("<|a|>", "<|a|><|a|>", "<|ab|>", "<"), ("ab", "cd"), ("aa",)])
def test_piece_bounds_fast_path_is_the_regex_alternation(specials):
    # one lead byte shared by all specials: memchr and startswith, longest
    # first; otherwise the regex alternation. Both give the same pieces, for
    # a whole chunk and for a task inside it (lo, hi).
    sp = C.special_bytes(specials)
    rng = random.Random(len(specials))
    alphabet = [b"<", b"|", b"a", b"b", b">", b"c", b"d", b" ", EOT.encode(), b"<|a|>", b"<|ab|>"]
    for _ in range(300):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        lo = rng.randrange(0, len(data) + 1)
        hi = rng.randrange(lo, len(data) + 1)
        cuts = [lo]
        for m in C.special_regex(sp).finditer(data, lo, hi):
            cuts += [m.start(), m.end()]
        cuts.append(hi)
        want = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
        starts, ends = C.piece_bounds(data, sp, lo, hi)
        assert list(zip(starts.tolist(), ends.tolist())) == want, (data, lo, hi)
        starts, ends = C.piece_bounds(memoryview(data), sp, lo, hi)  # not bytes: the regex path
        assert list(zip(starts.tolist(), ends.tolist())) == want


@settings(max_examples=max_examples(200), deadline=None)
@given(fuzz_bytes)
def test_resync_rule_every_non_space_to_space_is_a_boundary(data):
    whole = reference_pretokens(data)
    for p in _resync_points(data):
        assert reference_pretokens(data[:p]) + reference_pretokens(data[p:]) == whole
        assert numba_pretokens(data[:p]) + numba_pretokens(data[p:]) == whole


@settings(max_examples=max_examples(200), deadline=None)
@given(fuzz_bytes, st.sampled_from([(), (EOT,), ("a b", "a b c")]))
def test_safe_cut_is_safe(data, specials):
    sp = C.special_bytes(specials)
    p = C.safe_cut(data, sp)
    if p > 0:
        assert reference_pretokens(data[:p], specials) + reference_pretokens(data[p:], specials) == reference_pretokens(data, specials)


# ---------------------------------------------------------------------------
# Counting: engines, chunk sizes and workers give identical counts
# ---------------------------------------------------------------------------


@both_engines
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000, 1 << 20])
def test_counts_do_not_depend_on_chunks_or_workers(engine, workers, chunk_size):
    data = (FIXTURES / "corpus.en").read_bytes()[:40_000] + b"\xff\xfe trailing \xe2\x82"
    expected = Counter(reference_pretokens(data, [EOT]))
    got = gpubpe.count_pretokens(data, special_tokens=[EOT], workers=workers, chunk_size=chunk_size)
    assert got == expected


@both_engines
@pytest.mark.parametrize("extra", [b"", bytes(range(256))])
def test_count_dict_with_and_without_a_free_byte(engine, extra):
    """The dict is built by joining the words around a byte none of them holds;
    with all 256 byte values present it falls back to slicing."""
    data = (FIXTURES / "corpus.en").read_bytes()[:20_000] + extra + b" \xff\x00\xfe end"
    assert gpubpe.count_pretokens(data, special_tokens=[EOT]) == Counter(reference_pretokens(data, [EOT]))


@settings(max_examples=max_examples(60), deadline=None)
@given(fuzz_bytes, st.integers(1, 40), st.sampled_from([(), (EOT,), ("a b", "a b c")]))
def test_counts_fuzzed_chunks(data, chunk_size, specials):
    expected = Counter(reference_pretokens(data, specials))
    blocks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    sp = C.special_bytes(specials)
    table = TB.CountTable()
    tabs = U.scan_tables()
    for c in C.cut_stream(blocks, sp, chunk_size):
        table.add_chunk(c, sp, tabs)
    assert table.to_dict() == expected
    assert RE.count_chunk(data, sp) == expected


@both_engines
def test_count_table_is_the_word_table(engine):
    data = (FIXTURES / "tinystories_sample.txt").read_bytes()
    sp = C.special_bytes([EOT])
    table = PT.count_table(C.cut_stream([data], sp, 500), sp, workers=2, pattern=PAT.GPT2_PATTERN)
    assert table.symbols.dtype == np.int32 and table.offsets.dtype == np.int64 and table.counts.dtype == np.int64
    assert table.to_counts() == Counter(reference_pretokens(data, [EOT]))
    assert table.num_words == len(table.to_counts())  # each word once


def test_table_merge_and_growth():
    # many distinct words of every length class (up to 7 bytes, 8 to 15, more):
    # the tables regrow several times, and two tables counted apart merge to
    # the counts of the whole
    rng = random.Random(0)
    words = [" " + "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(1, 30))) for _ in range(30_000)]
    words += ["x" * k for k in range(1, 40)] * 3 + [" é" * k for k in range(1, 20)]
    data = "".join(words).encode()
    tabs = U.scan_tables()
    a, b = TB.CountTable(words=4), TB.CountTable(words=4)
    half = C.safe_cut(data, lo=len(data) // 2)
    a.add_chunk(data[:half], (), tabs)
    b.add_chunk(data[half:], (), tabs)
    a.merge(b)
    assert a.to_dict() == Counter(reference_pretokens(data))


@pytest.mark.parametrize("ntables", [1, 2, 3, 5, 8])
def test_merge_all_of_many_tables(ntables):
    # the rounds of pairwise merges (in threads) give the counts of the whole,
    # for odd and even numbers of tables of very different sizes
    rng = random.Random(ntables)
    words = [" " + "".join(rng.choice("abcdefgh") for _ in range(rng.randrange(1, 24))) for _ in range(6_000)]
    data = "".join(words).encode()
    tabs = U.scan_tables()
    cuts = sorted({0, len(data)} | {C.cut_after(data, (), rng.randrange(1, len(data))) for _ in range(ntables - 1)})
    cuts = [c for c in cuts if c >= 0]
    tables = []
    for lo, hi in zip(cuts, cuts[1:]):
        t = TB.CountTable(words=4)
        t.add_chunk(data, (), tabs, lo, hi)
        tables.append(t)
    assert TB.merge_all(tables).to_dict() == Counter(reference_pretokens(data))


def _deferred_pair(data: bytes, cut: int, tabs, swap: bool):
    """Two CountTables counting ``data[:cut]`` and ``data[cut:]`` (in the other
    order with ``swap``), the second deferred behind the first, as the last
    two worker tables of a run are."""
    a, b = TB.CountTable(words=4), TB.CountTable(words=4)
    a.add_chunk(data, (), tabs, 0, cut)
    b.add_chunk(data, (), tabs, cut, len(data))
    if swap:
        a, b = b, a
    a.deferred = b
    return a, b


@pytest.mark.parametrize("split", [0.0, 0.3, 0.5, 1.0])
def test_two_tables_make_one_word_table_without_a_merge(split):
    # the last two worker tables are read into one WordTable in two threads
    # (machine.emit_pair): words in both tables once with their summed counts,
    # words of either alone once, in every length class (short, mid, long),
    # an empty table included; the dict, read from the pair the same way,
    # agrees, and so does the dict of the two merged
    rng = random.Random(int(split * 10))
    words = [" " + "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(1, 30))) for _ in range(8_000)]
    words += [" " + "q" * k for k in range(1, 40)] * 2
    data = "".join(words).encode()
    cut = C.cut_after(data, (), int(len(data) * split)) if 0 < split < 1 else int(len(data) * split)
    tabs = U.scan_tables()
    expected = Counter(reference_pretokens(data))
    for swap in (False, True):
        a, b = _deferred_pair(data, cut, tabs, swap)
        table = a.to_wordtable()
        assert table.num_words == len(expected)  # each word once
        assert table.to_counts() == expected
        assert a.to_dict() == expected and a.deferred is b  # read as a pair, not merged
        a._settle()
        assert a.deferred is None and a.to_dict() == expected


@pytest.mark.parametrize("kind", ["empty", "one empty", "ascii", "non-ascii", "every byte"])
def test_dict_of_two_tables_read_as_a_pair(kind):
    # to_dict() of a table with a deferred one reads both in two threads
    # into one gapped byte buffer and splits it at a byte no word holds, or
    # slices it where every byte value occurs: the same dict as the simple
    # reference (Counter of the regex pre-tokens), both orders of the pair
    rng = random.Random(kind)
    if kind == "empty":
        data = b""
    elif kind == "ascii":
        data = "".join(" " + "".join(rng.choice("abcxyz09!") for _ in range(rng.randrange(1, 25)))
                       for _ in range(3_000)).encode()
    elif kind == "every byte":  # invalid UTF-8 bytes are characters of their own: all 256 values in words
        data = b"".join(bytes([32] + [rng.randrange(256) for _ in range(rng.randrange(1, 20))]) for _ in range(3_000))
        data += bytes(range(256))
    else:
        data = "".join(" " + "".join(rng.choice("aé中١ 'x\n") for _ in range(rng.randrange(1, 25)))
                       for _ in range(3_000)).encode() + b"\xc3 \xff"
    cut = C.cut_after(data, (), len(data) // 2) if data else -1
    cut = len(data) if cut < 0 or kind == "one empty" else cut
    if kind == "one empty":
        data, cut = b" one empty table and  two   words", 0
    expected = Counter(reference_pretokens(data))
    if kind == "every byte":
        assert len({x for w in expected for x in w}) == 256  # the slicing path is taken
    tabs = U.scan_tables()
    for swap in (False, True):
        a, _ = _deferred_pair(data, cut, tabs, swap)
        got = a.to_dict()
        assert got == expected and list(map(type, got)) == [bytes] * len(got)


def test_words_dict_against_a_simple_reference():
    # the dict builder alone, on gapped buffers made the simple way: split at
    # the separator, sliced without one; no words, one word, an empty gap byte
    rng = random.Random(5)
    for n in (0, 1, 2, 50, 2_000):
        words = list({bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in range(n)})
        counts = [rng.randrange(1, 1000) for _ in words]
        used = {x for w in words for x in w}
        for sep in [max(set(range(256)) - used, default=-1), -1]:
            raw = bytes([max(sep, 0)]).join(words)
            offsets = np.cumsum([0] + [len(w) for w in words]).astype(np.int64)
            got = TB._words_dict(np.frombuffer(raw, np.uint8), offsets, np.asarray(counts, np.int64), sep)
            assert got == dict(zip(words, counts))


def test_long_word_hash_is_its_definition():
    # the hash of a long word reads 8 bytes per load, the last partial step
    # from the 8 bytes that end the word: the same value as the definition
    # (little-endian 8-byte steps, the last one zero-padded), at every offset
    from gpubpe.pretok import machine as M

    def definition(b: bytes) -> int:
        mask = (1 << 64) - 1
        h = 0xCBF29CE484222325 ^ len(b)
        for q in range(0, len(b), 8):
            h = ((h ^ int.from_bytes(b[q : q + 8], "little")) * 0x9E3779B97F4A7C15) & mask
            h ^= h >> 29
        h = (h * 0xBF58476D1CE4E5B9) & mask
        return h ^ (h >> 32)

    rng = random.Random(3)
    buf = bytes(rng.randrange(256) for _ in range(100))
    arr = np.frombuffer(buf, np.uint8)
    for s in range(0, 30):
        for e in range(s, len(buf) + 1, 3):
            assert int(M._hash(arr, s, e)) == definition(buf[s:e]), (s, e)


def test_long_words_differing_in_one_byte_are_not_merged():
    # long words are confirmed by comparing bytes, 8 at a time then one by
    # one: words equal but for one byte anywhere, of lengths around multiples
    # of 8, stay apart
    words = []
    for n in (16, 17, 23, 24, 25, 31, 32, 33, 40):
        base = bytearray(b"q" * n)
        words.append(bytes(base))
        for pos in range(n):
            w = bytearray(base)
            w[pos] = ord("r")
            words.append(bytes(w))
    data = b" ".join(words * 3)
    tabs = U.scan_tables()
    table = TB.CountTable(words=4)
    table.add_chunk(data, (), tabs)
    assert table.to_dict() == Counter(reference_pretokens(data))


def test_numba_and_regex_engines_agree_on_pretokenize(monkeypatch):
    data = (FIXTURES / "german.txt").read_bytes() + b"\xc3 it's<|endoftext|>x"
    monkeypatch.setattr(config, "NUMBA_PRETOKENIZE_BYTES", 0)
    fast = gpubpe.pretokenize(data, special_tokens=[EOT])
    monkeypatch.setattr(config, "NUMBA_PRETOKENIZE_BYTES", 1 << 62)
    slow = gpubpe.pretokenize(data, special_tokens=[EOT])
    assert fast == slow == reference_pretokens(data, [EOT])


def test_small_inputs_do_not_load_numba():
    # the CS336 speed bar counts compile time: small inputs must stay on `regex`
    code = (
        "import sys, gpubpe; from pathlib import Path;"
        f"gpubpe.count_pretokens(Path({str(FIXTURES / 'corpus.en')!r}), special_tokens=['<|endoftext|>']);"
        "print('numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numba_loads_without_scipy_and_blas_still_works():
    # gpubpe._numba keeps Numba's BLAS check from importing scipy.linalg (0.17 s
    # of a cold start); Numba code that does use BLAS in the same process
    # still compiles and gives NumPy's answer
    code = (
        "import sys, numpy as np, gpubpe; from gpubpe import _numba; from gpubpe.pretok import machine as M, unicode as U;"
        "s, e = M.token_spans(np.frombuffer(b'it is', np.uint8), np.array([0]), np.array([5]), *U.scan_tables());"
        "print(e.tolist(), 'scipy.linalg' in sys.modules);"
        "import importlib.util, numba, numba.np.arraymath as am;"
        "have = importlib.util.find_spec('scipy') is not None; print(am._HAVE_BLAS == have);"
        "a = np.arange(6.0).reshape(2, 3); b = np.arange(6.0).reshape(3, 2);"
        "print(not have or bool((numba.njit(lambda x, y: np.dot(x, y))(a, b) == a @ b).all()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[2,", "5]", "False", "True", "True"], out.stdout


def test_cached_code_loads_without_the_context_refresh_and_numba_still_compiles():
    # gpubpe._numba loads gpubpe's cached machine code without Numba's context
    # refresh (which imports typed dicts, cffi, ... for compiling): the counts
    # are the regex engine's, the merge loops loaded the same way (the step
    # loop's threads included) make the plain-Python loop's merges, the
    # refresh's imports did not happen, and other Numba code in the process
    # (here a typed dict) still compiles and runs
    code = (
        "import sys, gpubpe; from pathlib import Path; from gpubpe import config;"
        f"p = Path({str(FIXTURES / 'german.txt')!r});"
        "slow = gpubpe.count_pretokens(p, special_tokens=['<|endoftext|>']);"
        "config.NUMBA_PRETOKENIZE_BYTES = 0;"
        "fast = gpubpe.count_pretokens(p, special_tokens=['<|endoftext|>'], workers=2);"
        "import numpy as np; from gpubpe import backends; from gpubpe.wordtable import WordTable;"
        "wt = WordTable.from_counts(fast); o = backends.MergeOptions();"
        "r = [backends._cpu(e)(wt, 200, np.zeros(2, np.int64), o) for e in ('steps', 'numba', 'python')];"
        "same = all(x[0].tolist() == r[2][0].tolist() and x[1].tolist() == r[2][1].tolist() for x in r);"
        "print('numba' in sys.modules, fast == slow and same, 'numba.typed.dictimpl' in sys.modules);"
        "import numba; from numba import types; from numba.typed import Dict;"
        "f = numba.njit(lambda n: sum([Dict.empty(types.int64, types.int64).get(i, i) for i in range(n)]));"
        "print(f(5))"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)  # fills the cache if it is cold
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False", "10"], out.stdout


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------


def _write_corpus(path, nbytes: int) -> None:
    rng = random.Random(1)
    vocab = ["the", "cat", "sat", "on", "mat", "über", "naïve", "42", "it's", "!", "...", "日本語"]
    docs = []
    size = 0
    while size < nbytes:
        doc = " ".join(rng.choice(vocab) for _ in range(rng.randrange(5, 200))) + ".\n" + EOT
        docs.append(doc)
        size += len(doc.encode())
    path.write_bytes("".join(docs).encode())


@pytest.mark.parametrize("workers", [1, 2])
def test_streaming_memory_is_bounded_by_chunks(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(config, "NUMBA_PRETOKENIZE_BYTES", 0)
    path = tmp_path / "big.txt"
    _write_corpus(path, 4 << 20)
    chunk = 32 << 10  # the file is 128 chunks
    U.tables()  # load the table outside the measurement
    gpubpe.count_pretokens(b"warm up", workers=1)
    tracemalloc.start()
    got = gpubpe.count_pretokens(path, special_tokens=[EOT], workers=workers, chunk_size=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # In flight: a queue of `workers` chunks, one per worker, the carry and the
    # block read; plus the tables' first arrays and the result (the unique
    # words, a few hundred here). Reading the whole file would take 4 MB.
    assert peak < (2 * workers + 6) * chunk + (1 << 20), peak
    data = path.read_bytes()
    assert got == Counter(reference_pretokens(data, [EOT]))


def test_chunks_are_cut_near_chunk_size(tmp_path):
    path = tmp_path / "big.txt"
    _write_corpus(path, 1 << 20)
    sizes = [len(c) for c in C.iter_chunks([path], None, C.special_bytes([EOT]), 10_000)]
    assert sum(sizes) == path.stat().st_size
    assert max(sizes) <= 2 * 10_000 and len(sizes) > 50


def test_cut_never_splits_a_special_across_blocks():
    # a special token with a space in it, arriving split over two blocks
    specials = ("a b c",)
    data = b"x a b c y " * 50
    expected = Counter(reference_pretokens(data, specials))
    for k in range(1, 12):
        blocks = [data[i : i + k] for i in range(0, len(data), k)]
        got = Counter()
        for c in C.cut_stream(blocks, C.special_bytes(specials), 4):
            got.update(reference_pretokens(c, specials))
        assert got == expected, k


# ---------------------------------------------------------------------------
# Other patterns
# ---------------------------------------------------------------------------


def _oracle(data: bytes, pattern: str, specials=()) -> Counter:
    return Counter(
        s.encode("utf-8", "surrogateescape")
        for piece in C.split_specials(data, C.special_bytes(specials))
        for s in regex.findall(pattern, piece.decode("utf-8", "surrogateescape"))
        if s
    )


@pytest.mark.parametrize("name", ["cl100k", "o200k", r"\p{L}+|\d|\s+"])
@pytest.mark.parametrize("workers", [1, 2])
def test_other_patterns(name, workers):
    pattern = PAT.resolve_pattern(name)
    data = (FIXTURES / "tinystories_sample.txt").read_bytes() + b" WE'LL 12345 \r\n\r\n  x "
    got = gpubpe.count_pretokens(data, special_tokens=[EOT], workers=workers, chunk_size=100, pattern=name)
    assert got == _oracle(data, pattern, [EOT])
    assert gpubpe.pretokenize(data, special_tokens=[EOT], pattern=name) == [
        s.encode("utf-8", "surrogateescape")
        for piece in C.split_specials(data, C.special_bytes([EOT]))
        for s in regex.findall(pattern, piece.decode("utf-8", "surrogateescape"))
    ]


def test_tiktoken_patterns_are_tiktokens():
    tiktoken_ext = pytest.importorskip("tiktoken_ext.openai_public")
    import inspect

    src = inspect.getsource(tiktoken_ext)
    assert PAT.CL100K_PATTERN in src
    for part in PAT.O200K_PATTERN.split("|"):
        assert part in src or part.startswith("'")


def test_user_patterns_cut_only_after_specials():
    sp = C.special_bytes([EOT])
    user = r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+"
    data = b"one two  \n" * 100 + EOT.encode() + b"three  four\n" * 100 + EOT.encode() + b"five"
    chunks = list(C.cut_stream([data[i : i + 50] for i in range(0, len(data), 50)], sp, 100, pattern=user))
    assert b"".join(chunks) == data
    assert all(c.endswith(EOT.encode()) for c in chunks[:-1]) and 2 <= len(chunks) <= 3
    # no special token: one chunk, whatever its size
    assert len(list(C.cut_stream([b"a b " * 100] * 5, (), 10, pattern=user))) == 1


@pytest.mark.parametrize("name", ["cl100k", "o200k"])
def test_tiktoken_patterns_stream_without_specials(name):
    # cut after a newline that a letter follows: many chunks, same counts
    pattern = PAT.resolve_pattern(name)
    data = (b"one two  \n" * 100 + b"Three  four\r\n" * 100 + b"x \n\n  y") * 3
    chunks = list(C.cut_stream([data[i : i + 50] for i in range(0, len(data), 50)], (), 100, pattern=pattern))
    assert b"".join(chunks) == data and len(chunks) > 20
    assert all(c.endswith(b"\n") and len(c) < 400 for c in chunks[:-1])
    got = gpubpe.count_pretokens(data, chunk_size=100, pattern=name, workers=2)
    assert got == _oracle(data, pattern)


_LINE_ALPHABET = st.sampled_from(list("aZ\n\n\r \t1'.,-/é\u00a0\u2028\u3000") + ["'s", "'LL", "\r\n", " \n"])


@settings(max_examples=max_examples(300), deadline=None)
@given(st.lists(_LINE_ALPHABET, max_size=40).map("".join), st.sampled_from(["cl100k", "o200k"]))
def test_line_cut_is_safe_for_tiktoken_patterns(text, name):
    # every position the line rule may cut at splits the pre-tokens exactly
    pattern = PAT.resolve_pattern(name)
    data = text.encode()
    whole = regex.findall(pattern, text)
    for p in range(1, len(data)):
        if C.safe_cut(data[: p + 1], (), lo=p, pattern=pattern) == p:
            left = regex.findall(pattern, data[:p].decode())
            right = regex.findall(pattern, data[p:].decode())
            assert left + right == whole, (data, p)


def test_other_patterns_see_piece_ends():
    # `$` in cl100k sees the end of a piece: cutting inside one would change the result
    text = b"x  " + EOT.encode() + b"y  \n  z"
    got = gpubpe.count_pretokens(text, special_tokens=[EOT], chunk_size=1, pattern="cl100k")
    assert got == _oracle(text, PAT.CL100K_PATTERN, [EOT])


def test_pattern_errors():
    with pytest.raises(ValueError, match="unknown pattern name 'gpt4'.*'gpt2'.*'cl100k'.*'o200k'"):
        gpubpe.count_pretokens(b"x", pattern="gpt4")
    with pytest.raises(ValueError, match="not a valid regex"):
        gpubpe.pretokenize(b"x", pattern="(unclosed")
    with pytest.raises(TypeError, match="pattern must be a str"):
        gpubpe.count_pretokens(b"x", pattern=None)
    with pytest.raises(ValueError, match="empty string"):
        gpubpe.count_pretokens(b"ab", pattern="(?:x)*")


def test_train_with_pattern_stores_it_and_uses_it():
    data = (FIXTURES / "tinystories_sample.txt").read_bytes()
    text = data.decode()
    model = gpubpe.train(iter([text]), vocab_size=300, special_tokens=[EOT], backend="cpu", pattern="cl100k")
    assert model.pattern == PAT.CL100K_PATTERN
    assert model.merges == reference_merges_from_counts(_oracle(data, PAT.CL100K_PATTERN, [EOT]), 300 - 257)
    assert gpubpe.train(iter([text]), vocab_size=260, backend="cpu").pattern == GPT2


# ---------------------------------------------------------------------------
# ChunkReader: a plain file read straight into reusable buffers
# ---------------------------------------------------------------------------


def _read_all(path, specials=(), chunk_size=64, **kw):
    """(chunks as bytes, on_bytes total, digest) of a ChunkReader over ``path``."""
    import hashlib

    got, seen = [], [0]
    digest = hashlib.blake2b(digest_size=16)
    with C.ChunkReader(path, C.special_bytes(specials), chunk_size, on_bytes=lambda n: seen.__setitem__(0, seen[0] + n),
                       digest=digest, **kw) as reader:
        for c in reader:
            got.append(bytes(c))
            reader.release()
    return got, seen[0], digest.hexdigest()


@settings(max_examples=max_examples(150), deadline=None)
@given(st.lists(st.one_of(fuzz_bytes, st.sampled_from([b"x" * 300, b" " * 200, EOT.encode() * 3])), max_size=12)
       .map(b"".join), st.integers(1, 200), st.integers(1, 4), st.sampled_from([(), (EOT,), ("a b", "xx")]))
def test_chunk_reader_cuts_safely(tmp_path_factory, data, chunk_size, threads, specials):
    """The chunks join to the file, each ends at a safe cut (counted apart they
    give the file's counts), and the digest and byte count are the file's,
    whatever the chunk size, the threads and the parts."""
    import hashlib

    path = tmp_path_factory.mktemp("reader") / "f.txt"
    path.write_bytes(data)
    old = config.READ_PART_MIN, config.READ_CUT_WINDOW
    config.READ_PART_MIN, config.READ_CUT_WINDOW = 8, 16  # parts and the window search really run
    try:
        got, seen, digest = _read_all(path, specials, chunk_size, threads=threads, buffers=3)
    finally:
        config.READ_PART_MIN, config.READ_CUT_WINDOW = old
    assert b"".join(got) == data and all(got)
    assert seen == len(data) and digest == hashlib.blake2b(data, digest_size=16).hexdigest()
    total = Counter()
    for c in got:
        total.update(reference_pretokens(c, specials))
    assert total == Counter(reference_pretokens(data, specials))


def test_chunk_reader_on_real_text(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "READ_PART_MIN", 1024)
    data = b"".join((FIXTURES / n).read_bytes() for n in ("corpus.en", "german.txt", "tinystories_sample.txt"))
    path = tmp_path / "real.txt"
    path.write_bytes(data)
    for chunk_size, threads in ((4096, 4), (50_000, 2), (1 << 20, 1)):
        got, seen, _ = _read_all(path, [EOT], chunk_size, threads=threads)
        assert b"".join(got) == data and seen == len(data)
        assert max(map(len, got)) <= chunk_size  # text always has a cut near the end of a buffer
        assert len(got) == -(-len(data) // chunk_size) or len(got) > len(data) // chunk_size
        assert gpubpe.count_pretokens(path, special_tokens=[EOT], chunk_size=chunk_size) == \
            Counter(t for c in got for t in reference_pretokens(c, [EOT]))


def test_chunk_reader_stretch_without_a_cut_is_linear(tmp_path):
    """Megabytes with no safe cut: one chunk, the buffers double, so the bytes
    allocated (and copied) stay a small multiple of the file."""
    data = b"a" * (3 << 20) + b" end"
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    sizes = []

    def alloc(n):
        sizes.append(n)
        return np.empty(n, np.uint8)

    got, _, _ = _read_all(path, (), 4096, alloc=alloc)
    assert b"".join(got) == data and len(got) <= 2
    assert sum(sizes) < 6 * len(data) and len(sizes) < 40


def test_chunk_reader_without_preadv(tmp_path, monkeypatch):
    data = (FIXTURES / "corpus.en").read_bytes()[:20_000]
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    monkeypatch.delattr(C.os, "preadv")
    got, seen, _ = _read_all(path, [EOT], 1000, threads=4)
    assert b"".join(got) == data and seen == len(data) and len(got) > 10


def test_chunk_reader_errors_and_early_close(tmp_path):
    bom = tmp_path / "u16.txt"
    bom.write_bytes("hello".encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16.*convert it first"):
        _read_all(bom)
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 100_000)
    freed = []
    with C.ChunkReader(path, (), 1000, free=freed.append) as reader:
        first = next(iter(reader))
        assert bytes(first).startswith(b"word ")
    assert not reader._thread.is_alive() and freed  # stopped, and every buffer handed back
    with pytest.raises(FileNotFoundError):
        C.ChunkReader(tmp_path / "missing.txt", (), 1000)
    (tmp_path / "x.jsonl").write_text("{}")
    (tmp_path / "x.txt.gz").write_bytes(b"")
    assert C.is_plain_file(path) and not C.is_plain_file("-") and not C.is_plain_file(tmp_path)
    assert not C.is_plain_file(tmp_path / "x.jsonl") and not C.is_plain_file(tmp_path / "x.txt.gz")
