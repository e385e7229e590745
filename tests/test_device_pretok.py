"""Pre-tokenization and exact counting on the device (kernels/pretokenize.cu,
kernels/wordcount.cu, gpubpe.pretok.device) against the `regex` oracle and the
CPU's counts. Every test runs on cuda-sim, and on a CUDA device where one is
lent (``-m gpu``). The simulator is slow: many small inputs, and real text
only from tests/fixtures (a few hundred KB at most per test)."""

import random
import re
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("regex", reason="the oracle is the regex package")  # a bare device machine may lack it
from hypothesis import given, settings  # noqa: E402 (conftest stands in for hypothesis where it is missing)
from hypothesis import strategies as st

import gpubpe
from gpubpe import backends, config
from gpubpe import corpus as C
from gpubpe.backends.cuda import catalogue as CAT

from ._helpers import FIXTURES, max_examples
from .reference import reference_pretokens
from .test_pretokenize import EOT, FRAGMENTS, INVALID, NOT_SPACES, SPACES, fuzz_bytes

D = pytest.importorskip("gpubpe.pretok.device")


@pytest.fixture(params=["cuda-sim", pytest.param("cuda", marks=pytest.mark.gpu)])
def dev(request):
    try:
        D.device(request.param)
    except backends.BackendUnavailable as e:
        pytest.skip(str(e))
    return request.param


def device_pretokens(data: bytes, specials=(), backend="cuda-sim") -> list[bytes]:
    return D.pretokenize_device(data, C.special_bytes(specials), backend=backend)


def device_counts(chunks, specials=(), backend="cuda-sim", **kw) -> dict[bytes, int]:
    return D.count_device(chunks, C.special_bytes(specials), backend=backend, **kw).to_counts()


def chunked(data: bytes, specials, size: int) -> list[bytes]:
    """``data`` read in blocks of ``size`` and cut as the corpus reader cuts it."""
    blocks = [data[i : i + size] for i in range(0, len(data), size)]
    return list(C.cut_stream(blocks, C.special_bytes(specials), size))


def joined(cases: list[bytes]) -> bytes:
    """Independent cases in one input: a special token between them cuts the
    pieces apart, so one launch checks them all (each is its own piece)."""
    return EOT.encode().join(cases)


# ---------------------------------------------------------------------------
# Pre-tokens against the oracle
# ---------------------------------------------------------------------------


@settings(max_examples=max_examples(600), deadline=None)
@given(st.lists(fuzz_bytes, min_size=1, max_size=8))
def test_fuzzed_pretokens_match_regex(cases):
    # each case alone, and all of them as pieces of one input
    for data in cases[:2]:
        assert device_pretokens(data) == reference_pretokens(data)
    data = joined(cases)
    assert device_pretokens(data, [EOT]) == reference_pretokens(data, [EOT])


@settings(max_examples=max_examples(300), deadline=None)
@given(fuzz_bytes, st.sampled_from([(EOT,), ("a b", "a b c"), ("'s", "é", "\u3000"), ("aa", "aaa", "a a"),
                                     ("ab", "ba", "bab")]))
def test_special_tokens_inside_words(data, specials):
    # specials inside words and runs, overlapping one another (the longest
    # first, leftmost, never overlapping: as the regex alternation takes them)
    data = data.replace(b"|>", b"|>x").replace(b"a", b"a b c").replace(b"b", b"aab")
    assert device_pretokens(data, specials) == reference_pretokens(data, specials)


def test_many_special_tokens_go_through_the_host(monkeypatch):
    specials = [f"<|r{i}|>" for i in range(70)] + [EOT]  # more than config.DEVICE_SPECIALS_MAX
    data = "".join(f"x{i} <|r{i}|>y{EOT}" for i in range(0, 80, 3)).encode()
    assert device_pretokens(data, specials) == reference_pretokens(data, specials)
    monkeypatch.setattr(config, "DEVICE_SPECIALS_MAX", 255)
    assert device_pretokens(data, specials) == reference_pretokens(data, specials)


CORNERS = [
    b"it's", b"IT'S", b"''s", b" 's", b"we'll've", b"a  b", b"a \n b", b"a\n\nb", b"a  ", b"x\x1cy",
    "a\u3000b".encode(), "é\u0301".encode(), b"ab\xffcd", b" \xed\xa0\x80!", b"\xe0\x81\x81x", " ٣٤5".encode(),
    b"'s'd'm't'll've're", b"'sa", b"'llama", b"!'s", b"a'''s", b"\n's", b"  \n's", b" 'll", b"1'2", b"'", b"'l",
    b"'v", b"'r", b"  'x", b" \t'x", b"\xc3'", b"\xe2\x82'", b"x\xf0\x9f\x98'", "\u00a0's".encode(), b"'s  ", b"  ",
    b" ", b"\n", b"a\n", b" a", b"\t\t a", b"a \xc2\xa0b", "a \u2028 b".encode(), b"x  \xff", b"\xff  \xff ",
]  # fmt: skip


def test_corners(dev):
    for text in CORNERS:
        assert device_pretokens(text, backend=dev) == reference_pretokens(text), text
    data = joined(CORNERS)
    assert device_pretokens(data, [EOT], backend=dev) == reference_pretokens(data, [EOT])


def test_every_whitespace_and_separator(dev):
    cases = [ctx.format(s).encode() for s in SPACES + NOT_SPACES
             for ctx in ("a{0}b", "a{0}{0}b", "a {0}b", "a{0} b", "{0}", "a{0}", "'{0}s", "1{0}{0} {0}x", "{0}'s")]
    data = joined(cases)
    assert device_pretokens(data, [EOT], backend=dev) == reference_pretokens(data, [EOT])


def test_every_plane_and_invalid_sequence(dev):
    rng = random.Random(16)
    cps = [rng.randrange(lo, hi) for lo, hi in ((0, 0x80), (0x80, 0x800), (0x800, 0x10000), (0x10000, 0x110000))
           for _ in range(300)]
    parts = [chr(c).encode("utf-8", "surrogatepass") for c in cps] + INVALID * 5 + [f.encode() for f in FRAGMENTS]
    rng.shuffle(parts)
    data = b"".join(p + rng.choice([b"", b" ", b"  ", b"'s", b"\n"]) for p in parts)
    assert device_pretokens(data, backend=dev) == reference_pretokens(data)
    for _ in range(20):  # cut anywhere: truncated sequences at both ends
        a = rng.randrange(len(data))
        piece = data[a : a + rng.randrange(1, 60)]
        assert device_pretokens(piece, backend=dev) == reference_pretokens(piece)


@pytest.mark.parametrize("name", ["corpus.en", "german.txt", "tinystories_sample.txt", "address.txt"])
def test_real_text(dev, name):
    data = (FIXTURES / name).read_bytes()
    assert device_pretokens(data, [EOT], backend=dev) == reference_pretokens(data, [EOT])


def test_public_pretokenize_takes_the_backend(dev):
    data = (FIXTURES / "german.txt").read_bytes() + b"\xc3 it's<|endoftext|>x"
    assert gpubpe.pretokenize(data, special_tokens=[EOT], backend=dev) == reference_pretokens(data, [EOT])


# ---------------------------------------------------------------------------
# Counts: exact, whatever the chunks, the table size or the hash
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [7, 300, 1 << 20])
def test_counts_equal_the_cpus_whatever_the_chunks(dev, chunk_size):
    data = (FIXTURES / "corpus.en").read_bytes()[:30_000] + b"\xff\xfe trailing \xe2\x82"
    cpu = gpubpe.count_pretokens(data, special_tokens=[EOT], backend="cpu")
    assert cpu == Counter(reference_pretokens(data, [EOT]))
    assert gpubpe.count_pretokens(data, special_tokens=[EOT], chunk_size=chunk_size, backend=dev) == cpu


@settings(max_examples=max_examples(200), deadline=None)
@given(fuzz_bytes, st.integers(1, 40), st.sampled_from([(), (EOT,), ("a b", "a b c")]))
def test_counts_fuzzed_chunk_borders(data, chunk_size, specials):
    expected = Counter(reference_pretokens(data, specials))
    chunks = chunked(data, specials, chunk_size)
    assert device_counts(chunks, specials) == expected


@pytest.mark.parametrize("hmask, rounds", [(0x3, 2), (0xF, 4), (0x1, 1), (0, 3)])
def test_collisions_never_merge_two_words(hmask, rounds):
    """Keys cut to a few bits: hundreds of distinct words share each key, so
    the later rounds and the host fallback run, and the counts stay exact."""
    data = (FIXTURES / "tinystories_sample.txt").read_bytes() * 2 + "naïve café ½ 日本".encode()
    expected = Counter(reference_pretokens(data, [EOT]))
    sp = C.special_bytes([EOT])
    counter = D.DeviceCounter(D.device("cuda-sim"), hmask=hmask, rounds=rounds)
    counter.trace = []
    chunks = chunked(data, [EOT], 500)
    assert len(chunks) > 3
    counter.add_chunks(chunks, sp)
    table = counter.table()
    assert table.to_counts() == expected
    assert table.num_words == len(expected)  # each word once: on the device or on the host, never both
    assert counter.host_fallbacks > 0  # the exact fallback really ran
    if rounds > 1:
        assert any(t["round"] > 0 and t["new_words"] > 0 for t in counter.trace)  # later rounds placed words


def test_a_full_hash_needs_one_round():
    data = (FIXTURES / "corpus.en").read_bytes()[:20_000]
    sp = C.special_bytes([EOT])
    counter = D.DeviceCounter(D.device("cuda-sim"))
    counter.trace = []
    counter.add_chunks(chunked(data, [EOT], 5000), sp)
    assert counter.table().to_counts() == Counter(reference_pretokens(data, [EOT]))
    assert all(t["left"] == 0 for t in counter.trace) and counter.host_fallbacks == 0


def test_table_grows_across_chunks(monkeypatch, dev):
    monkeypatch.setattr(config, "DEVICE_COUNT_MIN_BITS", 2)
    rng = random.Random(0)
    words = [" " + "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(1, 30))) for _ in range(4000)]
    words += ["x" * k for k in range(1, 40)] * 3 + [" é" * k for k in range(1, 20)]
    data = "".join(words).encode()
    chunks = chunked(data, (), 2000)
    assert len(chunks) > 10
    counter = D.DeviceCounter(D.device(dev))
    counter.add_chunks(chunks, ())
    assert counter.bits > 10  # grew (rehashed) several times
    table = counter.table()
    assert table.to_counts() == Counter(reference_pretokens(data))
    host = table.to_host()
    assert host.symbols.dtype == np.int32 and host.offsets.dtype == np.int64 and host.counts.dtype == np.int64
    assert table.max_merges() == host.max_merges()


def test_count_pretokens_paths_and_other_patterns(tmp_path, dev):
    path = tmp_path / "c.txt"
    data = (FIXTURES / "tinystories_sample.txt").read_bytes() + b" WE'LL 12345 \r\n\r\n  x "
    path.write_bytes(data)
    cpu = gpubpe.count_pretokens(path, special_tokens=[EOT], chunk_size=256)
    assert gpubpe.count_pretokens(path, special_tokens=[EOT], chunk_size=256, backend=dev) == cpu
    # other patterns keep the CPU pre-tokenizer on every backend
    assert (gpubpe.count_pretokens(data, special_tokens=[EOT], pattern="cl100k", backend=dev)
            == gpubpe.count_pretokens(data, special_tokens=[EOT], pattern="cl100k"))


@pytest.mark.parametrize("chunk_size", [None, 300, 4096])
def test_files_read_into_the_counters_buffers(tmp_path, monkeypatch, dev, chunk_size):
    """Plain files go through ChunkReader into the counter's host buffers (its
    threads and parts made small here so they really run), other files through
    iter_chunks, in one call: the counts and the training manifest are the CPU's."""
    import gzip
    import json

    monkeypatch.setattr(config, "READ_PART_MIN", 64)
    monkeypatch.setattr(config, "READ_CUT_WINDOW", 128)
    text = (FIXTURES / "tinystories_sample.txt").read_bytes()
    plain = tmp_path / "a.txt"
    plain.write_bytes(text + " naïve".encode() + b"\xff\xe2\x82 " + b"x" * 5000 + f" {EOT}{EOT} 12".encode())
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(text[:3000]))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["it's", " we'll 42", EOT]))
    (tmp_path / "d.txt").write_bytes(text[::-1][:7000])
    paths = [plain, tmp_path / "b.txt.gz", tmp_path / "c.jsonl", tmp_path / "d.txt"]
    made = []
    orig = D.DeviceCounter.host_buffer

    def host_buffer(self, n):
        made.append(orig(self, n))
        return made[-1]

    monkeypatch.setattr(D.DeviceCounter, "host_buffer", host_buffer)
    cpu = gpubpe.count_pretokens(paths, special_tokens=[EOT], chunk_size=chunk_size)
    assert gpubpe.count_pretokens(paths, special_tokens=[EOT], chunk_size=chunk_size, backend=dev) == cpu
    assert made  # the plain files were read into the counter's buffers
    assert len({id(b) for b in made}) < len(made)  # the second plain file reused the first one's buffers
    models = [gpubpe.train(paths, vocab_size=300, special_tokens=[EOT], backend=b, chunk_size=chunk_size,
                           progress=False) for b in ("cpu", dev)]
    assert models[0].merges == models[1].merges
    assert models[0].record["inputs"] == models[1].record["inputs"]


def test_overlapping_special_tokens(dev):
    """Candidates that overlap (a token whose end starts another occurrence) are
    resolved leftmost first, as the regex alternation does."""
    data = b"xxxxx abababa xx|x ab aba xxx"
    for specials in (["xx"], ["aba"], ["aba", "xx", "ab"], ["xxx", "xx"]):
        expected = Counter(reference_pretokens(data, specials))
        assert device_counts([data], specials, backend=dev) == expected
        assert device_pretokens(data, specials, backend=dev) == reference_pretokens(data, specials)


def test_backend_errors():
    with pytest.raises(ValueError, match="unknown backend 'gpu'.*'cuda-sim'"):
        gpubpe.count_pretokens(b"x", backend="gpu")
    if not backends.cuda_available():
        with pytest.raises(backends.BackendUnavailable, match="backend='cpu'"):
            gpubpe.pretokenize(b"x", backend="cuda")


def test_empty_and_special_only_inputs(dev):
    for data in (b"", EOT.encode(), EOT.encode() * 3):
        assert device_pretokens(data, [EOT], backend=dev) == []
        assert gpubpe.count_pretokens(data, special_tokens=[EOT], backend=dev) == {}


# ---------------------------------------------------------------------------
# Training: the device counts feed the device merge loop
# ---------------------------------------------------------------------------


def test_training_counts_on_the_device_and_merges_the_same(monkeypatch, dev):
    text = (FIXTURES / "tinystories_sample.txt").read_text() + " naïve café it's 42 "
    cpu = gpubpe.train(iter([text]), vocab_size=320, special_tokens=[EOT], backend="cpu", progress=False)
    tables = []
    orig = D.count_device_inputs

    def spy(*a, **k):
        tables.append(orig(*a, **k))
        return tables[-1]

    monkeypatch.setattr(D, "count_device_inputs", spy)
    got = gpubpe.train(iter([text]), vocab_size=320, special_tokens=[EOT], backend=dev, progress=False)
    assert len(tables) == 1 and tables[0].on_device  # counted on the device, handed on as it is
    assert got.merges == cpu.merges
    monkeypatch.setattr(config, "DEVICE_PRETOKENIZE", False)
    assert gpubpe.train(iter([text]), vocab_size=320, special_tokens=[EOT], backend=dev,
                        progress=False).merges == cpu.merges
    assert len(tables) == 1  # the CPU counted this time


# ---------------------------------------------------------------------------
# The kernels' constants
# ---------------------------------------------------------------------------


def test_constants_match_the_kernels():
    pt = (CAT.kernel_dir() / "pretokenize.cu").read_text()
    wc = (CAT.kernel_dir() / "wordcount.cu").read_text()
    assert int(re.search(r"#define PT_TILE (\d+)", pt).group(1)) == CAT.PT_TILE
    for name in ("WC_USED", "WC_NWORDS", "WC_ABYTES", "WC_NEXT", "WC_ERR", "WC_SIZE"):
        assert int(re.search(rf"#define {name} (\d+)", wc).group(1)) == getattr(CAT, name), name
    assert int(re.search(r"#define WC_NO_REP (0x[0-9A-F]+)ll", wc).group(1), 16) == CAT.WC_NO_REP
