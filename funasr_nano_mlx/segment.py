"""Split long recordings into speech segments of at most `max_segment_ms`, cut at silences.

Upstream says audio over 30 s must be segmented, and does it with the FSMN-VAD model. Its trained
weights may not be at hand, so this energy-based segmenter is the default: a short-time log-energy
per 10 ms frame, a threshold between the recording's noise floor and its speech level, pauses
long enough to be sentence breaks, and cuts at the quietest point inside any stretch of speech that is
still too long. A converted FSMN-VAD (`funasr_nano_mlx.vad`) has the same `segments` method and can
be used instead.

Everything here is numpy on 16 kHz float samples; times are integer milliseconds, as FSMN-VAD's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE

FRAME_MS = 10
FRAME = SAMPLE_RATE * FRAME_MS // 1000
DEFAULT_MAX_SEGMENT_MS = 30_000  # upstream's advice: decode at most 30 s at once
SILENT_DBFS = -60.0  # a recording whose loudest frames are below this has no speech
MIN_PIECE_FRAMES = 100  # 1 s: the shortest remainder a forced cut may leave


@dataclass(frozen=True)
class EnergySegmenter:
    """Speech segments from frame log-energy; the defaults suit read and conversational speech."""

    min_silence_ms: int = 400  # a pause at least this long ends a segment (shorter ones are inside words/phrases)
    min_speech_ms: int = 100  # a burst shorter than this (a click, a breath) is not speech
    padding_ms: int = 50  # kept on each side of a segment, so onsets and releases are not clipped
    threshold: float = 0.3  # voiced above this fraction of the way (in dB) from noise floor to speech level
    min_margin_db: float = 6.0  # the threshold is at least this far above the noise floor

    def segments(self, samples: np.ndarray, max_segment_ms: int = DEFAULT_MAX_SEGMENT_MS) -> list[tuple[int, int]]:
        """[(start_ms, end_ms), ...] of speech, in order, none longer than `max_segment_ms`."""
        if max_segment_ms < 2 * FRAME_MS:
            raise ValueError(f"max_segment_ms must be at least {2 * FRAME_MS}, got {max_segment_ms}")
        energy = frame_energy_db(samples)
        if energy.size == 0 or energy.max() < SILENT_DBFS:
            return []
        # Smoothed over 110 ms: a click is not a speech level, and a forced cut lands in a pause, not in
        # one quiet frame between syllables.
        smooth = np.convolve(np.pad(energy, 5, mode="edge"), np.ones(11) / 11, mode="valid")
        # Percentiles, not min/max, so a few dropouts do not move the floor; the 99th, so that speech
        # that fills only a few percent of a long recording still sets the speech level.
        noise, speech = np.percentile(energy, 10), np.percentile(smooth, 99)
        voiced = energy > noise + max(self.threshold * (speech - noise), self.min_margin_db)
        regions = _runs(voiced)
        regions = _bridge(regions, self.min_silence_ms // FRAME_MS)
        regions = [(a, b) for a, b in regions if b - a >= self.min_speech_ms // FRAME_MS]
        padded = _pad(regions, self.padding_ms // FRAME_MS, len(energy))
        split = [piece for region in padded for piece in _split_long(region, smooth, max_segment_ms // FRAME_MS)]
        # Frames are whole 10 ms steps (a last partial frame is left out), so every span is in the audio.
        return [(a * FRAME_MS, b * FRAME_MS) for a, b in split]


def frame_energy_db(samples: np.ndarray) -> np.ndarray:
    """Mean-square energy of each whole 10 ms frame in dBFS (a full-scale sine is -3 dB)."""
    frames = samples[: len(samples) // FRAME * FRAME].reshape(-1, FRAME)
    # einsum sums the squares frame by frame with no squared copy of the recording (20 min: 77 MB).
    return 10 * np.log10(np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / FRAME + 1e-12)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where `flags` is true."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _bridge(regions: list[tuple[int, int]], min_gap: int) -> list[tuple[int, int]]:
    """Join regions separated by fewer than `min_gap` frames."""
    joined: list[tuple[int, int]] = []
    for start, end in regions:
        if joined and start - joined[-1][1] < min_gap:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def _pad(regions: list[tuple[int, int]], pad: int, total: int) -> list[tuple[int, int]]:
    """Widen each region by `pad` frames, never past the middle of the gap to its neighbour."""
    out = []
    for i, (start, end) in enumerate(regions):
        lower = (regions[i - 1][1] + start) // 2 if i else 0
        upper = (end + regions[i + 1][0]) // 2 if i + 1 < len(regions) else total
        out.append((max(lower, start - pad), min(upper, end + pad)))
    return out


def _split_long(region: tuple[int, int], energy: np.ndarray, max_frames: int) -> list[tuple[int, int]]:
    """Cut a region longer than `max_frames` at its quietest frame in the back half of each window.

    Searching only the back half keeps every piece but the last at least max/2 long.
    """
    start, end = region
    pieces = []
    while end - start > max_frames:
        lo = start + max_frames // 2
        # ... and leaves at least MIN_PIECE for the rest, not a sliver of trailing silence.
        hi = min(start + max_frames, end - min(MIN_PIECE_FRAMES, max_frames // 2))
        cut = lo + int(np.argmin(energy[lo : max(hi, lo + 1)]))
        pieces.append((start, cut))
        start = cut
    return pieces + [(start, end)]
