"""The command line: JSON output, and one clear line with exit status 2 for every user error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from funasr_nano_mlx import load, transcribe
from tests.helpers import assert_user_error, invoke_cli, run_cli


@pytest.fixture(scope="module")
def wav_1s(tmp_path_factory, clips):
    path = tmp_path_factory.mktemp("audio") / "one-second.wav"
    sf.write(str(path), clips["1s"], 16000)
    return path


def test_json_output_matches_the_python_api(tiny_f32, wav_1s, tmp_path):
    flac = tmp_path / "same.flac"
    sf.write(str(flac), sf.read(str(wav_1s))[0], 16000)
    run = run_cli(
        "transcribe",
        tiny_f32,
        wav_1s,
        flac,
        "--format",
        "json",
        "--language",
        "en",
        "--hotword",
        "MLX",
        "--max-new-tokens",
        "24",
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [row["audio"] for row in rows] == [str(wav_1s), str(flac)]
    model, tokenizer = load(tiny_f32)
    expected = transcribe(model, tokenizer, wav_1s, language="en", hotwords=["MLX"], max_new_tokens=24)
    for row in rows:  # FLAC is lossless: same samples, same tokens
        assert row["token_ids"] == expected.token_ids and row["text"] == expected.text
        assert {"frontend", "encoder", "prefill", "decode"} <= row["timings"].keys()


def test_text_output(tiny_f32, wav_1s):
    run = run_cli("transcribe", tiny_f32, wav_1s, "--max-new-tokens", "8", "--no-itn")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 1


def test_user_errors(tiny_f32, tiny_upstream, wav_1s, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    too_short = tmp_path / "short.wav"
    sf.write(str(too_short), np.zeros(200, np.float32), 16000)
    assert_user_error(run_cli("transcribe", tiny_f32, tmp_path / "missing.wav"), "audio file not found", alone=True)
    assert_user_error(run_cli("transcribe", tiny_f32, not_audio), "cannot read audio", alone=True)
    assert_user_error(run_cli("transcribe", tiny_f32, too_short), "at least one 25 ms frame", alone=True)
    assert_user_error(run_cli("transcribe", tmp_path, wav_1s), "is not a converted Fun-ASR-Nano model", alone=True)
    assert_user_error(run_cli("transcribe", tiny_f32, wav_1s, "--language", "klingon"), "unknown language", alone=True)

    truncated_model = tmp_path / "truncated-model"
    shutil.copytree(tiny_f32, truncated_model)
    weights = (truncated_model / "model.safetensors").read_bytes()
    (truncated_model / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert_user_error(run_cli("transcribe", truncated_model, wav_1s), "cannot load the model", alone=True)
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("transcribe", tiny_f32, tmp_path / "empty"), "no audio files", alone=True)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_upstream, corrupt)
    (corrupt / "model.pt").write_bytes(b"\x00" * 1000)
    assert_user_error(run_cli("convert", corrupt, tmp_path / "out"), "not a readable PyTorch checkpoint", alone=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_an_empty_argument_is_refused_not_taken_for_the_current_directory(tiny_f32, tmp_path):
    """Path("") is ".": `transcribe MODEL "$UNSET"` would read every audio file under the current folder."""
    sf.write(str(tmp_path / "here.wav"), np.zeros(16000, np.float32), 16000)
    done = run_cli("transcribe", tiny_f32, "", cwd=tmp_path)
    assert_user_error(done, "an empty argument was given after 'transcribe", alone=True)
    assert_user_error(invoke_cli("transcribe", "", "a.wav"), "an empty argument was given after 'transcribe'")
    assert_user_error(invoke_cli("transcribe", tiny_f32, "a.wav", "--hotword", ""), "empty argument", alone=True)


@pytest.mark.parametrize(
    "stdout, fragment",
    [
        ("full", "cannot write standard output: No space left on device"),  # /dev/full: every write fails
        ("closed", "standard output is closed"),  # `>&-`: click.echo would print nothing and exit 0
    ],
)
def test_standard_output_that_takes_nothing_is_one_line(tiny_f32, wav_1s, stdout, fragment):
    args = [sys.executable, "-m", "funasr_nano_mlx", "transcribe", tiny_f32, wav_1s, "--max-new-tokens", "2"]
    with open("/dev/full", "w") as full:
        target = {"stdout": full} if stdout == "full" else {"preexec_fn": lambda: os.close(1)}
        done = subprocess.run(list(map(str, args)), stderr=subprocess.PIPE, text=True, timeout=300, **target)
    assert_user_error(done, fragment)


def test_a_command_whose_result_would_not_be_printed_is_refused_before_its_work(tiny_upstream, tmp_path):
    """convert prints the folder it made once it is made: with standard output closed, it is not made."""
    args = [sys.executable, "-m", "funasr_nano_mlx", "convert", tiny_upstream, tmp_path / "converted"]
    done = subprocess.run(list(map(str, args)), stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert_user_error(done, "standard output is closed", alone=True)
    assert not (tmp_path / "converted").exists()


def test_help_explains_the_commands():
    run = run_cli("--help")
    assert run.returncode == 0 and "convert" in run.stdout and "transcribe" in run.stdout
    run = run_cli("transcribe", "--help")
    assert "--language" in run.stdout and "auto" in run.stdout
