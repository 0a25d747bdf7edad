"""Text normalizers for scoring: the same function is applied to reference and hypothesis, so what
matters is that both sides end up written the same way, not that either is "correct".

Three normalizers, chosen per utterance by `scoring_for(language, reference)`:

- english (WER; language `en`), in the spirit of Whisper's English normalizer, written here:
  NFKC and lower case; bracketed annotations such as `[noise]` or `(laughs)` removed; the
  contractions n't 're 'm 'll 've 'd (and won't, can't, shan't) expanded, other apostrophes dropped
  ("it's" -> "its" on both sides); titles mr mrs ms dr spelled out; diacritics removed; punctuation
  and symbols removed except a decimal point between digits; `$5` -> `5 dollars`, `5%` -> `5 percent`,
  `1,000` -> `1000`; hesitations (uh, um, hmm, mm, mhm) removed; spoken numbers written as digits
  ("twenty one" -> 21, "one hundred and five" -> 105, "nineteen eighty four" -> 1984, "three point
  five" -> 3.5, "twenty third" -> 23rd). Not done: British/American spelling, "first"/"second"
  alone (ambiguous), money and time phrases beyond the above.
- basic (WER; every other language, and unknown languages without CJK text): NFKC, lower case,
  bracketed annotations removed, punctuation and symbols removed, apostrophes dropped.
- cjk (CER; `zh`, `ja`, `yue`, and unknown languages whose reference holds CJK characters): NFKC
  (full-width letters, digits and punctuation become half-width), lower case, optionally
  traditional -> simplified Chinese (needs `opencc-python-reimplemented`), punctuation and symbols
  removed; then every Han/kana character is one token and every run of other letters or digits
  (an English word in Mandarin speech, a number) is one token, as WeNet scores mixed Chinese-English.
  Written numbers are not converted between characters and digits: score sets whose references
  spell numbers in characters (AISHELL) with `itn: false`.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .errors import UserError
from .languages import LANGUAGES, resolve_language

CER_LANGUAGES = ("zh", "ja", "yue")  # written without spaces between words

# Han (with extensions and compatibility ideographs), hiragana, katakana (with the long-vowel mark).
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
CJK_CHAR = re.compile(f"[{_CJK}]")
CJK_TOKENS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
APOSTROPHES = "'’ʼ‘`"

CONTRACTIONS = [  # (pattern, replacement), applied in order: the irregular ones before n't
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'m\b", " am"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"'d\b", " would"),
]
TITLES = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor"}
HESITATIONS = {"uh", "um", "umm", "hmm", "mm", "mmm", "mhm", "er", "erm"}
CURRENCIES = {"$": "dollar", "£": "pound", "€": "euro"}

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
SMALL = {word: i for i, word in enumerate(ONES)} | {word: 20 + 10 * i for i, word in enumerate(TENS)}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
IRREGULAR_ORDINALS = {
    "first": "one",
    "second": "two",
    "third": "three",
    "fifth": "five",
    "eighth": "eight",
    "ninth": "nine",
    "twelfth": "twelve",
}
AMBIGUOUS_ORDINALS = {"first", "second"}  # "at first", "a second": numbers only inside a number


def language_code(language: str | None) -> str | None:
    """ISO code of an ISO code or the model's own language name ('中文' -> 'zh'); None for auto."""
    name = resolve_language(language)
    return next((code for code, known in LANGUAGES.items() if known == name), None)


def scoring_for(language: str | None, reference: str) -> tuple[str, str]:
    """(metric, normalizer) for one utterance: ('cer', 'cjk'), ('wer', 'english') or ('wer', 'basic')."""
    code = language_code(language)
    if code in CER_LANGUAGES or (code is None and CJK_CHAR.search(reference)):
        return "cer", "cjk"
    return "wer", "english" if code == "en" else "basic"


def normalize(text: str, normalizer: str, traditional_to_simplified: bool = False) -> str:
    """`text` as space-separated scoring tokens (words, or CJK characters and words)."""
    if normalizer == "cjk":
        return " ".join(cjk_tokens(text, traditional_to_simplified))
    return english(text) if normalizer == "english" else basic(text)


# -- shared steps -----------------------------------------------------------------------------------


def _is_symbol(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"  # punctuation and symbols, in every script


def strip_symbols(text: str, keep_decimal_point: bool = False) -> str:
    """Apostrophes deleted (the word stays whole), other punctuation and symbols become spaces."""
    text = re.sub(f"[{APOSTROPHES}]", "", text)
    if keep_decimal_point:
        text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)  # NUL is not a symbol: it survives the next step
    text = "".join(" " if _is_symbol(c) else c for c in text).replace("\0", ".")
    return " ".join(text.split())


def basic(text: str) -> str:
    return strip_symbols(BRACKETED.sub(" ", unicodedata.normalize("NFKC", text).lower()))


# -- CJK ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _traditional_to_simplified():
    try:
        from opencc import OpenCC  # opencc-python-reimplemented (pure Python, Apache-2.0)
    except ImportError:
        raise UserError(
            "traditional_to_simplified needs the opencc-python-reimplemented package: "
            "pip install opencc-python-reimplemented"
        ) from None
    return OpenCC("t2s").convert


def cjk_tokens(text: str, traditional_to_simplified: bool = False) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    if traditional_to_simplified:
        text = _traditional_to_simplified()(text)
    return CJK_TOKENS.findall(strip_symbols(BRACKETED.sub(" ", text)))


# -- English ----------------------------------------------------------------------------------------


def _remove_diacritics(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn")


def _expand_symbols(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    for symbol, unit in CURRENCIES.items():
        text = re.sub(
            re.escape(symbol) + r"\s*(\d+(?:\.\d+)?)", lambda m: f"{m[1]} {unit}{'' if m[1] == '1' else 's'}", text
        )
    return re.sub(r"(?<=\d)\s*%", " percent", text)


def english(text: str) -> str:
    text = BRACKETED.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = re.sub(f"[{APOSTROPHES}]", "'", _expand_symbols(text))
    for pattern, replacement in CONTRACTIONS:
        text = re.sub(pattern, replacement, text)
    words = strip_symbols(_remove_diacritics(text), keep_decimal_point=True).split()
    words = [TITLES.get(w, w) for w in words if w not in HESITATIONS]
    return " ".join(spoken_numbers_to_digits(words))


def _ordinal_suffix(value: int) -> str:
    if 11 <= value % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")


def _cardinal_of_ordinal(word: str) -> str | None:
    """'twenty' for 'twentieth', 'four' for 'fourth', 'hundred' for 'hundredth'; None otherwise."""
    if word in IRREGULAR_ORDINALS:
        return IRREGULAR_ORDINALS[word]
    if word.endswith("ieth") and word[:-4] + "y" in SMALL:
        return word[:-4] + "y"
    if word.endswith("th") and (word[:-2] in SMALL or word[:-2] in SCALES or word[:-2] == "hundred"):
        return word[:-2]
    return None


class _Number:
    """A spoken number read word by word: `total` holds the finished scale groups (2000 of "two
    thousand three hundred"), `group` the part below them, `last` the kind of the last word read."""

    def __init__(self, value: int):
        self.total, self.group, self.last, self.scale = 0, value, _kind(value), float("inf")

    def add(self, word: str) -> bool:
        """Take `word` as the next part of this number; False when it starts something else."""
        if word in SMALL:
            value, kind = SMALL[word], _kind(SMALL[word])
            if self.last == "tens" and kind == "unit" and self.group % 10 == 0:
                self.group += value  # twenty one
            elif self.last in ("hundred", "scale") and self.group % 100 == 0:
                self.group += value  # one hundred five, two thousand twenty
            elif self.total == 0 and self.last in ("teen", "tens") and 10 <= self.group < 100 and kind != "unit":
                self.group = self.group * 100 + value  # nineteen eighty (four), twenty twenty: years
            else:
                return False
            self.last = kind
            return True
        if word == "hundred" and 0 < self.group < 100:
            self.group, self.last = self.group * 100, "hundred"
            return True
        if word in SCALES and self.group > 0 and SCALES[word] < self.scale:
            self.total, self.group = self.total + self.group * SCALES[word], 0
            self.last, self.scale = "scale", SCALES[word]
            return True
        return False

    @property
    def value(self) -> int:
        return self.total + self.group


def _kind(value: int) -> str:
    return "unit" if value < 10 else "teen" if value < 20 else "tens"


def _digit_word(words: list[str], i: int) -> bool:
    return i < len(words) and SMALL.get(words[i], 10) < 10


def spoken_numbers_to_digits(words: list[str]) -> list[str]:
    out: list[str] = []
    number: _Number | None = None

    def flush():
        nonlocal number
        if number is not None:
            out.append(str(number.value))
            number = None

    i = 0
    while i < len(words):
        word, cardinal = words[i], _cardinal_of_ordinal(words[i])
        if number is not None and number.add(word):
            pass
        elif cardinal is not None and number is not None and number.add(cardinal):
            out.append(f"{number.value}{_ordinal_suffix(number.value)}")  # twenty third
            number = None
        elif cardinal in SMALL and word not in AMBIGUOUS_ORDINALS:
            flush()
            out.append(f"{SMALL[cardinal]}{_ordinal_suffix(SMALL[cardinal])}")  # fourth
        elif (
            number is not None
            and word == "and"
            and number.last in ("hundred", "scale")
            and i + 1 < len(words)
            and words[i + 1] in SMALL
        ):
            pass  # one hundred and five
        elif number is not None and word == "point" and _digit_word(words, i + 1):
            digits = ""
            while _digit_word(words, i + 1):
                digits, i = digits + str(SMALL[words[i + 1]]), i + 1
            out.append(f"{number.value}.{digits}")  # three point one four
            number = None
        else:
            flush()
            if word in SMALL:
                number = _Number(SMALL[word])
            elif word in ("hundred", *SCALES) and out[-1:] == ["a"]:  # a hundred, a thousand
                out.pop()
                number = _Number(1)
                number.add(word)
            else:
                out.append(word)
        i += 1
    flush()
    return out
