"""FSMN-VAD: frame probabilities and segments against the official FsmnVADStreaming, conversion, CLI.

The official model is built with random weights wired so that its silence posterior follows the
loudness (tests/reference.py, VAD_CARRIER), so the segment boundaries below depend on the audio.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

from funasr_nano_mlx.convert import convert_vad
from funasr_nano_mlx.files import sha256
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.vad import CMVN_KEY, chunk_starts, load_vad
from tests.helpers import NOISE_FLOOR, SAMPLE_RATE
from tests.reference import VadReference, write_upstream_vad_dir

MAX_PROBABILITY_ERROR = 1e-5  # measured: 2e-6 (float32 MLX against float32 torch)
LONG_STRETCH_S = 35  # continuous speech: longer than 30 s with no pause that ends a segment
CHUNK_S = 60  # upstream's offline chunk; a burst straddles its end


@pytest.fixture(scope="module")
def vad_upstream(tmp_path_factory):
    return write_upstream_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad", seed=0)


@pytest.fixture(scope="module")
def vad_converted(vad_upstream, tmp_path_factory):
    return convert_vad(vad_upstream, tmp_path_factory.mktemp("vad-mlx") / "fsmn-vad-mlx")


@pytest.fixture(scope="module")
def vad(vad_converted):
    return load_vad(vad_converted)


@pytest.fixture(scope="module")
def reference(vad_upstream):
    return VadReference(vad_upstream)


def seconds(s: float) -> int:
    return round(s * SAMPLE_RATE)


@pytest.fixture(scope="module")
def recording(speech) -> np.ndarray:
    """About 70 s: a 35 s stretch of speech, then bursts of 1.5-4 s at different levels separated by
    silences from 0.4 s (inside a segment) to 3.5 s (ends one), one burst across the 60 s mark."""
    voiced = speech[int(np.argmax(np.abs(speech) > 1e-3)) :]
    rng = np.random.default_rng(1)

    def burst(duration: float) -> np.ndarray:
        start = rng.integers(0, len(voiced) - seconds(duration))
        return voiced[start : start + seconds(duration)] * rng.uniform(0.3, 1.0)

    parts = [np.zeros(seconds(1.0)), np.resize(voiced, seconds(LONG_STRETCH_S))]
    for gap, duration in [(2.5, 3.0), (0.4, 2.0), (3.0, 2.5), (1.2, 1.5), (2.2, 3.0)]:
        parts += [np.zeros(seconds(gap)), burst(duration)]
    parts.append(np.zeros(seconds(CHUNK_S - 1.5) - sum(map(len, parts))))  # the next burst straddles 60 s
    parts += [
        burst(3.0),
        np.zeros(seconds(3.5)),
        burst(3.0),
        np.zeros(seconds(0.6)),
        burst(2.0),
        np.zeros(seconds(2.0)),
    ]
    audio = np.concatenate(parts).astype(np.float32)
    return audio + NOISE_FLOOR * rng.standard_normal(len(audio)).astype(np.float32)


def test_frame_probabilities_match_official(vad, reference, recording):
    ours = vad.frame_probabilities(recording)
    official, _ = reference.run(recording)
    assert ours.shape == official.shape == (1 + (len(recording) - 400) // 160,)
    error = float(np.abs(ours - official).max())
    print(f"P(speech): max abs error {error:.2e} over {len(ours)} frames")
    assert error < MAX_PROBABILITY_ERROR
    # The decisions are not constant: a fair share of frames on each side of the thresholds.
    assert 0.3 < float(np.mean(official > 0.6)) < 0.9 and float(np.mean(official < 0.4)) > 0.1


@pytest.mark.parametrize(
    ("max_segment_ms", "max_end_silence_ms", "cut"),
    [(30000, None, True), (5000, None, True), (30000, 800, True), (8000, 300, False)],
)
def test_segments_match_official(vad, reference, recording, max_segment_ms, max_end_silence_ms, cut):
    """`cut`: the stretch has no pause long enough to end a segment, so only max_segment_ms cuts it
    (with a 300 ms threshold its pauses between phrases end segments first)."""
    ours = vad.segments(recording, max_segment_ms=max_segment_ms, max_end_silence_ms=max_end_silence_ms)
    _, official = reference.run(recording, max_segment_ms, max_end_silence_ms)
    print(f"max_segment_ms {max_segment_ms}, max_end_silence_ms {max_end_silence_ms}: {official}")
    assert [list(segment) for segment in ours] == official
    assert len(ours) >= 5
    # The 35 s stretch is cut at max_segment_ms (upstream's segments end one 10 ms frame past it), and
    # the next piece starts where the first cut one ends.
    assert all(end - start <= max_segment_ms + 10 for start, end in ours)
    cuts = [i for i, (start, end) in enumerate(ours[:-1]) if end - start == max_segment_ms + 10]
    assert bool(cuts) == cut and all(ours[i][1] == ours[i + 1][0] for i in cuts[:1])


@pytest.mark.parametrize(
    "edits",
    [
        {"detect_mode: 1": "detect_mode: 0"},
        {"do_extend: 1": "do_extend: 0"},
        {"decibel_thres: -100.0": "decibel_thres: -45.0", "snr_thres: -100.0": "snr_thres: 10.0"},
    ],
    ids=["single-utterance", "no-extension", "decibel-and-snr"],
)
def test_other_settings_match_official(vad_upstream, tmp_path, recording, edits):
    """Settings the released config leaves at their defaults, changed in config.yaml."""
    src = shutil.copytree(vad_upstream, tmp_path / "src")
    text = (src / "config.yaml").read_text()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    (src / "config.yaml").write_text(text)
    ours = load_vad(convert_vad(src, tmp_path / "mlx")).segments(recording, max_end_silence_ms=500)
    assert [list(segment) for segment in ours] == VadReference(src).run(recording, max_end_silence_ms=500)[1]


@pytest.mark.parametrize("length_s", [None, CHUNK_S])
def test_chunks_are_upstreams(reference, recording, length_s):
    """The frames of each 60 s chunk, where the dynamic schedule is consulted (a recording of exactly
    60 s ends with a chunk of no samples that still scores the last frames)."""
    audio = recording[: seconds(length_s)] if length_s else recording
    reference.run(audio)
    assert chunk_starts(len(audio)) == [0, *np.cumsum(reference.chunk_frames[:-1]).tolist()]


def test_the_dynamic_schedule_depends_on_the_chunk_boundary(vad, recording):
    """The burst across 60 s is in an open segment when the second chunk starts, so upstream's
    default schedule drops the pause that ends a segment to 50 ms for that chunk: the remaining
    bursts come out in pieces, where a fixed 800 ms threshold keeps each one whole."""
    boundary_ms = chunk_starts(len(recording))[1] * 10
    dynamic, fixed = vad.segments(recording), vad.segments(recording, max_end_silence_ms=800)
    assert sum(start >= boundary_ms for start, _ in dynamic) > sum(start >= boundary_ms for start, _ in fixed)


def test_short_and_silent_audio(vad, reference):
    assert vad.segments(np.zeros(399, np.float32)) == []
    assert vad.frame_probabilities(np.zeros(399, np.float32)).shape == (0,)
    silence = (NOISE_FLOOR * np.random.default_rng(2).standard_normal(seconds(3))).astype(np.float32)
    assert vad.segments(silence) == reference.run(silence)[1] == []
    with pytest.raises(ValueError, match="max_segment_ms"):
        vad.segments(silence, max_segment_ms=0)


# -- conversion -------------------------------------------------------------------------------------


def test_conversion_round_trip(vad_upstream, vad_converted):
    from funasr.frontends.wav_frontend import load_cmvn

    config = json.loads((vad_converted / "config.json").read_text())
    assert config["model_type"] == "fsmn_vad"
    assert config["encoder_conf"]["lorder"] == 20 and config["model_conf"]["max_end_silence_time"] == 800
    assert config["frontend_conf"]["lfr_m"] == 5 and "cmvn_file" not in config["frontend_conf"]
    provenance = config["conversion"]
    assert provenance["source"] == str(vad_upstream)
    assert provenance["model_pt_sha256"] == sha256(vad_upstream / "model.pt")
    assert provenance["package_version"] and provenance["dtype"] == "float32" and provenance["notes"] == []
    assert not list(vad_converted.parent.glob("*.tmp"))

    weights = mx.load(str(vad_converted / "model.safetensors"))
    state = torch.load(vad_upstream / "model.pt", weights_only=True)
    np.testing.assert_array_equal(np.array(weights.pop(CMVN_KEY)), load_cmvn(str(vad_upstream / "am.mvn")).numpy())
    assert weights.keys() == state.keys()
    for key, tensor in state.items():  # conv_left: Conv2d (C, 1, K, 1) -> Conv1d (C, K, 1), same values
        np.testing.assert_array_equal(np.array(weights[key]), tensor.numpy().reshape(weights[key].shape))


def test_existing_destination_is_refused(vad_upstream, vad_converted):
    before = sorted(p.name for p in vad_converted.iterdir())
    with pytest.raises(UserError, match="already exists"):
        convert_vad(vad_upstream, vad_converted)
    assert sorted(p.name for p in vad_converted.iterdir()) == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "model.pt is missing"),
        ("truncated", "not a readable PyTorch checkpoint"),
        ("rorder", "encoder_conf.rorder"),
        ("lfr", "frontend_conf.lfr_m"),
        ("window", "config.yaml: model_conf.window_size_ms: expected a positive finite number, found 0"),
    ],
)
def test_bad_sources_are_refused(vad_upstream, tmp_path, damage, message):
    src = shutil.copytree(vad_upstream, tmp_path / "src")
    checkpoint, config = src / "model.pt", src / "config.yaml"
    if damage == "missing":
        checkpoint.unlink()
    elif damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    else:
        edit = {
            "rorder": ("rorder: 0", "rorder: 1"),
            "lfr": ("lfr_m: 5", "lfr_m: 7"),
            "window": ("window_size_ms: 200", "window_size_ms: 0"),
        }[damage]
        config.write_text(config.read_text().replace(*edit))
    with pytest.raises(UserError, match=message):
        convert_vad(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no out.tmp


def test_load_refuses_other_directories(tmp_path, vad_converted):
    with pytest.raises(UserError, match="not a converted FSMN-VAD model"):
        load_vad(tmp_path)
    broken = shutil.copytree(vad_converted, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot load the FSMN-VAD model"):
        load_vad(broken)


MISSING = object()
# case: (a field of the converted config.json, its new value, what the one error line says it expected)
BROKEN_CONFIGS = {
    "window of no frames": ("model_conf.window_size_ms", 0, "a positive finite number"),
    "window under a frame": ("model_conf.window_size_ms", 5, "at least frame_in_ms (10)"),
    "width not a number": ("encoder_conf.proj_dim", "x", "a positive int"),
    "input width not the features'": (
        "encoder_conf.input_dim",
        300,
        "400 (80 mel bands x 5 frames, the features' width)",
    ),
    "segment limit not a number": ("model_conf.max_single_segment_time", "x", "a positive finite number"),
    "segment limit negative": ("model_conf.max_single_segment_time", -1, "a positive finite number"),
    "ratio NaN": ("model_conf.speech_2_noise_ratio", float("nan"), "a positive finite number"),
    "silence classes not ids": ("model_conf.sil_pdf_ids", ["x"], "a list of ints"),
    "silence class past the network's": ("model_conf.sil_pdf_ids", [0, 248], "classes of the 248 the network scores"),
    "no silence class": ("model_conf.sil_pdf_ids", [], "classes of the 248 the network scores"),
    "detect mode unknown": ("model_conf.detect_mode", 2, "0 or 1"),
    "model_conf not a mapping": ("model_conf", [1], "a mapping"),
    "no model_conf": ("model_conf", MISSING, None),
}


def _broken_vad(vad_converted, folder, field: str, value):
    """A copy of the converted VAD with `field` (section.name, or a section) set to `value` or removed."""
    broken = shutil.copytree(vad_converted, folder)
    config = json.loads((broken / "config.json").read_text())
    *sections, name = field.split(".")
    holder = config[sections[0]] if sections else config
    if value is MISSING:
        del holder[name]
    else:
        holder[name] = value
    (broken / "config.json").write_text(json.dumps(config))
    return broken


@pytest.mark.parametrize("case", BROKEN_CONFIGS)
def test_a_broken_config_is_refused_at_load(vad_converted, tiny_f32, tmp_path, case):
    """Values that failed at the first audio (an IndexError for a window of no frames) or were taken
    silently: one line naming the file and field, before any audio is read."""
    import soundfile as sf

    from tests.helpers import assert_user_error, invoke_cli

    field, value, expected = BROKEN_CONFIGS[case]
    broken = _broken_vad(vad_converted, tmp_path / "vad", field, value)
    sf.write(str(tmp_path / "a.wav"), np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    done = invoke_cli("transcribe", tiny_f32, tmp_path / "a.wav", "--vad", broken)
    problem = "is missing" if value is MISSING else f"expected {expected}, found {value!r}"
    assert_user_error(done, f"{broken / 'config.json'}: {field}: {problem}", alone=True)


def test_the_server_refuses_a_broken_vad_before_it_is_up(vad_converted, tiny_f32, tmp_path, monkeypatch):
    """It started and said it was healthy, then answered every transcription with HTTP 500. Now it is refused
    before the model loads."""
    import importlib

    from funasr_nano_mlx.errors import UserError
    from tests.helpers import assert_user_error, invoke_cli

    loads = []

    def load(*args, **kwargs):
        loads.append(args)
        raise UserError("the model was loaded")

    monkeypatch.setattr(importlib.import_module("funasr_nano_mlx.transcribe"), "load", load)  # the package's
    # `transcribe` is the function
    broken = _broken_vad(vad_converted, tmp_path / "vad", "model_conf.window_size_ms", 0)
    done = invoke_cli("serve", tiny_f32, "--vad", broken, "--port", "0")
    assert_user_error(done, "model_conf.window_size_ms: expected a positive finite number, found 0", alone=True)
    assert "serving" not in done.stdout and loads == []


def test_the_checked_fields_are_the_models():
    from dataclasses import fields

    from funasr_nano_mlx.vad import FSMN_FIELDS, VAD_OPTION_FIELDS, FsmnArgs, VadOptions

    assert list(FSMN_FIELDS) == [f.name for f in fields(FsmnArgs)]
    assert list(VAD_OPTION_FIELDS) == [f.name for f in fields(VadOptions)]


# -- command line -----------------------------------------------------------------------------------


def test_cli_convert_vad_from_the_hub(vad_upstream, vad_converted, tmp_path):
    from tests.hub_server import HubServer
    from tests.helpers import assert_user_error, run_cli

    with HubServer() as hub:
        files = {p.relative_to(vad_upstream).as_posix(): p for p in vad_upstream.iterdir()}
        revision = hub.seed("funasr/fsmn-vad", files)
        newer = hub.seed("funasr/fsmn-vad", {**files, "README.md": b"a later commit"}, message="later")
        assert newer != revision
        env = hub.client_env(tmp_path / "hf-home")
        done = run_cli("convert-vad", "funasr/fsmn-vad", tmp_path / "out", "--revision", revision, env=env)  # not main
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(tmp_path / "out")
        again = run_cli("convert-vad", "funasr/fsmn-vad", tmp_path / "out", env=env)
        missing = run_cli("convert-vad", tmp_path / "nowhere", tmp_path / "other", env=env)
    provenance = json.loads((tmp_path / "out" / "config.json").read_text())["conversion"]
    assert provenance["source"] == f"funasr/fsmn-vad@{revision}"
    ours = mx.load(str(tmp_path / "out" / "model.safetensors"))
    expected = mx.load(str(vad_converted / "model.safetensors"))
    assert ours.keys() == expected.keys() and all(mx.array_equal(ours[k], expected[k]) for k in ours)
    for run, fragment in [(again, "already exists"), (missing, "source not found")]:
        assert_user_error(run, fragment, alone=True)


def test_transcription_uses_the_vad_segments(vad, vad_converted, recording, tiny_model, tiny_f32, tmp_path):
    """With a VAD, every file is cut where the VAD says (upstream's AutoModel(vad_model=...)), each
    segment decoded on its own, in Python and through `transcribe --vad`."""
    import soundfile as sf

    from funasr_nano_mlx.transcribe import transcribe
    from tests.helpers import run_cli

    model, tokenizer = tiny_model
    spans = vad.segments(recording, 30_000)
    result = transcribe(model, tokenizer, recording, segmenter=vad, max_new_tokens=3)
    assert [(s.start, s.end) for s in result.segments] == [(a / 1000, b / 1000) for a, b in spans]
    assert all(len(s.token_ids) == 3 for s in result.segments)

    wav = tmp_path / "recording.wav"
    sf.write(wav, recording, SAMPLE_RATE)
    out = run_cli("transcribe", tiny_f32, wav, "--vad", vad_converted, "--format", "json", "--max-new-tokens", "3")
    assert out.returncode == 0, out.stderr
    segments = json.loads(out.stdout)["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(a / 1000, b / 1000) for a, b in spans]
