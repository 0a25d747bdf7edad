"""Text normalizers: what each one does to numbers, punctuation, width and case, and which one
scores which language."""

from __future__ import annotations

import pytest

from funasr_nano_mlx.normalize import basic, cjk_tokens, english, normalize, scoring_for


@pytest.mark.parametrize(
    "text, expected",
    [
        # numbers: spoken forms become digits, written forms are tidied, both meet in the middle
        ("Twenty-one people", "21 people"),
        ("one hundred and five", "105"),
        ("two thousand three hundred forty five", "2345"),
        ("two million three thousand", "2003000"),
        ("a hundred dogs", "100 dogs"),
        ("nineteen eighty four", "1984"),
        ("twenty twenty one", "2021"),
        ("three point one four", "3.14"),
        ("one two three", "1 2 3"),
        ("the twenty third of May", "the 23rd of may"),
        ("the fourth of July", "the 4th of july"),
        ("one hundred first", "101st"),
        ("at first, wait a second", "at first wait a second"),  # ambiguous ordinals stay words
        ("1,000 people paid $5 or 5%", "1000 people paid 5 dollars or 5 percent"),
        ("it costs $1", "it costs 1 dollar"),
        # punctuation and casing
        ("Hello, World! How are you?", "hello world how are you"),
        ('He said: "stop" -- then left...', "he said stop then left"),
        ("It's 3.5 km.", "its 3.5 km"),
        # contractions, titles, hesitations, annotations, diacritics
        ("I can't and I won't; we're fine, they'd go", "i can not and i will not we are fine they would go"),
        ("I cannot", "i can not"),
        ("Mr. Smith and Dr. Jones", "mister smith and doctor jones"),
        ("uh I um think so [noise] (laughs)", "i think so"),
        ("Café naïve résumé", "cafe naive resume"),
        # full-width characters (NFKC)
        ("ＨＥＬＬＯ　ｗｏｒｌｄ１２３", "hello world123"),
    ],
)
def test_english(text, expected):
    assert english(text) == expected


@pytest.mark.parametrize(
    "reference, hypothesis",
    [
        ("TWENTY FIVE DOLLARS", "$25."),
        ("It is nineteen ninety nine.", "it is 1999"),
        ("one hundred and twenty three", "123"),
        ("I CAN'T GO", "I cannot go."),
        ("the twenty first century", "The 21st century"),
    ],
)
def test_english_writes_both_forms_alike(reference, hypothesis):
    assert english(reference) == english(hypothesis)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("你好，世界！", ["你", "好", "世", "界"]),
        ("（注意）【重要】「引用」。", ["重", "要", "引", "用"]),  # （） is () after NFKC: an annotation, removed
        ("「引用」、句号。", ["引", "用", "句", "号"]),
        ("我们用Python写代码", ["我", "们", "用", "python", "写", "代", "码"]),
        ("ＡＢＣ１２３很好", ["abc123", "很", "好"]),  # full-width letters and digits become ASCII
        ("ｶﾀｶﾅとひらがな", ["カ", "タ", "カ", "ナ", "と", "ひ", "ら", "が", "な"]),  # half-width kana become full-width
        ("Hello 世界 World", ["hello", "世", "界", "world"]),
        ("  ", []),
    ],
)
def test_cjk_tokens(text, expected):
    assert cjk_tokens(text) == expected


def test_basic_keeps_letters_of_every_script():
    assert basic("L'homme — ÉCOLE, «bonjour»!") == "lhomme école bonjour"
    assert basic("Xin chào, Việt Nam!") == "xin chào việt nam"
    assert basic("안녕하세요, 세계!") == "안녕하세요 세계"


@pytest.mark.parametrize(
    "language, reference, expected",
    [
        ("en", "hello", ("wer", "english")),
        ("zh", "你好", ("cer", "cjk")),
        ("中文", "你好", ("cer", "cjk")),  # the model's own language names work too
        ("ja", "こんにちは", ("cer", "cjk")),
        ("yue", "你好", ("cer", "cjk")),
        ("ko", "안녕", ("wer", "basic")),
        ("pl", "cześć", ("wer", "basic")),
        (None, "今天 is fine", ("cer", "cjk")),  # no language: CJK characters decide
        (None, "hello", ("wer", "basic")),
    ],
)
def test_scoring_for(language, reference, expected):
    assert scoring_for(language, reference) == expected


def test_normalize_joins_tokens_with_spaces():
    assert normalize("我们用Python。", "cjk") == "我 们 用 python"
    assert normalize("Twenty-One!", "english") == "21"
    assert normalize("Twenty-One!", "basic") == "twenty one"


def test_traditional_to_simplified():  # opencc-python-reimplemented comes with the [eval] extra
    assert cjk_tokens("這是繁體中文，說話。", traditional_to_simplified=True) == cjk_tokens("这是繁体中文说话")
    assert cjk_tokens("這是") == ["這", "是"]  # off unless asked for
