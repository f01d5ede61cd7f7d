"""A1111 prompt syntax: expected outputs written by hand from A1111's documented examples and rules."""

import pytest

from ghostreview.generation.prompts import extract_lora_tags, parse_prompt_attention, plain_text


@pytest.mark.parametrize(
    "text, expected",
    [
        # The examples A1111 documents for its parser.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.1**4), (".", 1.1)],
        ),
        # Further rules.
        ("[faded]", [("faded", 1 / 1.1)]),
        ("[[faded]]", [("faded", 1 / 1.1 / 1.1)]),
        ("(a:0.5) b", [("a", 0.5), (" b", 1.0)]),
        ("((a:2))", [("a", 2 * 1.1)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("(a:-1)", [("a", -1.0)]),
        ("x) y] z", [("x) y] z", 1.0)]),  # stray closers are text
        ("x:1.3) y", [("x:1.3) y", 1.0)]),  # a weight without an open bracket is text
        ("time: noon", [("time: noon", 1.0)]),
        ("\\\\", [("\\", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # not a number: literal text, bracket closed at the end
        ("", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a, BREAK, b", [("a,", 1.0), ("BREAK", -1.0), (", b", 1.0)]),
        ("BREAKFAST break BREAKS", [("BREAKFAST break BREAKS", 1.0)]),  # only the upper-case separate word
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),  # stays a break inside brackets
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ],
)
def test_break(text, expected):
    assert parse_prompt_attention(text) == expected


def test_merging_keeps_separately_weighted_neighbours_apart():
    # equal weights separated by a different weight are not merged
    assert parse_prompt_attention("(a)b(c)") == [("a", 1.1), ("b", 1.0), ("c", 1.1)]


def test_extract_lora_tags():
    text, loras = extract_lora_tags("a cat <lora:styleA:0.7>, <lora:charB> on <hypernet:h:1> grass<lyco:l:0.5>")
    assert text == "a cat ,  on  grass"
    assert loras == [("styleA", 0.7), ("charB", None)]


def test_extract_lora_tags_without_tags_is_identity():
    assert extract_lora_tags("(a:1.2) cat, <not a tag>") == ("(a:1.2) cat, <not a tag>", [])


@pytest.mark.parametrize("tag", ["<lora:x:0.5:0.8>", "<lora:x:abc>", "<lora: :1>", "<lora:x:te=1>"])
def test_extract_lora_tags_rejects(tag):
    with pytest.raises(ValueError, match="LoRA tag"):
        extract_lora_tags(f"a {tag}")


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a (red:1.2) [cat], BREAK , <lora:x:1> \\(sitting\\)", "a red cat, (sitting)"),
        ("((masterpiece)), best quality,, (detailed:1.4)  eyes ,", "masterpiece, best quality, detailed eyes"),
        ("  plain words  ", "plain words"),
        ("x BREAK y", "x y"),
        ("", ""),
    ],
)
def test_plain_text(prompt, expected):
    assert plain_text(prompt) == expected
