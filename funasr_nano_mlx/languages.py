"""The languages the models were trained with, and the one way a user's language argument is read.
Pure: no MLX, no I/O."""

from __future__ import annotations

from .errors import UserError

# Language names the models were trained with (Fun-ASR-Nano: 中文/英文/日文; the MLT sibling: all 31),
# keyed by ISO 639 code so that `--language ja` and `--language 日文` mean the same.
LANGUAGES = {
    "zh": "中文",
    "en": "英文",
    "ja": "日文",
    "yue": "粤语",
    "ko": "韩文",
    "vi": "越南语",
    "id": "印尼语",
    "th": "泰语",
    "ms": "马来语",
    "fil": "菲律宾语",
    "ar": "阿拉伯语",
    "hi": "印地语",
    "bg": "保加利亚语",
    "hr": "克罗地亚语",
    "cs": "捷克语",
    "da": "丹麦语",
    "nl": "荷兰语",
    "et": "爱沙尼亚语",
    "fi": "芬兰语",
    "el": "希腊语",
    "hu": "匈牙利语",
    "ga": "爱尔兰语",
    "lv": "拉脱维亚语",
    "lt": "立陶宛语",
    "mt": "马耳他语",
    "pl": "波兰语",
    "pt": "葡萄牙语",
    "ro": "罗马尼亚语",
    "sk": "斯洛伐克语",
    "sl": "斯洛文尼亚语",
    "sv": "瑞典语",
}
AUTO_LANGUAGE = "auto"


def resolve_language(language: str | None) -> str | None:
    """ISO code or reference name -> the reference name; None/'auto' -> None (no language in prompt)."""
    if language is None or language.strip().lower() in ("", AUTO_LANGUAGE):
        return None
    if language.strip() in LANGUAGES.values():
        return language.strip()
    code = language.strip().lower()
    if code in LANGUAGES:
        return LANGUAGES[code]
    known = ", ".join(f"{code} ({name})" for code, name in LANGUAGES.items())
    raise UserError(f"unknown language {language!r}; use 'auto' or one of: {known}")
