"""Shared fixtures: a tiny random official checkpoint, its MLX conversions, and speech clips.

Everything is built at test time from the official funasr code (tests/reference.py), seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import CLIP_SECONDS, NOISE_FLOOR, SAMPLE_RATE, clip
from tests.speech import synthesize

ENGLISH = "The quick brown fox jumps over the lazy dog while the band plays a slow song."
MANDARIN = "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天。"


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> np.ndarray:
    """About 10 s of English then Mandarin synthetic speech, 16 kHz mono float32."""
    tmp = tmp_path_factory.mktemp("speech")
    parts = [
        sf.read(str(synthesize(text, tmp / f"{voice}.wav", voice)), dtype="float32")[0]
        for voice, text in (("en", ENGLISH), ("cmn", MANDARIN))
    ]
    # A recording's noise floor (about 3 int16 steps). espeak's digital silence is exact zeros, which
    # make LFR rows of one constant value; their LayerNorm is ill-conditioned (offset ~360, spread
    # ~0.7 from the PE), so any two float32 implementations differ there by ~1e-4 relative.
    noise = np.random.default_rng(0).standard_normal(sum(map(len, parts))).astype(np.float32)
    return np.concatenate(parts) + NOISE_FLOOR * noise


@pytest.fixture(scope="session")
def clips(speech) -> dict[str, np.ndarray]:
    return {name: clip(speech, seconds) for name, seconds in CLIP_SECONDS.items()}


@pytest.fixture(scope="session")
def stereo_44k(tmp_path_factory, speech) -> Path:
    """A 44.1 kHz stereo WAV (left: speech, right: speech at half level) of 7 s."""
    import soxr

    mono = soxr.resample(clip(speech, 7.0), SAMPLE_RATE, 44100)
    path = tmp_path_factory.mktemp("stereo") / "stereo-44k.wav"
    sf.write(str(path), np.stack([mono, 0.5 * mono], axis=1), 44100, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory) -> Path:
    from tests.reference import write_upstream_dir

    return write_upstream_dir(tmp_path_factory.mktemp("upstream") / "Fun-ASR-Nano-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def reference(tiny_upstream):
    from tests.reference import Reference

    return Reference(tiny_upstream)


def _converted(tmp_path_factory, upstream: Path, dtype: str) -> Path:
    from funasr_nano_mlx.convert import convert

    return convert(upstream, tmp_path_factory.mktemp("mlx") / f"tiny-{dtype}", dtype=dtype)


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, tiny_upstream) -> Path:
    return _converted(tmp_path_factory, tiny_upstream, "float32")


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory, tiny_upstream) -> Path:
    return _converted(tmp_path_factory, tiny_upstream, "bfloat16")


@pytest.fixture(scope="session")
def tiny_model(tiny_f32):
    from funasr_nano_mlx import load

    return load(tiny_f32)


@pytest.fixture(scope="session")
def installed_cli(tmp_path_factory) -> list[str]:
    """`funasr-nano-mlx` as a user installs it: a wheel built from this checkout, installed into a new
    virtual environment whose only view of the dependencies is this environment's site-packages (a
    path in a .pth file: the editable install's hook there is not run, so no checkout is importable).
    pip installs the wheel with its extras and no index, so every dependency it declares must already be
    satisfied. Returns the console script's command; run it outside the checkout."""
    import subprocess
    import sys
    import sysconfig

    root = Path(__file__).resolve().parent.parent
    tmp = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", root], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("funasr_nano_mlx-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], check=True)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", python, "install", "--no-index", f"{wheel}[cpu,convert,eval]"], check=True, cwd=tmp
    )
    return [str(tmp / "venv" / "bin" / "funasr-nano-mlx")]


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, tiny_f32, tiny_bf16):
    """(model dir, report dir): a copy of the tiny float32 model, evaluated against the bf16 one."""
    import shutil

    from funasr_nano_mlx.evaluate import evaluate
    from tests.helpers import local_set

    tmp = tmp_path_factory.mktemp("evaluated")
    evalset = local_set(tmp / "tiny-set")
    evaluate(tiny_bf16, [str(evalset)], tmp / "bf16-report", max_new_tokens=8)
    model = tmp / "model"
    shutil.copytree(tiny_f32, model)  # copy2: the model files keep their (older) times
    evaluate(model, [str(evalset)], tmp / "report", baseline=tmp / "bf16-report", max_new_tokens=8)
    return model, tmp / "report"


@pytest.fixture(scope="session")
def carded_model(evaluated, tmp_path_factory):
    """The evaluated tiny model with its card for PUBLISH_REPO: ready to publish (copy it to change it)."""
    import shutil

    from funasr_nano_mlx.card import write_card
    from tests.helpers import PUBLISH_REPO

    model, report = evaluated
    target = tmp_path_factory.mktemp("carded") / "model"
    shutil.copytree(model, target)
    write_card(target, report_dir=report, repo_id=PUBLISH_REPO)
    return target


@pytest.fixture(scope="session")
def four_bit(evaluated, tiny_bf16, tmp_path_factory):
    """(model dir, report dir): the tiny model quantized by recipe 4bit-llm (acceptance bound 0.5 points),
    evaluated on the same set against the same bf16 report."""
    from funasr_nano_mlx.evaluate import evaluate
    from funasr_nano_mlx.quantize import quantize
    from funasr_nano_mlx.recipe import Recipe

    tmp = evaluated[1].parent
    model = quantize(tiny_bf16, tmp_path_factory.mktemp("q4") / "model", Recipe.load("4bit-llm"))
    evaluate(model, [str(tmp / "tiny-set")], tmp / "q4-report", baseline=tmp / "bf16-report", max_new_tokens=8)
    return model, tmp / "q4-report"
