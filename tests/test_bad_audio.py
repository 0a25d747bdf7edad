"""Audio that is not what it says, many files with some bad, and reading long files in blocks.

Each bad input costs one line on stderr and no traceback; the good inputs' results are all written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from funasr_nano_mlx.errors import UserError
from tests.helpers import files_of, invoke_cli

TOKENS = ("--max-new-tokens", "2", "--no-timestamps")  # the tiny model's tokens are noise: few are enough


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def written(folder: Path, name: str, samples: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    with open(folder / name, "wb") as file:  # libsndfile opens no name that is not UTF-8; Python does
        sf.write(file, samples, rate, subtype=subtype, format=Path(name).suffix[1:])
    return folder / name


def stderr_lines(done) -> list[str]:
    """stderr's lines, less the tiny model's "hit its token budget" flags (its tokens never stop)."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.strip().splitlines() if not line.endswith("hit its token budget")]


# -- audio that is not what it says ---------------------------------------------------------------------


def _with(samples: np.ndarray, index: int, value: float) -> np.ndarray:
    samples = samples.copy()
    samples[index] = value
    return samples


# name, how the file is made from 7 s of speech, and what a user must see: an `error:` (refused, nothing
# written) or a `warning:` (transcribed as far as the file goes, flagged in JSON); None: neither.
AUDIO_CASES = {
    "nan-float.wav": (lambda d, x: written(d, "nan-float.wav", _with(x, 20000, np.nan), subtype="FLOAT"), "error"),
    "inf-double.wav": (lambda d, x: written(d, "inf-double.wav", _with(x, 5, np.inf), subtype="DOUBLE"), "error"),
    "neg-inf-44k-stereo.wav": (
        lambda d, x: written(
            d, "neg-inf-44k-stereo.wav", np.stack([x, _with(x, 90000, -np.inf)], 1), 44100, subtype="FLOAT"
        ),
        "error",
    ),
    "cut.wav": (lambda d, x: truncated(written(d, "cut.wav", x)), "warning"),
    "cut.flac": (lambda d, x: truncated(written(d, "cut.flac", x)), "warning"),
    "cut.mp3": (lambda d, x: truncated(written(d, "cut.mp3", x)), "warning"),
    os.fsdecode(b"caf\xe9-\xff.wav"): (lambda d, x: written(d, os.fsdecode(b"caf\xe9-\xff.wav"), x), None),
}


@pytest.mark.parametrize("case", list(AUDIO_CASES), ids=lambda c: os.fsencode(c).decode("ascii", "replace"))
def test_audio_that_is_not_what_it_says(tiny_f32, tiny_model, clips, tmp_path, capfd, case):
    """NaN or infinite samples are refused in one line (the API raises a UserError, the server answers
    400); a file cut short is transcribed as far as it goes with one warning line and JSON `warnings`;
    a file name with bytes that are not UTF-8 is read, and its output written under the same bytes."""
    from funasr_nano_mlx import transcribe
    from funasr_nano_mlx.serve import ApiError, Form, Limits, read_audio

    make, expected = AUDIO_CASES[case]
    path = make(tmp_path, clips["7s"])
    out = tmp_path / "out"
    done = invoke_cli("transcribe", tiny_f32, path, "--format", "json", "--output-dir", out, *TOKENS)
    lines = stderr_lines(done)
    # libmpg123 prints its own note on the process's stderr for a cut MP3: it must not reach the user.
    assert "Xing" not in capfd.readouterr().err
    shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
    if expected == "error":
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert shown in lines[0] and "NaN or infinite" in lines[0]
        assert not out.exists() or not files_of(out)
        with pytest.raises(UserError, match="NaN or infinite"):
            transcribe(*tiny_model, path, max_new_tokens=2)
        form = Form(file=path, filename="upload.wav", file_bytes=path.stat().st_size, file_complete=True)
        with pytest.raises(ApiError) as refused:
            read_audio(form, Limits(10**9, 3600.0, 60.0, 4))
        assert refused.value.status == 400 and "upload.wav" in str(refused.value.message)
        return
    assert done.returncode == 0, done.stderr
    result = json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8", errors="surrogateescape"))
    assert result["audio"] == str(tmp_path / shown)
    if expected == "warning":
        assert len(lines) == 1 and lines[0].startswith("warning: ") and "ends early" in lines[0], lines
        assert result["warnings"] == [lines[0].removeprefix("warning: ")]
        assert 2.0 < result["duration"] < 4.5  # about half of the 7 s survives
    else:
        assert lines == [] and result["warnings"] == [] and result["duration"] == pytest.approx(7.0)
