"""SubRip (.srt) and WebVTT (.vtt) text from timed segments."""

from __future__ import annotations

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
