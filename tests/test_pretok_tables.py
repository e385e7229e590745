"""The stored character-class table against the installed `regex`, all of Unicode."""

import numpy as np
import regex

from gpubpe import _unicode


def test_table_matches_installed_regex_for_every_code_point():
    # One string of every code point, scanned once per class: position == code point.
    text = "".join(map(chr, range(0x110000)))
    stored = _unicode.all_classes()
    assert stored.shape == (0x110000,)
    for code, prop in ((_unicode.LETTER, r"\p{L}"), (_unicode.NUMBER, r"\p{N}"), (_unicode.SPACE, r"\s")):
        expected = np.zeros(0x110000, dtype=bool)
        for m in regex.finditer(prop + "+", text):
            expected[m.start() : m.end()] = True
        got = stored == code
        diff = np.flatnonzero(got != expected)
        assert diff.size == 0, (
            f"class {_unicode.CLASS_NAMES[code]} differs from regex {regex.__version__} at "
            f"{[hex(int(c)) for c in diff[:10]]}: run `python scripts/gen_unicode_tables.py`"
        )


def test_corners():
    c = _unicode.classify
    assert [c(x) for x in (0x1C, 0x1D, 0x1E, 0x1F)] == [_unicode.OTHER] * 4  # not \s for regex
    assert c(0x85) == c(0x2028) == c(0x3000) == c(0xA0) == _unicode.SPACE
    assert c(0x0661) == c(0x0966) == c(0xFF10) == c(0x1D7CE) == _unicode.NUMBER  # Arabic-Indic, Devanagari, fullwidth, math digits
    assert c(0x2167) == _unicode.NUMBER  # Roman numeral (Nl)
    assert c(0x0301) == c(0x200D) == _unicode.OTHER  # combining acute, ZWJ
    assert c(0xDC80) == _unicode.OTHER  # a surrogate: how an invalid byte decodes
    assert c(ord("ß")) == c(0x10400) == _unicode.LETTER


def test_table_is_small():
    assert _unicode.TABLE_PATH.stat().st_size < 16_000
