"""Published models by name: `transcribe`, `evaluate` and `--vad` take a hub repo id as well as a
directory, download only what a model needs into the Hugging Face cache, work offline once cached,
honour --revision, and refuse a repo that is not a converted model in one line, caching nothing of it
but its config.json. All against the fake hub (tests/hub_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from funasr_nano_mlx import load, transcribe
from tests.helpers import assert_user_error, files_of, run_cli
from tests.hub_server import HubServer

REPO = "mlx-community/fun-asr-nano-tiny"
VAD_REPO = "mlx-community/fsmn-vad-tiny"
CARD_FILES = {"README.md": b"---\nlibrary_name: mlx\n---\n# a card\n", "eval.json": b"{}\n"}  # never fetched
TOKENS = "6"


@pytest.fixture(scope="module")
def served(tiny_f32, tiny_upstream, tmp_path_factory):
    """The tiny model as a published repo (with a card), the upstream checkpoint, a repo of another
    model type, and a converted FSMN-VAD: (server, first commit of REPO)."""
    from funasr_nano_mlx.convert import convert_vad
    from tests.reference import write_upstream_vad_dir

    vad_upstream = write_upstream_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad", seed=0)
    vad = convert_vad(vad_upstream, tmp_path_factory.mktemp("vad-mlx") / "fsmn-vad-mlx")
    with HubServer() as hub:
        first = hub.seed(REPO, {**files_of(tiny_f32), **CARD_FILES})
        hub.seed("FunAudioLLM/Fun-ASR-Nano-2512", files_of(tiny_upstream))
        hub.seed("someone/whisper-tiny", {"config.json": b'{"model_type": "whisper"}', "model.safetensors": b"x" * 64})
        hub.seed(VAD_REPO, files_of(vad))
        yield hub, first


@pytest.fixture(scope="module")
def wav(tmp_path_factory, clips) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(str(path), clips["1s"], 16000)
    return path


@pytest.fixture(scope="module")
def expected(tiny_model, wav):
    model, tokenizer = tiny_model
    return transcribe(model, tokenizer, wav, max_new_tokens=int(TOKENS))


def cached_files(home: Path, repo: str) -> set[str]:
    """The files of every cached snapshot of `repo` under HF_HOME `home`."""
    snapshots = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    return {name for snapshot in snapshots.glob("*") for name in files_of(snapshot)}


def transcribed(done) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_transcribe_by_repo_id_fetches_only_the_model_and_then_works_offline(served, wav, expected, tmp_path):
    hub, _ = served
    home = tmp_path / "hf-home"
    env = hub.client_env(home)
    args = ("transcribe", REPO, wav, "--format", "json", "--max-new-tokens", TOKENS)
    assert transcribed(run_cli(*args, env=env))["token_ids"] == expected.token_ids
    cached = cached_files(home, REPO)
    assert (
        "model.safetensors" in cached and "config.json" in cached and any(n.startswith("Qwen3-0.6B/") for n in cached)
    )
    assert not cached & CARD_FILES.keys()

    requests = len(hub.requests)
    offline = run_cli(*args, env={**env, "HF_HUB_OFFLINE": "1"})
    assert transcribed(offline)["token_ids"] == expected.token_ids
    assert len(hub.requests) == requests  # nothing asked of the hub


def test_revision_pins_the_commit(served, wav, expected, tiny_f32, tmp_path):
    hub, first = served
    broken = hub.seed(REPO, {"model.safetensors": b"\0" * 128}, message="a bad upload")
    try:
        env = hub.client_env(tmp_path / "hf-home")
        pinned = run_cli(
            "transcribe", REPO, wav, "--format", "json", "--max-new-tokens", TOKENS, "--revision", first, env=env
        )
        assert transcribed(pinned)["token_ids"] == expected.token_ids
        assert_user_error(run_cli("transcribe", REPO, wav, env=env), "cannot load the model")
        assert_user_error(run_cli("transcribe", REPO, wav, "--revision", "0" * 40, env=env), f"{REPO}@{'0' * 40}")
    finally:  # later tests read `main`: restore the good weights on top of the bad commit
        assert hub.commits(REPO)[0] == broken
        hub.seed(REPO, {"model.safetensors": tiny_f32 / "model.safetensors"}, message="fix")


@pytest.mark.parametrize(
    "repo, fragment",
    [
        ("FunAudioLLM/Fun-ASR-Nano-2512", "is not a converted Fun-ASR-Nano model"),  # upstream: convert it first
        ("someone/whisper-tiny", "is not a converted Fun-ASR-Nano model"),
        ("nobody/nothing", "cannot download nobody/nothing@main"),
    ],
)
def test_a_repo_that_is_not_a_model_is_refused_and_not_cached(served, wav, repo, fragment, tmp_path):
    hub, _ = served
    home = tmp_path / "hf-home"
    assert_user_error(run_cli("transcribe", repo, wav, env=hub.client_env(home)), fragment)
    assert cached_files(home, repo) <= {"config.json"}  # nothing a later load could take for a model


def test_a_local_path_that_does_not_exist_is_not_sent_to_the_hub(served, wav, tmp_path):
    hub, _ = served
    done = run_cli("transcribe", tmp_path / "no-model", wav, env=hub.client_env(tmp_path / "hf-home"))
    assert_user_error(done, "is not a converted Fun-ASR-Nano model")


def test_evaluate_and_vad_by_repo_id(served, tiny_f32, tmp_path):
    from funasr_nano_mlx.vad import load_vad
    from tests.helpers import local_set

    hub, _ = served
    env = hub.client_env(tmp_path / "hf-home")
    evalset = local_set(tmp_path / "set")
    report = tmp_path / "report"
    done = run_cli("evaluate", REPO, "--set", evalset, "--report", report, "--max-new-tokens", TOKENS, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((report / "eval.json").read_text())["sets"]["set"]["utterances"] == 2

    wav = next(evalset.glob("*.wav"))
    by_name = run_cli(
        "transcribe", tiny_f32, wav, "--vad", VAD_REPO, "--format", "json", "--max-new-tokens", "2", env=env
    )
    vad_dir = next((tmp_path / "hf-home" / "hub").glob("models--*fsmn-vad-tiny/snapshots/*"))
    model, tokenizer = load(tiny_f32)
    local = transcribe(model, tokenizer, wav, segmenter=load_vad(vad_dir), max_new_tokens=2)
    assert [(s["start"], s["end"]) for s in transcribed(by_name)["segments"]] == [
        (s.start, s.end) for s in local.segments
    ]
    assert_user_error(run_cli("transcribe", tiny_f32, wav, "--vad", REPO, env=env), "is not a converted FSMN-VAD model")
