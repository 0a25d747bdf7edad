"""Decoding policy: token budgets, the repetition guard, the batch size.

Pure Python (no MLX), so the CLI's help texts and the reports read the same facts the decoder uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import UserError

DEFAULT_MAX_NEW_TOKENS = 512  # the reference's max_length
# Unless a fixed max_new_tokens is asked for, each segment may generate this many tokens per second of
# audio plus a margin, at most DEFAULT_MAX_NEW_TOKENS (reached at 30 s): about 3x the fastest speech
# in Qwen3 tokens (Mandarin at ~5 tokens/s), so only a runaway segment meets it.
BUDGET_TOKENS_PER_SECOND = 16
BUDGET_MARGIN_TOKENS = 32
# The repetition guard: a tail of at least LOOP_MIN_TOKENS tokens that repeats one n-gram (n up to
# LOOP_MAX_PERIOD) at least LOOP_MIN_COPIES times is a decoding loop, not speech ("哈" x 32 is not read out).
LOOP_MAX_PERIOD = 16
LOOP_MIN_COPIES = 4
LOOP_MIN_TOKENS = 32
DEFAULT_BATCH_SIZE = 8
# Inputs are read a few batches at a time and a batch's encoder input is padded to its longest segment, so
# memory grows with the batch size; 256 is 8x the largest batch measured (32, BENCHMARKS.md).
MAX_BATCH_SIZE = 256
# The longest piece one may ask to decode at once: 10x upstream's advice (30 s). Past 30 s words are lost,
# the token budget caps at DEFAULT_MAX_NEW_TOKENS, and encoder attention grows with the length squared.
MAX_SEGMENT_SECONDS = 300.0
# The shortest: a shorter limit cuts speech into pieces too short to hold a word (and under 20 ms the
# energy segmenter's 10 ms frames cannot make a segment at all).
MIN_SEGMENT_SECONDS = 1.0
# Hotwords are written into every segment's prompt, so their length is paid in prefill time and cache
# memory per segment (100,000 characters: 57 s and 1.9 GB for a 2.8 s clip). 1,000 characters is a few
# hundred words, far beyond the lists upstream shows (a handful of terms).
MAX_HOTWORD_CHARS = 1000
# Room for the prompt in the LLM's positions: the template (~40 tokens), hotwords (at most one token per
# character) and a segment's audio (one token per 120 ms: 10 ms fbank hop x LFR 6 x adaptor stride 2,
# 2,500 tokens for MAX_SEGMENT_SECONDS).
PROMPT_ROOM_TOKENS = 40 + MAX_HOTWORD_CHARS + math.ceil(MAX_SEGMENT_SECONDS / 0.12)


def token_budget(seconds: float, max_new_tokens: int | None = None) -> int:
    """New tokens a segment of `seconds` may generate: max_new_tokens if given, else scaled to its length."""
    if max_new_tokens is not None:
        return max_new_tokens
    return min(DEFAULT_MAX_NEW_TOKENS, math.ceil(BUDGET_TOKENS_PER_SECOND * seconds) + BUDGET_MARGIN_TOKENS)


def describe_budget(max_new_tokens: int | None) -> str:
    """The budget in words, for help texts, reports and cards."""
    if max_new_tokens is not None:
        return f"at most {max_new_tokens} new tokens per segment"
    return (
        f"at most {BUDGET_TOKENS_PER_SECOND} new tokens per second of audio + {BUDGET_MARGIN_TOKENS}, "
        f"{DEFAULT_MAX_NEW_TOKENS} at most, per segment"
    )


def loop_end(tokens: list[int]) -> int | None:
    """If `tokens` ends in a decoding loop, the length that keeps one copy of it; else None."""
    n = len(tokens)
    for period in range(1, LOOP_MAX_PERIOD + 1):
        span = max(LOOP_MIN_COPIES * period, LOOP_MIN_TOKENS)
        if span > n:
            break
        if tokens[-1] == tokens[-1 - period] and tokens[n - span + period :] == tokens[n - span : n - period]:
            start = n - span
            while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
                start -= 1  # back to where the loop began
            return start + period
    return None


def max_new_tokens_limit(max_position_embeddings: int) -> int:
    """The largest token budget a model can hold: its LLM's positions less room for the prompt."""
    return max(1, max_position_embeddings - PROMPT_ROOM_TOKENS)


def check_max_new_tokens(max_new_tokens: int | None, max_position_embeddings: int) -> None:
    limit = max_new_tokens_limit(max_position_embeddings)
    if max_new_tokens is not None and not 1 <= max_new_tokens <= limit:
        raise UserError(
            f"max_new_tokens must be in 1..{limit} (the LLM holds {max_position_embeddings} positions, "
            f"{PROMPT_ROOM_TOKENS} kept for the prompt), got {max_new_tokens}"
        )


def hotword_list(hotwords: Sequence[str] | str | None) -> list[str]:
    """The hotwords as the prompt takes them, checked (check_hotwords)."""
    # A bare string is one hotword (the reference would join it character by character).
    return check_hotwords([hotwords] if isinstance(hotwords, str) else [w for w in hotwords or () if w])


def check_hotwords(hotwords: list[str]) -> list[str]:
    """The hotwords, refused when their list in the prompt would pass MAX_HOTWORD_CHARS."""
    length = len(", ".join(hotwords))  # as the prompt lists them
    if length > MAX_HOTWORD_CHARS:
        raise UserError(
            f"the hotwords come to {length} characters: at most {MAX_HOTWORD_CHARS} fit (they are written "
            "into every segment's prompt); keep the terms that matter"
        )
    return hotwords
