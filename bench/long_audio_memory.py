"""Peak memory (RSS) of reading and of transcribing a long recording, at 16 kHz mono and 44.1 kHz stereo.

    python bench/long_audio_memory.py [--minutes 120] [--model DIR] [--build DIR ...] [--work DIR]

Writes the recording (3 minutes of sentences and pauses, tests/speech.py, looped) as 16-bit WAV files,
then measures each case in a fresh interpreter: its resident set size once the imports (and the model)
are in, and the peak above that while it runs (VmHWM, reset through /proc/self/clear_refs: Linux only):

- read: `load_audio(FILE)` (file -> 16 kHz mono float32; what every transcription starts with);
- transcribe: `transcribe(model, tokenizer, FILE, max_new_tokens=4, timestamps=False)` (with --model;
  use the tiny test model: bench/stage_memory.py measures the device side of a real one).

Each --build DIR (a checkout, put first on PYTHONPATH) is measured in turn, e.g. the commit before and
after a change; without one, the installed package. Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
from pathlib import Path

def status_mb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

stage, file = sys.argv[1], sys.argv[2]
if stage == "transcribe":
    from funasr_nano_mlx import load
    from funasr_nano_mlx.transcribe import transcribe
    model, tokenizer = load(sys.argv[3])
else:
    from funasr_nano_mlx.audio import load_audio
loaded_peak, before = status_mb("VmHWM"), status_mb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
if stage == "transcribe":
    transcribe(model, tokenizer, file, max_new_tokens=4, timestamps=False)
else:
    load_audio(file)
peak = status_mb("VmHWM")
import funasr_nano_mlx
print(json.dumps({"package": funasr_nano_mlx.__file__, "before_mb": before, "added_mb": peak - before, "process_peak_mb": max(loaded_peak, peak)}))
"""


def write_recording(path: Path, minutes: float, rate: int, channels: int, loop: np.ndarray) -> Path:
    """`minutes` of `loop` (16 kHz mono), resampled and written block by block: the writer holds one block."""
    import soxr

    if path.exists():
        return path
    block = soxr.resample(loop, 16000, rate).astype(np.float32)
    stereo = np.stack([block * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    frames = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, channels, "PCM_16") as out:
        for start in range(0, frames, len(stereo)):
            out.write(stereo[: frames - start])
    return path


def measure(args: list[str], build: Path | None) -> dict:
    """PROBE's figures in a fresh interpreter (PYTHONPATH=build)."""
    env = dict(os.environ, PYTHONPATH=str(build)) if build else dict(os.environ)
    # `python -c` puts its working directory first on sys.path: run it in the build (or anywhere else
    # than a checkout), else the checkout it is started from shadows the build.
    cwd = build or tempfile.gettempdir()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed ({build}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--model", type=Path, help="A converted model: also measure `transcribe`.")
    parser.add_argument("--build", type=Path, action="append", default=[], help="A checkout to measure.")
    parser.add_argument("--work", type=Path, default=None, help="Where the recordings are written (kept).")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.speech import recording

    work = args.work or Path(tempfile.mkdtemp(prefix="long-audio-"))
    work.mkdir(parents=True, exist_ok=True)
    loop, _ = recording(180.0, work)
    files = {
        (rate, channels): write_recording(
            work / f"{args.minutes:g}min-{rate}-{channels}ch.wav", args.minutes, rate, channels, loop
        )
        for rate, channels in ((16000, 1), (44100, 2))
    }
    stages = [("read", [])] + ([("transcribe", [str(args.model)])] if args.model else [])
    for build in args.build or [None]:
        for (rate, channels), path in files.items():
            for stage, extra in stages:
                figures = measure([stage, str(path), *extra], build)
                record = {
                    "build": str(build) if build else "installed",
                    "stage": stage,
                    "minutes": args.minutes,
                    "rate": rate,
                    "channels": channels,
                    "file_mb": round(path.stat().st_size / 2**20),
                    **{key: round(value) if key != "package" else value for key, value in figures.items()},
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
