"""Decoding policy: token budgets, the repetition guard, the batch size.

Pure Python (no MLX), so the CLI's help texts and the reports read the same facts the decoder uses.
"""

from __future__ import annotations

import math

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
