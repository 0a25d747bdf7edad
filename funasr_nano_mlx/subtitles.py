"""SubRip (.srt) and WebVTT (.vtt) text from timed segments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


class Timed(Protocol):
    start: float  # seconds
    end: float
    text: str


def timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cues(segments: Iterable[Timed], decimal: str, escape=lambda text: text) -> list[str]:
    # A cue's text may not contain a blank line (it would end the cue), so whitespace runs become one space.
    return [
        f"{timestamp(s.start, decimal)} --> {timestamp(s.end, decimal)}\n{escape(' '.join(s.text.split()))}\n"
        for s in segments
        if s.text.strip()
    ]


def _vtt_escape(text: str) -> str:
    """WebVTT cue text is markup: &, < and > must be character references (this also breaks any -->)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_srt(segments: Iterable[Timed]) -> str:
    return "\n".join(f"{number}\n{cue}" for number, cue in enumerate(_cues(segments, ","), start=1))


def to_vtt(segments: Iterable[Timed]) -> str:
    return "\n".join(["WEBVTT\n", *_cues(segments, ".", _vtt_escape)])


# -- cues from CTC timestamps ----------------------------------------------------------------------------

SENTENCE_END = tuple("。！？!?.;；…")  # a cue ends after a word that ends a sentence
MAX_CUE_CHARS = 42  # a cue is cut before a word that would make it longer (a common subtitle line limit)


@dataclass
class Cue:
    start: float
    end: float
    text: str


def _join(words: list[str]) -> str:
    """Words back into text: a space between two words, except between characters of unspaced scripts."""
    from .ctc import UNSPACED

    text = ""
    for word in words:
        glued = not text or (UNSPACED.search(text[-1]) and UNSPACED.search(word[0]))
        text += word if glued else " " + word
    return text


def _segment_cues(segment, max_chars: int) -> list[Cue]:
    """One segment's words as cues, cut after sentence punctuation and before the cue would exceed
    `max_chars`; times clamped into the segment (the last 60 ms frame may reach past its end)."""
    groups: list[list[dict]] = [[]]
    for word in segment.words:
        if groups[-1] and len(_join([w["word"] for w in groups[-1] + [word]])) > max_chars:
            groups.append([])
        groups[-1].append(word)
        if word["word"].endswith(SENTENCE_END):
            groups.append([])
    cues: list[Cue] = []
    for group in filter(None, groups):
        start, end = max(group[0]["start"], segment.start), min(group[-1]["end"], segment.end)
        text = _join([w["word"] for w in group])
        if start >= end and cues:  # nothing left of it inside the segment: it joins the cue before
            cues[-1].text = _join([cues[-1].text, text])
        elif start < end:
            cues.append(Cue(start, end, text))
    return cues


def timed_cues(result, max_chars: int = MAX_CUE_CHARS) -> list[Cue]:
    """Subtitle cues of a transcription: from the words' timestamps where the segment has them, else one
    cue per segment. Cues follow the segments' order, so they never overlap."""
    cues: list = []
    for segment in result.segments:
        cues += _segment_cues(segment, max_chars) if segment.words else [segment]
    return cues
