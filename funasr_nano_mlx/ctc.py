"""CTC timestamps: the CTC tokenizer, upstream's greedy CTC transcript and its forced alignment.

Pure (numpy and tiktoken, no MLX). References `[F] path:line` point into funasr 1.4.16:
- the tokenizer is SenseVoice's tiktoken encoding ([F] models/sense_voice/whisper_lib/tokenizer.py:
  429-488): the ranks of `multilingual.tiktoken`, then 1679 special tokens, the CTC blank among them;
- `ctc_text` is the argmax per frame, consecutive repeats merged, blanks dropped, decoded, with
  `<|nospeech|>` removed ([F] models/fun_asr_nano/model.py:972-985,1058);
- both `ctc_text` and the LLM's text are re-tokenized and aligned to the CTC log-probabilities with
  torchaudio's `forced_align` ([F] models/fun_asr_nano/tools/utils.py:46-80, model.py:1057-1071); frames
  are 60 ms (LFR stride 6 x 10 ms shift).
"""

from __future__ import annotations

import base64
import codecs
import re
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Sequence

import numpy as np

NOSPEECH = "<|nospeech|>"
# [F] whisper_lib/tokenizer.py:11-117 LANGUAGES keys, :137-156 AUDIO_EVENT and EMOTION keys; upstream's
# config takes num_languages 8749, i.e. all of them.
LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt "
    "la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc "
    "ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue minnan wuyu "
    "dialect zh/en en/zh"
).split()
AUDIO_EVENTS = (
    "ASR",
    "AED",
    "SER",
    "Speech",
    "/Speech",
    "BGM",
    "/BGM",
    "Laughter",
    "/Laughter",
    "Applause",
    "/Applause",
)
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL")
TIMESTAMP_SPECIALS = 1501  # <|0.00|> .. <|30.00|>; decode() drops them ([F] whisper_lib/tokenizer.py:217-225)
# The pre-tokenizer of [F] whisper_lib/tokenizer.py:484.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Frame index -> seconds exactly as upstream computes it: frame * 6 * 10 / 1000 ([F] model.py:1070-1071).
LFR_STRIDE, FRAME_SHIFT_MS = 6, 10


def special_tokens(num_languages: int = 8749) -> list[str]:
    """The specials appended after the ranks, in order ([F] whisper_lib/tokenizer.py:460-475)."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGE_CODES[:num_languages]],
        *[f"<|{event}|>" for event in AUDIO_EVENTS],
        *[f"<|{emotion}|>" for emotion in EMOTIONS],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        NOSPEECH,
        "<|notimestamps|>",
        *[f"<|SPECIAL_TOKEN_{i}|>" for i in range(1, 51)],
        *[f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMP_SPECIALS)],
    ]


class CTCTokenizer:
    """SenseVoiceTokenizer(is_multilingual=True, vocab_path=multilingual.tiktoken) as upstream builds it."""

    def __init__(self, ranks: dict[bytes, int], num_languages: int = 8749):
        import tiktoken  # only models with a CTC head need it

        specials = special_tokens(num_languages)
        self.encoding = tiktoken.Encoding(
            name="multilingual.tiktoken",
            explicit_n_vocab=len(ranks) + len(specials),
            pat_str=PATTERN,
            mergeable_ranks=ranks,
            special_tokens={token: len(ranks) + i for i, token in enumerate(specials)},
        )
        self.timestamp_begin = len(ranks) + len(specials) - TIMESTAMP_SPECIALS
        self.vocab_size = len(ranks) + len(specials)

    @classmethod
    def from_file(cls, path: Path, num_languages: int = 8749) -> CTCTokenizer:
        """Read a `multilingual.tiktoken` (base64 token, rank per line) as get_encoding does (:438-442)."""
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in open(path) if line)}
        return cls(ranks, num_languages)

    def encode(self, text: str) -> list[int]:
        """Special-token strings in the text are plain text ([F] whisper_lib/tokenizer.py:195-215)."""
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        """Timestamp specials are dropped; invalid UTF-8 becomes U+FFFD, as tiktoken decodes."""
        return self.encoding.decode([i for i in ids if i < self.timestamp_begin])

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)


def greedy_ids(argmax: Sequence[int], blank: int) -> list[int]:
    """Frame argmaxes -> CTC greedy tokens: repeats merged, blanks dropped ([F] model.py:976-981)."""
    return [token for token, _ in groupby(int(t) for t in argmax) if token != blank]


def ctc_text(tokenizer: CTCTokenizer, ids: Sequence[int]) -> str:
    """Upstream's `ctc_text`: the decoded greedy tokens without `<|nospeech|>` ([F] model.py:984,1058)."""
    return tokenizer.decode(ids).replace(NOSPEECH, "")


def viterbi_path(blank_lp: np.ndarray, token_lp: np.ndarray, targets: Sequence[int]) -> np.ndarray | None:
    """torchaudio 2.9's CTC forced alignment (libtorchaudio/forced_align/cpu/compute.cpp), vectorized over
    the 2L + 1 states, one numpy step per frame.

    `blank_lp` (T,) and `token_lp` (T, L) are the log-probabilities of the blank and of each target
    token. Returns the state per frame (even: blank, 2j + 1: target j), or None where torchaudio raises
    (no target, or T < L + repeats), which upstream's forced_align turns into no timestamps. Same
    arithmetic as torchaudio: float32 sums; a state takes the skip (i - 2) only if strictly better than
    both others, else the previous state (i - 1) only if strictly better than both others, else stays
    (so where the skip and the previous state tie above staying, it stays: torchaudio 2.9.1's rule,
    checked on its binary by bench/torchaudio_check.py; later sources drop `x1 > x2`); the states that
    cannot reach the end in time, or be reached from the start, are -inf.
    """
    frames, length = token_lp.shape
    targets = np.asarray(targets)
    repeats = int(np.sum(targets[1:] == targets[:-1])) if length else 0
    if length == 0 or frames < length + repeats:
        return None
    states = 2 * length + 1
    emit = np.empty((frames, states), np.float32)  # log-prob of each state's label per frame
    emit[:, 0::2], emit[:, 1::2] = blank_lp[:, None], token_lp
    # A token state may skip the blank before it unless it repeats the previous token.
    can_skip = np.zeros(states, bool)
    can_skip[3::2] = targets[1:] != targets[:-1]
    state_index = np.arange(states)
    # The window [lo, hi) of live states, advanced as in compute.cpp's start/end updates.
    lo, hi = (0 if frames - (length + repeats) > 0 else 1), 2
    alpha = np.full(states, -np.inf, np.float32)
    alpha[lo:hi] = emit[0, lo:hi]
    back = np.zeros((frames, states), np.int8)
    neg_inf = np.float32(-np.inf)
    for t in range(1, frames):
        if frames - t <= length + repeats:
            if lo % 2 == 1 and targets[lo // 2] != targets[lo // 2 + 1]:
                lo += 1
            lo += 1
        if t <= length + repeats:
            if hi % 2 == 0 and hi < 2 * length and targets[hi // 2 - 1] != targets[hi // 2]:
                hi += 1
            hi += 1
        stay = alpha
        step = np.concatenate(([neg_inf], alpha[:-1]))
        skip = np.where(can_skip, np.concatenate(([neg_inf, neg_inf], alpha[:-2])), neg_inf)
        take_skip = (skip > step) & (skip > stay)
        take_step = ~take_skip & (step > stay) & (step > skip)
        best = np.where(take_skip, skip, np.where(take_step, step, stay))
        back[t] = np.where(take_skip, 2, np.where(take_step, 1, 0))
        alpha = np.where((state_index >= lo) & (state_index < hi), best + emit[t], neg_inf).astype(np.float32)
    state = states - 1 if alpha[states - 1] > alpha[states - 2] else states - 2
    path = np.empty(frames, np.int64)
    for t in range(frames - 1, -1, -1):  # backtracking: one integer step per frame
        path[t] = state
        state -= int(back[t, state])
    return path


@dataclass
class TokenTime:
    """One aligned token: its id, its frames [start, end) and upstream's score (the best frame's probability)."""

    token: int
    start: int
    end: int
    score: float


def align(blank_lp: np.ndarray, token_lp: np.ndarray, targets: Sequence[int]) -> list[TokenTime]:
    """Upstream's forced_align ([F] tools/utils.py:46-80): the Viterbi path grouped into runs of one
    target token; each run's frames and the highest probability among them, rounded to 3 decimals."""
    path = viterbi_path(blank_lp, token_lp, targets)
    if path is None:
        return []
    frame_lp = np.where(path % 2 == 0, blank_lp, token_lp[np.arange(len(path)), np.maximum(path - 1, 0) // 2])
    probability = np.exp(frame_lp.astype(np.float32)).astype(np.float32)
    items, frame = [], 0
    for state, run in groupby(path.tolist()):
        count = len(list(run))
        if state % 2:
            best = float(max(probability[frame : frame + count].tolist()))
            items.append(TokenTime(int(targets[state // 2]), frame, frame + count, round(best, 3)))
        frame += count
    return items


def frame_seconds(frame: int) -> float:
    """[F] model.py:1070-1071: `frame * 6 * 10 / 1000`, in that order."""
    return frame * LFR_STRIDE * FRAME_SHIFT_MS / 1000


def timestamps(tokenizer: CTCTokenizer, items: list[TokenTime], offset: float = 0.0) -> list[dict]:
    """Upstream's timestamp dicts with our key names: token text (each token decoded alone, as upstream),
    start and end in seconds (+ `offset`, the segment's start in the recording), score; plus the id."""
    return [
        {
            "token": tokenizer.decode([item.token]),
            "start": round(offset + frame_seconds(item.start), 3),
            "end": round(offset + frame_seconds(item.end), 3),
            "score": item.score,
            "id": item.token,
        }
        for item in items
    ]


# Scripts written without spaces between words: each of their characters is a word of its own.
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u0e00-\u0e7f]")


def _starts_word(piece: str, word: str | None) -> bool:
    """Whether a token's text `piece` begins a new word after the word `word` (its text so far)."""
    if word is None or piece[:1].isspace() or UNSPACED.search(piece):
        return True
    # Letters or digits after an unspaced-script word (e.g. "用MLX", "好。MLX"): a new word.
    return bool(UNSPACED.search(word)) and piece[:1].isalnum()


def words(tokenizer: CTCTokenizer, stamps: list[dict]) -> list[dict]:
    """Aligned tokens grouped into words: a word starts at a token that begins with whitespace, and every
    character of an unspaced script (CJK, kana, hangul, Thai) is its own word; punctuation and word pieces
    stay with the word before them. Tokens that hold only part of a character go with the token that
    completes it, and a word's bytes are decoded together (no U+FFFD from split characters)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    groups: list[list[dict]] = []
    word, pending = None, []
    for stamp in stamps:
        pending.append(stamp)
        piece = decoder.decode(tokenizer.token_bytes(stamp["id"]))
        if not piece:
            continue  # part of a character: decided with the token that completes it
        if _starts_word(piece, word):
            groups.append([])
            word = ""
        groups[-1] += pending
        word, pending = word + piece, []
    if pending:  # a character cut off at the end
        if not groups:
            groups.append([])
        groups[-1] += pending
    out = []
    for group in groups:
        text = b"".join(tokenizer.token_bytes(s["id"]) for s in group).decode("utf-8", "replace").strip()
        if text:
            out.append({"word": text, "start": group[0]["start"], "end": group[-1]["end"]})
    return out
