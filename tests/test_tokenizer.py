"""The Tokenizer: encode/decode against tiktoken's GPT-2 (built offline from the
CS336 fixtures), against a slow oracle encoder, and the CS336 tokenizer cases."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpubpe
from gpubpe import Tokenizer

from ._helpers import FIXTURES, max_examples
from .reference import GPT2, gpt2_bytes_to_unicode, reference_pretokens, reference_train

EOT = "<|endoftext|>"
# tiktoken's own spelling of the GPT-2 pattern (possessive, same pre-tokens)
TIKTOKEN_GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@lru_cache(maxsize=1)
def gpt2_files():
    """GPT-2's vocab and merges as bytes, read the way the CS336 tests read them."""
    dec = {c: b for b, c in gpt2_bytes_to_unicode().items()}
    raw = json.loads((FIXTURES / "gpt2_vocab.json").read_text(encoding="utf-8"))
    vocab = {i: bytes(dec[c] for c in s) for s, i in raw.items()}
    merges = []
    for line in (FIXTURES / "gpt2_merges.txt").read_text(encoding="utf-8").splitlines():
        parts = line.rstrip().split(" ")
        if len(parts) == 2:
            merges.append((bytes(dec[c] for c in parts[0]), bytes(dec[c] for c in parts[1])))
    return vocab, merges


def gpt2_tokenizer(special_tokens=None) -> Tokenizer:
    """As the CS336 tests build it: special tokens missing from the vocab get the next ids."""
    vocab, merges = gpt2_files()
    vocab = dict(vocab)
    for s in special_tokens or ():
        if s.encode() not in vocab.values():
            vocab[len(vocab)] = s.encode()
    return Tokenizer(vocab, merges, special_tokens)


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer([EOT])


@pytest.fixture(scope="module")
def gpt2_plain():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's gpt2 encoding built from the fixtures (get_encoding needs the network)."""
    tiktoken = pytest.importorskip("tiktoken")
    vocab, _ = gpt2_files()
    ranks = {b: i for i, b in vocab.items() if i != 50256}
    return tiktoken.Encoding("gpt2-offline", pat_str=TIKTOKEN_GPT2, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# The CS336 tokenizer cases, re-stated
# ---------------------------------------------------------------------------

CASES = ["", "s", "🙃", "Hello, how are you?", "Héllò hôw are ü? 🙃"]


@pytest.mark.parametrize("text", CASES)
def test_roundtrip_and_tiktoken_small(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert gpt2.decode(ids) == text


def test_ascii_string_splits_into_words(gpt2):
    ids = gpt2.encode("Hello, how are you?")
    assert [gpt2.decode([i]) for i in ids] == ["Hello", ",", " how", " are", " you", "?"]


def test_special_tokens_in_text(gpt2, tiktoken_gpt2):
    text = "Héllò hôw <|endoftext|><|endoftext|> are ü? 🙃<|endoftext|>"
    ids = gpt2.encode(text)
    assert [gpt2.decode([i]) for i in ids].count(EOT) == 3
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert gpt2.decode(ids) == text


def test_overlapping_special_tokens_longest_wins():
    double = EOT + EOT
    tok = gpt2_tokenizer([EOT, double])
    text = "Hello, how <|endoftext|><|endoftext|> are you?<|endoftext|>"
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    assert pieces.count(EOT) == 1
    assert pieces.count(double) == 1
    assert tok.special_ids[double] == 50257  # appended after the vocab
    assert tok.decode(ids) == text
    # the order given does not matter: longest first either way
    assert gpt2_tokenizer([double, EOT]).encode(text) == ids


@pytest.mark.parametrize("name", ["address.txt", "german.txt", "tinystories_sample.txt", "corpus.en"])
def test_fixture_files_match_tiktoken(gpt2, gpt2_plain, tiktoken_gpt2, name):
    text = fixture_text(name)
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert gpt2.decode(ids) == text
    assert gpt2_plain.decode(gpt2_plain.encode(text)) == text


def test_special_token_then_two_newlines(gpt2, tiktoken_gpt2):
    text = fixture_text("special_token_trailing_newlines.txt")
    assert text == EOT + "\n\n"
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT}) == [50256, 628]
    assert gpt2.decode(ids) == text


def test_special_token_then_two_newlines_then_text(gpt2, tiktoken_gpt2):
    text = fixture_text("special_token_double_newlines_non_whitespace.txt")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT}) == [50256, 198, 198, 33407, 0]
    assert gpt2.decode(ids) == text


def test_from_files_reads_gpt2_files(tiktoken_gpt2):
    tok = Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", special_tokens=[EOT])
    text = fixture_text("tinystories_sample.txt")
    assert tok.encode(text) == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert tok.special_ids == {EOT: 50256}
    # without special tokens, the text of one is ordinary text
    plain = Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt")
    assert plain.encode(EOT) == tiktoken_gpt2.encode_ordinary(EOT)


# ---------------------------------------------------------------------------
# encode_iterable
# ---------------------------------------------------------------------------


def test_encode_iterable_lines_equal_encode(gpt2, tiktoken_gpt2):
    path = FIXTURES / "tinystories_sample.txt"
    with open(path, encoding="utf-8") as f:
        ids = list(gpt2.encode_iterable(f))
    text = fixture_text("tinystories_sample.txt")
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_encode_iterable_whitespace_across_strings(gpt2, chunk_size):
    # whitespace runs, newlines and a special token split across the strings
    text = "a  \n\n \t  b" + " " * 40 + "\n\n<|endoftext|>\n\n  x" + "\n" * 30 + "yes  " + EOT + "  "
    for cut in range(0, len(text), 3):
        parts = [text[:cut], text[cut:]]
        assert list(gpt2.encode_iterable(parts, chunk_size=chunk_size)) == gpt2.encode(text), cut
    one_char_each = list(text)
    assert list(gpt2.encode_iterable(one_char_each, chunk_size=chunk_size)) == gpt2.encode(text)


def test_encode_iterable_other_pattern_cuts_safely():
    """cl100k joins punctuation to the newlines after it ("!\\n" is one pre-token):
    a cut between a non-space and a newline, safe for GPT-2's pattern, is not here."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"!\n"
    tok = Tokenizer(vocab, [(b"!", b"\n")], [EOT], pattern="cl100k")
    text = ("a!\nb!\n\n" * 20 + EOT) * 3
    assert tok.encode("x!\n") == [ord("x"), 256]
    for chunk_size in (1, 5, 64):
        assert list(tok.encode_iterable(list(text), chunk_size=chunk_size)) == tok.encode(text)


def test_encode_iterable_is_lazy(gpt2):
    def endless():
        while True:
            yield "Once upon a time there was a cat. "

    it = gpt2.encode_iterable(endless(), chunk_size=1 << 12)
    first = [next(it) for _ in range(50)]
    assert gpt2.decode(first).startswith("Once upon a time")


# ---------------------------------------------------------------------------
# decode, errors
# ---------------------------------------------------------------------------


def test_decode_replaces_invalid_utf8(gpt2):
    byte_ff = gpt2._bytes_to_id[b"\xff"]
    assert gpt2.decode([byte_ff]) == "\ufffd"
    e_acute = gpt2.encode("é")
    assert len(e_acute) == 1
    first_half = gpt2._bytes_to_id[b"\xc3"]
    assert gpt2.decode([first_half]) == "\ufffd"
    assert gpt2.decode_bytes([first_half, byte_ff]) == b"\xc3\xff"


def test_decode_unknown_id_names_it(gpt2):
    with pytest.raises(ValueError, match="99999999"):
        gpt2.decode([1, 99999999])
    with pytest.raises(ValueError, match="-1"):
        gpt2.decode(iter([5, -1]))


def test_decode_numpy_ids(gpt2):
    np = pytest.importorskip("numpy")
    ids = gpt2.encode("numpy arrays decode too")
    assert gpt2.decode(np.asarray(ids, np.uint16)) == "numpy arrays decode too"


def test_encode_takes_str(gpt2):
    with pytest.raises(TypeError, match="encode_bytes"):
        gpt2.encode(b"bytes")


def test_vocab_without_all_bytes_is_refused():
    with pytest.raises(ValueError, match="256 bytes"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])


def test_merge_outside_vocab_is_refused():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="merge 0"):
        Tokenizer(vocab, [(b"a", b"b")])


# ---------------------------------------------------------------------------
# Against an oracle on trained models
# ---------------------------------------------------------------------------


def oracle_encode(vocab, merges, specials, data: bytes) -> list[int]:
    """CS336's definition, slowly: cut at specials (longest first), pre-tokenize,
    then apply each merge in creation order to every pre-token."""
    import re

    inv: dict[bytes, int] = {}
    for i in sorted(vocab):
        inv.setdefault(vocab[i], i)
    text = data.decode("utf-8", "surrogateescape")
    if specials:
        alts = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        pieces = re.split(f"({alts})", text)
    else:
        pieces = [text]
    out = []
    for k, piece in enumerate(pieces):
        if k % 2:
            out.append(inv[piece.encode()])
            continue
        for pre in reference_pretokens(piece.encode("utf-8", "surrogateescape")):
            parts = [bytes([b]) for b in pre]
            for a, b in merges:
                i = 0
                merged = []
                while i < len(parts):
                    if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                        merged.append(a + b)
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            out.extend(inv[p] for p in parts)
    return out


ADVERSARIAL = (
    "the cat sat on the mat. The cat's hat! aaaa aaaaaaa bbbb  \n\n\n  x\t\ty 1234567 12 123\n"
    "Größe Straße naïve café — ünïcödé. 日本語のテキスト、中文。 Ελληνικά Русский العربية हिन्दी\n"
    "emoji 😀👍🏽👨‍👩‍👧 🙃🙃🙃 ok<|endoftext|>after the end   \n"
).encode() + b"bad \xff\xfe bytes \xc3( and \xe2\x82 cut" + b" aaaaaaaa" * 20 + b"\n" * 5


@pytest.fixture(scope="module")
def trained():
    vocab, merges = reference_train(ADVERSARIAL * 3, 256 + 120 + 1, [EOT])
    return vocab, merges


# pieces, not single chars: special tokens and escaped invalid bytes among them
text_strategy = st.lists(
    st.sampled_from(list("aab  \n\tcé日😀1'") + ["<|endoftext|>", "<|", "\udcff", "\udcc3", "aaaa", "   "]),
    max_size=40,
).map("".join)


@settings(max_examples=max_examples(80), deadline=None)
@given(text=text_strategy)
def test_encode_equals_oracle(trained, text):
    vocab, merges = trained
    tok = Tokenizer(vocab, merges, [EOT])
    data = text.encode("utf-8", "surrogateescape")
    ids = tok.encode(text)
    assert ids == oracle_encode(vocab, merges, [EOT], data)
    assert tok.decode_bytes(ids) == data
    assert tok.encode_bytes(data) == ids


def test_encode_on_training_data_equals_oracle(trained):
    vocab, merges = trained
    tok = Tokenizer(vocab, merges, [EOT])
    assert tok.encode_bytes(ADVERSARIAL) == oracle_encode(vocab, merges, [EOT], ADVERSARIAL)
    assert tok.decode_bytes(tok.encode_bytes(ADVERSARIAL)) == ADVERSARIAL


@settings(max_examples=max_examples(60), deadline=None)
@given(word=st.text(alphabet=st.sampled_from(list("ab aé1")), min_size=40, max_size=400))
def test_heap_path_equals_rescan(trained, word):
    import gpubpe.tokenizer as T

    vocab, merges = trained
    tok = Tokenizer(vocab, merges)
    data = word.encode()
    heap = tok._bpe_heap([tok._byte_ids[b] for b in data])
    saved = T._HEAP_MIN_LEN
    T._HEAP_MIN_LEN = 1 << 30
    try:
        rescan = tok._bpe(data)
    finally:
        T._HEAP_MIN_LEN = saved
    assert heap == rescan


def test_long_runs_equal_oracle(trained):
    vocab, merges = trained
    tok = Tokenizer(vocab, merges)
    for text in ["a" * 2001, " " * 3000 + "x", "1" * 2500 + " aaaa" * 300]:
        assert tok.encode(text) == oracle_encode(vocab, merges, [], text.encode())
    huge = "a" * 200_001 + " " * 100_000  # one pre-token each: the heap path
    assert tok.decode(tok.encode(huge)) == huge


# ---------------------------------------------------------------------------
# The model, the public API, the memory-limit contract
# ---------------------------------------------------------------------------


def test_from_model_and_public_api():
    model = gpubpe.train(iter([ADVERSARIAL.decode("utf-8", "surrogateescape")]), vocab_size=300,
                         special_tokens=[EOT], backend="cpu", progress=False)
    tok = gpubpe.Tokenizer.from_model(model)
    assert "Tokenizer" in gpubpe.__all__
    assert tok.special_ids == {EOT: 299}
    assert tok.encode_bytes(ADVERSARIAL) == oracle_encode(model.vocab, model.merges, [EOT], ADVERSARIAL)


def test_encode_imports_nothing_new():
    """CS336 runs encode under RLIMIT_AS = RSS + 1 MB: encode must not import
    or compile anything lazily (a JIT there aborts the process)."""
    code = f"""
import sys
from gpubpe import Tokenizer
vocab = {{i: bytes([i]) for i in range(256)}}
tok = Tokenizer(vocab, [], ["{EOT}"])
before = set(sys.modules)
tok.encode("hello world {EOT} and more text\\n\\n " * 100)
list(tok.decode(tok.encode("x")))
new = set(sys.modules) - before
assert not new, new
assert "numba" not in sys.modules
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-specific here")
def test_encode_under_address_space_limit():
    """encode on short text under the CS336 limit (RSS + 1 MB) does not crash the process."""
    code = f"""
import resource, psutil, os
from gpubpe import Tokenizer
vocab = {{i: bytes([i]) for i in range(256)}}
tok = Tokenizer(vocab, [], ["{EOT}"])
tok.encode("warm")
rss = psutil.Process(os.getpid()).memory_info().rss
resource.setrlimit(resource.RLIMIT_AS, (rss + 1_000_000, -1))
ids = tok.encode("hello {EOT} world")
print(len(ids))
"""
    pytest.importorskip("psutil")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr  # neither an abort nor a MemoryError: encode allocates almost nothing
    assert r.stdout.strip() == "13"


def test_pattern_is_the_pretokenizers():
    assert gpubpe.GPT2_PATTERN == GPT2
