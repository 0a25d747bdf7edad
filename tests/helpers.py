"""Helpers shared by the test modules: running the command line and checking its user errors, small
spoken sets, and reading reports."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.speech import synthesize

SAMPLE_RATE = 16000
NOISE_FLOOR = 1e-4  # a recording's noise floor under synthetic speech (about 3 int16 steps)
# Clip lengths: shorter than an LLM token's worth of frames, ~1 s, a typical utterance, and just over
# the 30 s that upstream says needs segmentation.
CLIP_SECONDS = {"0.3s": 0.3, "1s": 1.0, "7s": 7.0, "31s": 31.0}
PUBLISH_REPO = "tester/fun-asr-nano-tiny"  # where the publishing tests upload, on the local hub
SHIPPED_RECIPES = (
    "bf16",
    "8bit",
    "4bit-llm",
    "4bit-mixed",
    "mlt-bf16",
    "mlt-4bit-llm",
    "bf16-timestamps",
    "4bit-llm-timestamps",
)


def run_cli(
    *args, env: dict | None = None, cwd: Path | None = None, command: list[str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`funasr-nano-mlx ARGS` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT at import, so a
    test pointing it at a local hub must not import it in the pytest process). `command` replaces
    `python -m funasr_nano_mlx`, e.g. with an installed console script."""
    command = command or [sys.executable, "-m", "funasr_nano_mlx"]
    return subprocess.run(
        [*command, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def invoke_cli(*args) -> subprocess.CompletedProcess:
    """`funasr-nano-mlx ARGS` in this process (click's runner): far cheaper than `run_cli` where no
    environment variable must be set before import. Returns what `run_cli` returns, so the same
    assertions apply; an exception that escapes the command is re-raised, as a traceback would show."""
    from click.testing import CliRunner

    from funasr_nano_mlx.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_user_error(done: subprocess.CompletedProcess, fragment: str, alone: bool = False) -> None:
    """Exit status 2 and one `error:` line, the last on stderr (progress lines may come before it;
    with `alone`, nothing may)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and "Traceback" not in done.stderr, done.stderr
    assert not alone or len(lines) == 1, done.stderr
    assert fragment in errors[0], errors[0]


def files_of(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


SENTENCES = [("en.wav", "the quick brown fox", "en"), ("zh.wav", "今天天气很好", "zh")]


def local_set(folder: Path, sentences=SENTENCES) -> Path:
    folder.mkdir(parents=True)
    for name, text, language in sentences:
        synthesize(text, folder / name, "cmn" if language == "zh" else "en")
    lines = ["file_name,text,language"] + [f"{n},{t},{lang}" for n, t, lang in sentences]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def hub_style_dataset(folder: Path) -> Path:
    """A dataset repository as the hub stores one (parquet under data/), read through `datasets`."""
    from datasets import Audio, Dataset

    def wav(text: str) -> bytes:
        samples = sf.read(str(synthesize(text, folder / "tmp.wav")), dtype="float32")[0]
        buffer = io.BytesIO()
        sf.write(buffer, samples, 16000, format="FLAC")
        return buffer.getvalue()

    audio = [
        {"bytes": wav("good morning"), "path": "a.flac"},
        {"bytes": b"garbage", "path": "b.flac"},
        {"bytes": wav("good night"), "path": "c.flac"},
        {"bytes": wav("not read"), "path": "d.flac"},
    ]
    dataset = Dataset.from_dict(
        {"audio": audio, "sentence": ["Good morning!", "x", "Good night.", "not read"], "key": ["u1", "u2", "u3", "u4"]}
    ).cast_column("audio", Audio(decode=False))
    (folder / "data").mkdir(parents=True)
    dataset.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def worst_delta(report_dir: Path) -> tuple[str, str, float]:
    """(set, METRIC, points) of the largest error-rate delta against the baseline."""
    sets = json.loads((report_dir / "eval.json").read_text())["sets"]
    return max(
        (
            (name, metric.upper(), 100 * s["delta"])
            for name, data in sets.items()
            for metric, s in data["comparison"]["scores"].items()
        ),
        key=lambda x: x[2],
    )


def clip(speech: np.ndarray, seconds: float) -> np.ndarray:
    """The first `seconds` of speech, looped if needed, starting at the first voiced sample."""
    start = int(np.argmax(np.abs(speech) > 1e-3))
    voiced = speech[start:]
    needed = int(round(seconds * SAMPLE_RATE))
    return np.resize(voiced, needed).astype(np.float32)


# CTC timestamps (tests/test_ctc.py, tests/test_full_parity.py)


def as_upstream(stamps: list[dict]) -> list[dict]:
    """Our timestamp dicts in upstream's keys (token, start_time, end_time, score)."""
    return [{"token": s["token"], "start_time": s["start"], "end_time": s["end"], "score": s["score"]} for s in stamps]


def shifted(stamps: list[dict], offset: float) -> list[dict]:
    return [
        {**s, "start_time": round(offset + s["start_time"], 3), "end_time": round(offset + s["end_time"], 3)}
        for s in stamps
    ]


def transcribe_module():
    """The module funasr_nano_mlx.transcribe, to patch its globals: the package exports a function so
    named, which `import funasr_nano_mlx.transcribe as ...` would give instead."""
    return importlib.import_module("funasr_nano_mlx.transcribe")


# cuda_kernels' kernels of a SAN-M layer: the memory block, the attention (opt-in) or its two products (the scores, or
# the softmax's weights, with the memory block in their launch, or each apart; or the context in the weights' kernel),
# the linears
ENCODER_KERNELS = (
    "fsmn_memory",
    "frame_attention",
    "context_and_memory",
    "weights_and_memory",
    "scores_and_memory",
    "attention_scores",
    "attention_context",
    "split_linear",
)


def cuda_kernel_twins(
    monkeypatch, names=("prompt_attention", "step_attention", "decode_attention", "step_heads", "write_step_kv")
) -> list[str]:
    """The model as on a CUDA GPU (`cuda_kernels.available`, and `enabled` for the LLM's kernels in any dtype), each
    of these CUDA kernels replaced by its MLX-ops twin: the names of the kernels called, as they are. The
    encoder's kernels (ENCODER_KERNELS, on in float32 and bf16) are on only if named, and then all must be."""
    from funasr_nano_mlx import cuda_kernels

    monkeypatch.setattr(cuda_kernels, "available", lambda: bool(set(names) & set(ENCODER_KERNELS)))
    monkeypatch.setattr(cuda_kernels, "enabled", lambda dtype: True)
    monkeypatch.setattr(cuda_kernels, "fits", lambda *shape: True)
    calls = []
    for name in names:
        twin = getattr(cuda_kernels, f"{name}_ops")
        monkeypatch.setattr(cuda_kernels, name, lambda *a, twin=twin, name=name: calls.append(name) or twin(*a))
    return calls
