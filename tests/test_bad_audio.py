"""Audio that is not what it says, many files with some bad, and reading long files in blocks.

Each bad input costs one line on stderr and no traceback; the good inputs' results are all written.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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


FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_FINITE, TOO_LARGE, ENDS_EARLY = "NaN or infinite", "too large to analyse", "ends early"

# name, how the file is made from 7 s of speech, and what a user must see: an `error:` (refused, nothing
# written: NaN, infinite or too large samples) or a `warning:` (transcribed as far as the file goes,
# flagged in JSON: it ends early); None: neither. Too large: finite, but the frontend's float32 power
# spectrum overflows (audio.max_sample).
AUDIO_CASES = {
    "nan-float.wav": (lambda d, x: written(d, "nan-float.wav", _with(x, 20000, np.nan), subtype="FLOAT"), NOT_FINITE),
    "inf-double.wav": (lambda d, x: written(d, "inf-double.wav", _with(x, 5, np.inf), subtype="DOUBLE"), NOT_FINITE),
    "neg-inf-44k-stereo.wav": (
        lambda d, x: written(
            d, "neg-inf-44k-stereo.wav", np.stack([x, _with(x, 90000, -np.inf)], 1), 44100, subtype="FLOAT"
        ),
        NOT_FINITE,
    ),
    "huge-1e30.wav": (lambda d, x: written(d, "huge-1e30.wav", x * 1e30, subtype="FLOAT"), TOO_LARGE),
    "huge-1e20.wav": (lambda d, x: written(d, "huge-1e20.wav", x * 1e20, subtype="FLOAT"), TOO_LARGE),
    "huge-1e200-double.wav": (
        lambda d, x: written(d, "huge-1e200-double.wav", x.astype(np.float64) * 1e200, subtype="DOUBLE"),
        TOO_LARGE,
    ),
    "float32-max-44k-stereo.wav": (
        lambda d, x: written(
            d, "float32-max-44k-stereo.wav", np.stack([x, _with(x, 90000, FLOAT32_MAX)], 1), 44100, subtype="FLOAT"
        ),
        TOO_LARGE,
    ),
    "cut.wav": (lambda d, x: truncated(written(d, "cut.wav", x)), ENDS_EARLY),
    "cut.flac": (lambda d, x: truncated(written(d, "cut.flac", x)), ENDS_EARLY),
    "cut.mp3": (lambda d, x: truncated(written(d, "cut.mp3", x)), ENDS_EARLY),
    os.fsdecode(b"caf\xe9-\xff.wav"): (lambda d, x: written(d, os.fsdecode(b"caf\xe9-\xff.wav"), x), None),
}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow warnings: the features went bad
@pytest.mark.parametrize("case", list(AUDIO_CASES), ids=lambda c: os.fsencode(c).decode("ascii", "replace"))
def test_audio_that_is_not_what_it_says(tiny_f32, tiny_model, clips, tmp_path, capfd, case):
    """NaN, infinite or too large samples are refused in one line with no numpy warning (the API raises
    a UserError, the server answers 400); a file cut short is transcribed as far as it goes with one
    warning line and JSON `warnings`; a file name with bytes that are not UTF-8 is read, and its output
    written under the same bytes. An evaluation skips a row with either (a cut-off file would score its
    missing words as deletions)."""
    from funasr_nano_mlx import transcribe
    from funasr_nano_mlx.evaluate import load_samples
    from funasr_nano_mlx.evalsets import Item
    from funasr_nano_mlx.serve import ApiError, Form, Limits, read_audio

    make, expected = AUDIO_CASES[case]
    path = make(tmp_path, clips["7s"])
    if expected is not None:
        with pytest.raises(UserError, match=expected):
            load_samples(Item(0, "row-1", "a reference", None, path))
    out = tmp_path / "out"
    done = invoke_cli("transcribe", tiny_f32, path, "--format", "json", "--output-dir", out, *TOKENS)
    lines = stderr_lines(done)
    # libmpg123 prints its own note on the process's stderr for a cut MP3: it must not reach the user.
    assert "Xing" not in capfd.readouterr().err
    shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
    if expected in (NOT_FINITE, TOO_LARGE):
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert shown in lines[0] and expected in lines[0]
        assert not out.exists() or not files_of(out)
        with pytest.raises(UserError, match=expected):
            transcribe(*tiny_model, path, max_new_tokens=2)
        form = Form(file=path, filename="upload.wav", file_bytes=path.stat().st_size, file_complete=True)
        with pytest.raises(ApiError) as refused:
            read_audio(form, Limits(10**9, 3600.0, 60.0, 4))
        assert refused.value.status == 400 and "upload.wav" in str(refused.value.message)
        return
    assert done.returncode == 0, done.stderr
    result = json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8"))
    assert os.fsencode(result["audio"]) == os.fsencode(path)  # the field turns back into the path, bytes and all
    if expected == ENDS_EARLY:
        assert len(lines) == 1 and lines[0].startswith("warning: ") and "ends early" in lines[0], lines
        assert result["warnings"] == [lines[0].removeprefix("warning: ")]
        assert 2.0 < result["duration"] < 4.5  # about half of the 7 s survives
    else:
        assert lines == [] and result["warnings"] == [] and result["duration"] == pytest.approx(7.0)


@pytest.mark.parametrize("rate", [1, 4000])
def test_a_rate_too_low_for_speech_is_flagged(tiny_f32, clips, tmp_path, caplog, rate):
    """Resampled and transcribed as any rate is, but the user is told: one warning line and the JSON
    `warnings`, as for a file cut off. Unlike a file cut off, an evaluation and the server take it: it
    is all there is of that audio. OpenAI's responses have no place for a warning: the server logs it,
    naming the client's file."""
    from funasr_nano_mlx.evaluate import load_samples
    from funasr_nano_mlx.evalsets import Item
    from funasr_nano_mlx.serve import Form, Limits, read_audio

    path = written(tmp_path, "low.wav", clips["1s"][:: 16000 // rate][: max(rate, 8)], rate)
    assert len(load_samples(Item(0, "row-1", "a reference", None, path))) > 0
    form = Form(file=path, filename="upload.wav", file_bytes=path.stat().st_size, file_complete=True)
    with caplog.at_level(logging.WARNING, logger="funasr_nano_mlx.serve"):
        assert len(read_audio(form, Limits(10**9, 3600.0, 60.0, 4))) > 0
    done = invoke_cli("transcribe", tiny_f32, path, "--format", "json", *TOKENS)
    lines = stderr_lines(done)
    assert done.returncode == 0 and len(lines) == 1 and lines[0].startswith("warning: "), lines
    assert f"low.wav is sampled at {rate} Hz: speech needs at least 8 kHz" in lines[0]
    assert json.loads(done.stdout)["warnings"] == [lines[0].removeprefix("warning: ")]
    logged = [record.getMessage() for record in caplog.records if record.name == "funasr_nano_mlx.serve"]
    assert logged == [lines[0].removeprefix("warning: ").replace(str(path), "upload.wav")], logged


def test_the_frontends_refuse_samples_they_cannot_analyse(tiny_model):
    """audio.max_sample bounds what both frontends (numpy, and MLX ops on a GPU) turn into finite
    features: just under it, the worst signals measured (square waves near Nyquist, which overflow
    at 16 x the bound) give finite features on both; beyond it both refuse in one line, as does
    `transcribe` given such an array, before any batch."""
    import warnings

    from funasr_nano_mlx import transcribe
    from funasr_nano_mlx.audio import fbank, fbank_mx, max_sample

    n = np.arange(16000)
    squares = [np.where(n % 2, 1.0, -1.0), np.sign(np.cos(np.pi * n * 255 / 256) + 1e-9)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings
        for square in squares:
            under = (0.999 * max_sample() * square).astype(np.float32)
            assert np.isfinite(fbank(under)).all() and np.isfinite(np.array(fbank_mx(under))).all()
            for frontend in (fbank, fbank_mx):
                with pytest.raises(UserError, match=f"clip holds samples {TOO_LARGE}.*at 0.00 s"):
                    frontend((16 * max_sample() * square).astype(np.float32), "clip")
    with pytest.raises(UserError, match=TOO_LARGE):
        transcribe(*tiny_model, (1e30 * squares[0]).astype(np.float32), max_new_tokens=2)


# -- many files, some bad -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, clips) -> tuple[Path, list[str], list[str]]:
    """Five good files of different lengths and three bad ones between them, sorted by name as
    `transcribe DIR` reads them: (folder, good names, bad names)."""
    folder = tmp_path_factory.mktemp("mixed")
    speech = clips["7s"]
    for index, seconds in enumerate([1.0, 2.5, 4.0, 5.5, 7.0]):
        written(folder, f"{2 * index}-good.wav", np.roll(speech, 3000 * index)[: int(seconds * 16000)])
    (folder / "1-notes.wav").write_text("not audio\n")
    written(folder, "3-blip.flac", np.zeros(100, np.float32))  # 6 ms: less than one 25 ms frame
    written(folder, "5-nan.wav", _with(speech, 100, np.nan), subtype="FLOAT")
    names = sorted(p.name for p in folder.iterdir())
    return folder, [n for n in names if "good" in n], [n for n in names if "good" not in n]


@pytest.fixture(scope="module")
def good_alone(tiny_model, mixed_folder) -> dict[str, list[int]]:
    """Each good file's tokens, transcribed without the bad ones."""
    from funasr_nano_mlx.transcribe import transcribe_many

    folder, good, _ = mixed_folder
    results = transcribe_many(*tiny_model, [folder / n for n in good], max_new_tokens=2, timestamps=False)
    return {n: r.token_ids for n, r in zip(good, results)}


@pytest.mark.parametrize(
    ("how", "batch_size"),
    [("directory", 1), ("directory", 4), ("files", 3), ("api", 4)],
)
def test_one_bad_file_loses_no_other(tiny_f32, tiny_model, mixed_folder, good_alone, tmp_path, how, batch_size):
    """Bad files among good ones, one at a time or in batches: every good file's result is written (the
    same tokens as without the bad files), each bad file is named in one `error:` line at the end, and
    the exit status is 2. The API with keep_going yields a Failure in each bad input's place."""
    folder, good, bad = mixed_folder
    if how == "api":
        from funasr_nano_mlx.transcribe import Failure, transcribe_many

        inputs = sorted(folder.iterdir())
        results = list(transcribe_many(*tiny_model, inputs, max_new_tokens=2, batch_size=batch_size, keep_going=True))
        assert [isinstance(r, Failure) for r in results] == ["good" not in p.name for p in inputs]
        assert {Path(r.audio).name: r.token_ids for r in results if not isinstance(r, Failure)} == good_alone
        assert all(Path(r.audio).name in r.error for r in results if isinstance(r, Failure))
        return
    inputs = [folder] if how == "directory" else [folder / n for n in reversed(bad + good)]
    out = tmp_path / "out"
    options = ("--output-dir", out) if how == "directory" else ()
    done = invoke_cli(
        "transcribe", tiny_f32, *inputs, "--format", "json", "--batch-size", batch_size, *TOKENS, *options
    )
    assert done.returncode == 2
    lines = stderr_lines(done)
    assert len(lines) == len(bad) and all(line.startswith("error: ") for line in lines), lines
    assert sorted(next(n for n in bad if n in line) for line in lines) == bad
    if how == "directory":
        rows = {name: json.loads(path.read_text()) for name, path in files_of(out).items()}
        assert sorted(rows) == [n.replace(".wav", ".json") for n in good]
    else:  # to stdout, in the order given
        rows = {Path(row["audio"]).stem + ".json": row for row in map(json.loads, done.stdout.splitlines())}
        assert list(rows) == [n.replace(".wav", ".json") for n in reversed(good)]
    assert {name: row["token_ids"] for name, row in rows.items()} == {
        n.replace(".wav", ".json"): tokens for n, tokens in good_alone.items()
    }


def test_what_is_named_like_audio_but_is_no_file_is_named_not_skipped(tiny_f32, clips, tmp_path):
    """In a directory, a link to nothing, a loop of links and a pipe named like audio are bad files like
    any other (named at the end, exit status 2), not silently left out; given alone, each is one line
    that says what it is ("not found" would be wrong: it is there)."""
    folder = tmp_path / "in"
    folder.mkdir()
    written(folder, "good.wav", clips["1s"])
    (folder / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    os.mkfifo(folder / "pipe.wav")
    done = invoke_cli("transcribe", tiny_f32, folder, "--format", "json", *TOKENS)
    assert done.returncode == 2
    assert [json.loads(row)["audio"] for row in done.stdout.splitlines()] == [str(folder / "good.wav")]
    lines = stderr_lines(done)
    assert len(lines) == 3 and all(line.startswith("error: cannot read audio") for line in lines), lines
    for name, what in [("gone", "a link to nothing"), ("loop", "a link to nothing"), ("pipe", "a pipe or device")]:
        assert any(f"{name}.wav: it is {what}" in line for line in lines), lines
    lines = stderr_lines(invoke_cli("transcribe", tiny_f32, "/dev/null", *TOKENS))
    assert lines == ["error: cannot read audio /dev/null: it is a pipe or device, not a regular file"]


# -- long files: read in blocks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"),
    [
        (44100, 2, "FLOAT"),
        (44100, 2, "PCM_16"),
        (16000, 1, "PCM_16"),
        (8000, 3, "PCM_24"),
        (48000, 1, "FLOAT"),
        (1000, 1, "PCM_16"),  # 16 x as many samples out as in: a block goes to the resampler in pieces
    ],
)
def test_reading_in_blocks_equals_reading_at_once(tmp_path, clips, rate, channels, subtype):
    """The block-wise reader (downmix and soxr streaming per block) gives exactly the samples of reading
    the whole file, averaging its channels and resampling it in one call, as the loader did before."""
    import soxr

    from funasr_nano_mlx.audio import load_audio

    mono = soxr.resample(clips["7s"], 16000, rate)
    samples = np.stack([mono * (0.5 + 0.25 * c) for c in range(channels)], axis=1)
    path = written(tmp_path, "long.wav", samples, rate, subtype)
    whole, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    expected = whole.mean(axis=1, dtype=np.float32)
    if file_rate != 16000:
        expected = soxr.resample(expected, file_rate, 16000, quality="HQ")
    for block_frames in (1000, 4096, 1 << 16):  # 7 s at 44.1 kHz: 309 blocks, 76 blocks, 5 blocks
        np.testing.assert_array_equal(load_audio(path, block_frames), expected)


def test_a_low_rate_is_resampled_in_pieces(tmp_path, monkeypatch):
    """Upsampling multiplies a block: at 100 Hz, a 200 s file read in one 65536-frame block is 3.2M
    samples at 16 kHz, and at 1 Hz one block would be 4 GB. The resampler is given pieces of a block
    worth about a block of output each (soxr returns at most twice that here), so that only the result
    is held whole; soxr's own buffering at extreme ratios is bounded by soxr, not by the file."""
    import soxr

    from funasr_nano_mlx.audio import READ_FRAMES, load_audio

    resample_chunk, returned = soxr.ResampleStream.resample_chunk, []

    def recorded(self, x, last=False):
        out = resample_chunk(self, x, last)
        returned.append(len(out))
        return out

    monkeypatch.setattr(soxr.ResampleStream, "resample_chunk", recorded)
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 20000).astype(np.float32)
    assert len(load_audio(written(tmp_path, "100hz.wav", noise, 100))) == 200 * 16000
    assert len(returned) > 40 and max(returned) <= 2 * READ_FRAMES, (len(returned), max(returned))


# Runs the command with the process's address space limited to what it has mapped once MLX and the CLI
# are loaded, plus 2 GiB: enough to transcribe short files, not to hold 24 hours of 16 kHz samples.
LIMITED_CLI = """
import resource, sys
from pathlib import Path
import funasr_nano_mlx.transcribe  # MLX and the tokenizer's libraries, mapped before the limit
from funasr_nano_mlx.cli import main

status = Path("/proc/self/status").read_text().splitlines()
mapped = int(next(line for line in status if line.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**31, resource.RLIM_INFINITY))
main(sys.argv[1:], prog_name="funasr-nano-mlx")
"""


def test_a_file_too_long_for_memory_is_one_error_and_loses_no_other(tiny_f32, clips, tmp_path):
    """A 170 KB WAV at 1 Hz declares 24 hours: 5.5 GB at 16 kHz. Where that memory cannot be had (here
    an address-space limit; on a machine, its memory) the file is named in one error line and skipped,
    and the files around it are transcribed."""
    long = written(tmp_path, "day.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 24 * 3600), 1, "PCM_16")
    good = written(tmp_path, "good.wav", clips["1s"])
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, "transcribe", tiny_f32, good, long, good, "--format", "json", *TOKENS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = stderr_lines(done)
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == (
        f"error: {long} is too long to hold in memory: 24.0 hours at 1 Hz is 5.5 GB as the 16 kHz float32 "
        "samples the model reads"
    )
    assert [json.loads(row)["audio"] for row in done.stdout.splitlines()] == [str(good), str(good)]


def test_a_file_longer_than_the_machines_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """More than the machine's memory cannot be held, whatever the allocator says (it may promise it)."""
    from funasr_nano_mlx import audio

    path = written(tmp_path, "two.wav", np.zeros(32000, np.float32))
    monkeypatch.setattr(audio, "_physical_memory", lambda: 100_000)  # under its 128 kB of 16 kHz samples
    monkeypatch.setattr(audio, "_read_mono_16k", lambda *_: pytest.fail("read"))
    with pytest.raises(UserError, match="two.wav is too long to hold in memory"):
        audio.read_audio(path)
