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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("path", type=Path)
    parser.add_argument("--voice", default="en")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    print(synthesize(args.text, args.path, args.voice, args.rate, args.channels))
