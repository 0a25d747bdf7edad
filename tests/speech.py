"""Synthetic speech for tests and the demo: espeak-ng text-to-speech, written with soundfile.

Usage: python -m tests.speech "some text" out.wav [--voice en|cmn] [--rate 16000] [--channels 1]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def synthesize(text: str, path: Path, voice: str = "en", rate: int = 16000, channels: int = 1) -> Path:
    """Speak `text` into `path` (wav, flac, ogg or mp3, from the suffix) at `rate` Hz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        samples, espeak_rate = sf.read(str(raw), dtype="float32")
    samples = soxr.resample(samples, espeak_rate, rate) if rate != espeak_rate else samples
    sf.write(str(path), np.repeat(samples[:, None], channels, axis=1), rate)
    return path


SENTENCES = [
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("cmn", "今天天气很好，我们一起去公园散步。"),
    ("en", "Please call Stella and ask her to bring these things with her from the store."),
    ("cmn", "这个会议将在下午三点钟开始。"),
    ("en", "A long recording is cut into pieces at the pauses between sentences."),
    ("cmn", "请把窗户关上，外面下雨了。"),
    ("en", "Six spoons of fresh snow peas and five thick slabs of blue cheese."),
    ("cmn", "我们明天早上八点在火车站见面。"),
]


def utterance(text: str, voice: str, folder: Path) -> np.ndarray:
    """One spoken sentence at 16 kHz, trimmed to its first and last audible sample."""
    path = synthesize(text, Path(folder) / f"{abs(hash((voice, text)))}.wav", voice)
    samples = sf.read(str(path), dtype="float32")[0]
    audible = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[audible[0] : audible[-1] + 1]


def recording(seconds: float, folder: Path, seed: int = 0, noise: float = 1e-4):
    """Sentences joined by 0.8-2 s silences until `seconds` is reached, over a faint noise floor.

    Returns (samples, [(start_s, end_s) of each sentence]): where the speech truly is.
    """
    rng = np.random.default_rng(seed)
    spoken = [utterance(text, voice, folder) for voice, text in SENTENCES]
    parts, spans, position = [], [], 0
    while True:
        gap = np.zeros(int(rng.uniform(0.8, 2.0) * 16000), np.float32)
        speech = spoken[len(spans) % len(spoken)]
        if position + len(gap) + len(speech) > seconds * 16000:
            break
        parts += [gap, speech]
        spans.append(((position + len(gap)) / 16000, (position + len(gap) + len(speech)) / 16000))
        position += len(gap) + len(speech)
    parts.append(np.zeros(int(seconds * 16000) - position, np.float32))
    samples = np.concatenate(parts)
    return samples + noise * rng.standard_normal(len(samples)).astype(np.float32), spans


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("path", type=Path)
    parser.add_argument("--voice", default="en")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    print(synthesize(args.text, args.path, args.voice, args.rate, args.channels))
