"""Exports and loaders: HF tokenizer.json, GPT-2 vocab.json + merges.txt,
tiktoken ranks, native model.json. Other libraries encode the exported files
exactly as gpubpe does; every loader reads them back."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import gpubpe
from gpubpe import BPEModel, Tokenizer, formats
from gpubpe.cli import main as cli_main

from ._helpers import FIXTURES
from .reference import gpt2_bytes_to_unicode

EOT = "<|endoftext|>"
PAD = "<|pad|>"

TRAIN_TEXT = (
    "Once upon a time, a little girl named Lily found a needle. She said: \"I'll share it!\"\n\n"
    "Größe, Straße, naïve café — ünïcödé über alles. 日本語のテキスト、中文文本。Ελληνικά Русский текст "
    "العربية हिन्दी 😀👍🏽👨‍👩‍👧 🙃🙃 emoji!!! aaaaaaaaaaaaaaaa      \t\t\n\n\n   1234567890 3.14159\n"
    "def f(x):\n    return x ** 2  # code\n" + EOT + "The end. THE END? the end...\n"
)
TRAIN_BYTES = TRAIN_TEXT.encode() * 4 + b"broken \xff\xfe utf-8 \xc3( here \xe2\x82 and" + b" aaaa" * 50

TEST_TEXTS = [
    "",
    "Hello, world! How's it going? I'm fine, we'll see; they've gone.",
    "Once upon a time" + EOT + "there was" + EOT + EOT + " a cat.\n\n",
    "Größe und Straße — naïve café. 日本語のテキスト 中文 Ελληνικά Русский العربية हिन्दी",
    "😀👍🏽👨‍👩‍👧🙃 emoji run 🙃🙃🙃",
    "   leading spaces, trailing spaces   \n\n\n\t\t  \n",
    "a" * 3000 + " " + " " * 500 + "\n" * 40 + "9" * 200,
    "mixed123numbers456 and  double  spaces\r\nwindows line\r\n",
    TRAIN_TEXT,
] + [(FIXTURES / name).read_text(encoding="utf-8") for name in ("corpus.en", "german.txt", "tinystories_sample.txt")]


@pytest.fixture(scope="module")
def model() -> BPEModel:
    return gpubpe.train(
        iter([TRAIN_BYTES.decode("utf-8", "surrogateescape")]),
        vocab_size=600,
        special_tokens=[EOT, PAD],
        backend="cpu",
        progress=False,
    )


@pytest.fixture(scope="module")
def out_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    formats.export(model, d)
    return d


@pytest.fixture(scope="module")
def tok(model) -> Tokenizer:
    return Tokenizer.from_model(model)


def test_export_writes_every_format(out_dir):
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["gpubpe-files.json", "merges.txt", "model.json", "tokenizer.json", "tokenizer.tiktoken", "vocab.json"]


# ---------------------------------------------------------------------------
# Other libraries load the files and encode as gpubpe does
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEST_TEXTS)
def test_hf_tokenizers_equal(tok, out_dir, text):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    ids = tok.encode(text)
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text == tok.decode(ids)


@pytest.mark.parametrize("text", TEST_TEXTS)
def test_transformers_fast_tokenizer_equal(tok, out_dir, text):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out_dir / "tokenizer.json"))
    ids = tok.encode(text)
    assert fast.encode(text, add_special_tokens=False) == ids
    assert fast.decode(ids) == text


@pytest.mark.parametrize("text", TEST_TEXTS)
def test_tiktoken_equal(tok, model, out_dir, text):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(out_dir / "tokenizer.tiktoken"))
    assert ranks == formats.tiktoken_ranks(model)
    enc = tiktoken.Encoding("t", pat_str=model.pattern, mergeable_ranks=ranks, special_tokens=tok.special_ids)
    ids = tok.encode(text)
    assert enc.encode(text, allowed_special="all") == ids
    assert enc.decode(ids) == text
    assert formats.to_tiktoken(model).encode(text, allowed_special="all") == ids


def test_invalid_utf8_training_data(tok, out_dir):
    """The training data held invalid UTF-8; its byte tokens export and load, and
    tiktoken encodes the raw bytes as gpubpe does."""
    tiktoken = pytest.importorskip("tiktoken")
    enc = formats.to_tiktoken(Tokenizer.load(out_dir / "tokenizer.tiktoken", special_tokens=[EOT, PAD]))
    ids = tok.encode_bytes(TRAIN_BYTES)
    assert tok.decode_bytes(ids) == TRAIN_BYTES
    assert enc.decode_bytes(ids) == TRAIN_BYTES
    for name in ("tokenizer.json", "model.json"):
        again = Tokenizer.load(out_dir / name)
        assert again.encode_bytes(TRAIN_BYTES) == ids
    del tiktoken


# ---------------------------------------------------------------------------
# The files themselves
# ---------------------------------------------------------------------------


def test_gpt2_files_are_gpt2_style(model, out_dir):
    b2u = gpt2_bytes_to_unicode()
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (out_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) - 1 == len(model.merges)
    for line, (a, b) in zip(lines[1:], model.merges):
        assert line == "".join(b2u[x] for x in a) + " " + "".join(b2u[x] for x in b)
    # every token, special tokens too, with its id, as GPT-2's own vocab.json holds <|endoftext|>
    assert vocab[EOT] == len(model.vocab) - 2 and vocab[PAD] == len(model.vocab) - 1
    assert sorted(vocab.values()) == list(range(len(model.vocab)))
    assert vocab["Ġ"] == 32 and vocab["Ċ"] == 10


def test_tiktoken_file_is_base64_and_rank(model, out_dir):
    lines = (out_dir / "tokenizer.tiktoken").read_text().splitlines()
    assert len(lines) == len(model.vocab) - 2  # special tokens are not in the file
    for line, (i, b) in zip(lines, sorted(model.vocab.items())):
        token, rank = line.split(" ")
        assert base64.b64decode(token) == b and int(rank) == i


def test_hf_json_shape(out_dir):
    doc = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert doc["model"]["type"] == "BPE"
    assert [t["content"] for t in doc["added_tokens"]] == [EOT, PAD]
    assert all(t["special"] for t in doc["added_tokens"])
    assert all(isinstance(m, list) and len(m) == 2 for m in doc["model"]["merges"])


# ---------------------------------------------------------------------------
# Loaders read every format back
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.json", "tokenizer.json", "vocab.json", "tokenizer.tiktoken"])
def test_loaders_round_trip(model, out_dir, name):
    specials = [EOT, PAD] if name.endswith(".tiktoken") else None
    t = Tokenizer.load(out_dir / name, special_tokens=specials)
    assert t.merges == model.merges
    assert t.vocab == model.vocab
    assert t.special_tokens == [EOT, PAD]
    assert t.special_ids == {EOT: len(model.vocab) - 2, PAD: len(model.vocab) - 1}
    for text in TEST_TEXTS:
        assert t.encode(text) == Tokenizer.from_model(model).encode(text)


def test_directory_load_prefers_native(model, out_dir, tmp_path):
    assert Tokenizer.load(out_dir).vocab == model.vocab
    for keep in (["tokenizer.json"], ["vocab.json", "merges.txt"]):
        d = tmp_path / keep[0]
        d.mkdir()
        for k in keep:
            (d / k).write_bytes((out_dir / k).read_bytes())
        t = Tokenizer.load(d)
        assert t.merges == model.merges and t.special_tokens == [EOT, PAD]


def test_from_files_cs336_signature(model, out_dir):
    t = Tokenizer.from_files(out_dir / "vocab.json", out_dir / "merges.txt", [EOT])
    assert t.merges == model.merges
    assert t.special_tokens == [EOT]  # only those asked for are matched in text
    assert t.encode(PAD) != [len(model.vocab) - 1]


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpubpe train --out"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\na b c\n")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ValueError, match="two escaped tokens"):
        Tokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        formats.export(BPEModel.from_merge_ids([], []), tmp_path / "x", formats=["sentencepiece"])


# ---------------------------------------------------------------------------
# Duplicate bytes: two merges that make the same token
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dup_model() -> BPEModel:
    a, b, c = ord("a"), ord("b"), ord("c")
    # 256 = bc, 257 = ab, 258 = a+bc = "abc", 259 = ab+c = "abc" again, 260 = abc+abc
    return BPEModel.from_merge_ids([(b, c), (a, b), (a, 256), (257, c), (258, 258)], [EOT])


def test_duplicate_bytes_native_keeps_both(dup_model, tmp_path):
    assert dup_model.vocab[258] == dup_model.vocab[259] == b"abc"
    dup_model.save(tmp_path)
    again = gpubpe.load(tmp_path)
    assert again.vocab == dup_model.vocab and again.merges == dup_model.merges


def test_duplicate_bytes_encode_gives_first_id(dup_model):
    tok = Tokenizer.from_model(dup_model)
    assert tok.encode("abc") == [258]
    assert tok.encode("abcabc") == [260]
    assert tok.decode([259]) == "abc"  # the later id decodes, and is never produced
    for text in ["abcabcab", "ababab", "bcabc", "cabcabca", "aabbcc"]:
        assert 259 not in tok.encode(text)


def test_duplicate_bytes_in_each_format(dup_model, tmp_path):
    formats.export(dup_model, tmp_path)
    hf = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert hf["model"]["vocab"]["abc"] == 258 and 259 not in hf["model"]["vocab"].values()
    assert ["abc", "abc"] in hf["model"]["merges"]  # (abc, abc) merges to 260
    assert ["a", "bc"] in hf["model"]["merges"] and ["ab", "c"] in hf["model"]["merges"]
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["abc"] == 258 and 259 not in vocab.values()
    assert len((tmp_path / "merges.txt").read_text().splitlines()) == 1 + 5
    ranks = formats.read_tiktoken(tmp_path / "tokenizer.tiktoken")
    assert ranks[b"abc"] == 258 and 259 not in ranks.values()
    # GPT-2 files and tokenizer.json keep both merges: loading gives the same tokenizer
    # except that the id 259 is a hole
    for name in ("tokenizer.json", "vocab.json"):
        t = Tokenizer.load(tmp_path / name)
        assert t.merges == dup_model.merges
        assert 259 not in t.vocab
    # tiktoken has no merges list: the later merge of the same bytes is gone
    t = Tokenizer.load(tmp_path / "tokenizer.tiktoken", special_tokens=[EOT])
    assert (b"ab", b"c") not in t.merges and (b"a", b"bc") in t.merges


@pytest.mark.parametrize("text", ["abc", "abcabc", "abcabcab", "ababab", "bcabc", "cabcabca", "aabbcc abc"])
def test_duplicate_bytes_hf_and_tiktoken_encode_as_gpubpe(dup_model, tmp_path, text):
    tokenizers = pytest.importorskip("tokenizers")
    formats.export(dup_model, tmp_path)
    tok = Tokenizer.from_model(dup_model)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text).ids == tok.encode(text)
    enc = formats.to_tiktoken(dup_model)
    assert enc.decode(enc.encode(text)) == text
    assert enc.encode(text) == tok.encode(text)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_train_writes_all_and_export_converts(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(TRAIN_BYTES)
    out = tmp_path / "tok"
    assert cli_main(["train", str(corpus), "--vocab-size", "400", "--special-token", EOT, "--out", str(out),
                     "--backend", "cpu", "-q"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.json", "tokenizer.json", "vocab.json", "merges.txt",
                                               "tokenizer.tiktoken", "gpubpe-files.json"}
    conv = tmp_path / "conv"
    assert cli_main(["export", str(out / "tokenizer.json"), "--out", str(conv), "--format", "tiktoken",
                     "--format", "gpt2", "-q"]) == 0
    assert {p.name for p in conv.iterdir()} == {"vocab.json", "merges.txt", "tokenizer.tiktoken", "gpubpe-files.json"}
    a = Tokenizer.load(out)
    b = Tokenizer.load(conv / "tokenizer.tiktoken", special_tokens=[EOT])
    assert a.encode_bytes(TRAIN_BYTES) == b.encode_bytes(TRAIN_BYTES)
    np.testing.assert_array_equal(a.encode(TRAIN_TEXT), b.encode(TRAIN_TEXT))


def test_duplicate_bytes_where_tiktoken_differs(tmp_path):
    """The documented limit: tiktoken ranks tokens, not merges, so the later
    merge of duplicate bytes takes the earlier one's priority. HF and the GPT-2
    files keep the merges and encode as gpubpe does."""
    tokenizers = pytest.importorskip("tokenizers")
    a, b, c, d = map(ord, "abcd")
    # 256 ab, 257 bc, 258 a+bc = abc, 259 cd, 260 ab+c = abc again
    model = BPEModel.from_merge_ids([(a, b), (b, c), (a, 257), (c, d), (256, c)], [])
    formats.export(model, tmp_path)
    tok = Tokenizer.from_model(model)
    # ab first; then (ab, c) ranks 4 and (c, d) ranks 3: cd wins
    assert tok.encode("abcd") == [256, 259]
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("abcd").ids == [256, 259]
    assert Tokenizer.load(tmp_path / "vocab.json").encode("abcd") == [256, 259]
    # tiktoken: "abc" has rank 258 < 259, so ab+c merges first
    assert formats.to_tiktoken(model).encode("abcd") == [258, d]


def test_special_token_equal_to_a_merged_token(tmp_path):
    """A special token whose bytes a merge also made keeps its own id in every format."""
    t, h, e = map(ord, "the")
    model = BPEModel.from_merge_ids([(t, h), (256, e)], ["the"])  # 257 = "the", 258 = special "the"
    tok = Tokenizer.from_model(model)
    assert tok.special_ids == {"the": 258}
    # special tokens match anywhere, "there" included; the merge still encodes bytes given as bytes
    assert tok.encode("the there") == [258, 32, 258, ord("r"), e]
    assert tok._bpe(b"the") == [257]
    formats.export(model, tmp_path)
    for name in ("tokenizer.json", "model.json"):
        again = Tokenizer.load(tmp_path / name)
        assert again.special_ids == {"the": 258}, name
        assert again.merges == model.merges and again._bpe(b"the") == [257], name
    assert formats.read_tiktoken(tmp_path / "tokenizer.tiktoken")[b"the"] == 257


@pytest.mark.parametrize("pattern", ["cl100k", "o200k"])
def test_other_patterns_export(tmp_path, pattern):
    """The pattern travels with the model: HF's Split regex and tiktoken's pat_str.
    (cl100k's possessive interval ``{1,3}+`` means a repetition to Oniguruma:
    the export rewrites it.)"""
    tokenizers = pytest.importorskip("tokenizers")
    model = gpubpe.train(
        iter([TRAIN_BYTES.decode("utf-8", "surrogateescape")]),
        vocab_size=500,
        special_tokens=[EOT],
        backend="cpu",
        pattern=pattern,
        progress=False,
    )
    formats.export(model, tmp_path)
    tok = Tokenizer.load(tmp_path)
    assert tok.pattern == model.pattern != gpubpe.GPT2_PATTERN
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    enc = formats.to_tiktoken(tok)
    from_hf = Tokenizer.load(tmp_path / "tokenizer.json")  # the pattern as written for Oniguruma
    for text in TEST_TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids
        assert from_hf.encode(text) == ids
        assert enc.encode(text, allowed_special="all") == ids
        assert tok.decode(ids) == text


def test_gpt2_own_files_convert(tmp_path):
    """GPT-2's files (bytes not at ids 0..255) convert to every format but
    model.json, and each conversion encodes as GPT-2 does."""
    tokenizers = pytest.importorskip("tokenizers")
    src = tmp_path / "gpt2"
    src.mkdir()
    (src / "vocab.json").write_bytes((FIXTURES / "gpt2_vocab.json").read_bytes())
    (src / "merges.txt").write_bytes((FIXTURES / "gpt2_merges.txt").read_bytes())
    out = tmp_path / "out"
    assert cli_main(["export", str(src), "--out", str(out), "-q"]) == 0
    assert not (out / "model.json").exists()
    gpt2 = Tokenizer.load(src)
    assert gpt2.special_ids == {EOT: 50256}  # found in vocab.json: made by no merge
    hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    from_tiktoken = Tokenizer.load(out / "tokenizer.tiktoken", special_tokens={EOT: 50256})
    assert from_tiktoken.merges == gpt2.merges  # recovered from the ranks alone
    for name in ("tinystories_sample.txt", "german.txt", "address.txt"):
        text = (FIXTURES / name).read_text(encoding="utf-8")
        ids = gpt2.encode(text)
        assert hf.encode(text).ids == ids
        assert from_tiktoken.encode(text) == ids


@pytest.mark.parametrize("indent", [0, 1, 2])
def test_indented_json_is_json_dumps_text(indent):
    # tokenizer.json and vocab.json are written by a faster formatter: the
    # same text as json.dumps(ensure_ascii=False, indent=...), escapes,
    # nesting, empty containers and scalars included; a value it does not
    # write itself (a float, an int key) leaves the document to json.dumps
    docs = [
        {"a": [1, [], {}, None, True, False, "x\n\"y\"\\\t\x00é中\U0001F600\ud800"], "": {"k": [[1, 2], ("t",)]}},
        {formats.escape(bytes([b, 255 - b])): b for b in range(256)},
        [], {}, "s", 7, None,
        {"f": 1.5, "n": [float("inf")]}, {1: "int key"}, [{"deep": [[[]]]}],
    ]
    for doc in docs:
        assert formats._dumps_indented(doc, indent) == json.dumps(doc, ensure_ascii=False, indent=indent)


def test_escape_is_the_byte_to_unicode_table():
    # escape() translates through latin-1: each byte to GPT-2's stand-in
    table = gpt2_bytes_to_unicode()
    every = bytes(range(256))
    assert formats.escape(every) == "".join(table[b] for b in every)
    assert formats.unescape(formats.escape(every)) == every and formats.escape(b"") == ""
