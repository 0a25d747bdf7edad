"""Hub faults, injected through the fake hub (tests/hub_server.py): a failing upload (an LFS PUT, no
credentials), a failing verification download, a failing download of a model by
name or of an evaluation set (5xx, 429), a refused connection and a hub that never answers. Each ends
in one `error:` line that says what to do, with no traceback and none of huggingface_hub's retry logs
(at most one progress line), and a re-run once the fault clears completes without redoing what was
done. Repo ids the hub would refuse are refused before anything is sent.

huggingface_hub reads HF_ENDPOINT when imported, so every run against the fake hub is a fresh
interpreter (run_cli). One retry after 1 s and a 1 s timeout keep the faults fast."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import soundfile as sf

from funasr_nano_mlx.hub import RETRIES_VARIABLE, TIMEOUT_VARIABLE
from funasr_nano_mlx.packaged import RECIPES_DIR
from tests.helpers import PUBLISH_REPO, assert_user_error, files_of, invoke_cli, run_cli
from tests.hub_server import HubServer, dead_endpoint, silent_endpoint

REPO = PUBLISH_REPO
FAST = {RETRIES_VARIABLE: "1", TIMEOUT_VARIABLE: "1"}
NO_RETRY = {RETRIES_VARIABLE: "0"}  # where waiting is the fault: a retry would only wait again
WEIGHTS_GET = r"/resolve/[0-9a-f]{40}/model\.safetensors$"  # a download of the weights (not their index)
TOP_CONFIG_GET = re.compile(r"/resolve/[^/]+/config\.json$")  # the model's, not its tokenizer's
RETRY_LOG = re.compile(r"Retrying in|thrown while requesting|Retry \d+/\d+|Rate limited")


def env(hub: HubServer, home: Path, **extra) -> dict:
    return {**hub.client_env(home), **FAST, **extra}


def assert_one_line_fault(done, fragment: str) -> None:
    """Exit 2, one `error:` line last, no traceback, no retry log (a progress line may come first), and
    advice: what to do."""
    assert_user_error(done, fragment)
    assert re.search(r"a re-run resumes|log in|permission|check the", done.stderr), done.stderr
    assert not RETRY_LOG.search(done.stderr), done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr


def lfs_puts(hub: HubServer, since: int = 0) -> list[str]:
    return [r.rsplit("/", 1)[1] for r in hub.requests[since:] if r.startswith("PUT /lfs-upload/")]


# -- publish: the upload and its verification ----------------------------------------------------------


def oid(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_during(fault: str, hub: HubServer, home: Path, model: Path):
    """`publish MODEL` while `fault` lasts: an injected answer (for the first try and its retry), no
    token at all, or a hub that never answers (API calls and uploads have no timeout of their own)."""
    args = ("publish", model, "--repo", REPO)
    if fault == "no-token-401":
        return run_cli(*args, env={**hub.client_env(home, token=None), **FAST})
    if fault == "silent":
        with silent_endpoint() as url:
            return run_cli(*args, env=env(hub, home, HF_ENDPOINT=url, **NO_RETRY))
    method, pattern, status = {
        # one LFS file's PUT (huggingface_hub wraps its failure in RuntimeError); the other gets through
        "lfs-put-503": ("PUT", f"/lfs-upload/{oid(model / 'model.safetensors')}", 503),
        "verify-download-503": ("GET", WEIGHTS_GET, 503),
    }[fault]
    hub.fail_next(method, pattern, status, count=2)
    return run_cli(*args, env=env(hub, home))


@pytest.mark.parametrize(
    "fault, fragment",
    [
        ("lfs-put-503", f"cannot upload to {REPO}: the hub answered 503 Service Unavailable (model.safetensors)"),
        ("no-token-401", f"cannot upload to {REPO}: the hub answered 401 Unauthorized"),
        ("silent", f"cannot upload to {REPO}: the hub did not answer within 1 s"),
        ("verify-download-503", "to verify it: the hub answered 503 Service Unavailable"),
    ],
)
def test_a_publish_fault_is_one_line_and_a_rerun_resumes(carded_model, fault, fragment, tmp_path):
    with HubServer() as hub:
        home = tmp_path / "hf"
        failed = publish_during(fault, hub, home, carded_model)
        assert_one_line_fault(failed, fragment)
        commits, received = len(hub.commits(REPO)) if REPO in hub.repos else 0, set(lfs_puts(hub))

        hub.clear_failures()  # a download is not retried on 5xx: one of the two may be left
        seen = len(hub.requests)
        done = run_cli("publish", carded_model, "--repo", REPO, env=env(hub, home))
        assert done.returncode == 0, done.stderr
        served = hub.files(REPO)
        served.pop(".gitattributes")
        assert served == {name: path.read_bytes() for name, path in files_of(carded_model).items()}
        assert len(hub.commits(REPO)) == 2  # create_repo's, and the upload's (once)
        sent_again = lfs_puts(hub, seen)
        if fault == "verify-download-503":  # the upload was complete: the re-run only verifies
            assert commits == 2 and sent_again == []
        if fault == "lfs-put-503":  # the file the hub received is not sent again; the failed one is
            assert received == {
                oid(carded_model / "model.safetensors"),
                oid(carded_model / "Qwen3-0.6B" / "tokenizer.json"),
            }
            assert sent_again == [oid(carded_model / "model.safetensors")]


# -- a model by name ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wav(tmp_path_factory, clips) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(str(path), clips["1s"], 16000)
    return path


@pytest.mark.parametrize(
    "fault, fragment",
    [
        ("weights-503", "the hub answered 503 Service Unavailable (model.safetensors)"),
        ("repo-info-429", "the hub answered 429 Too Many Requests"),
        ("refused", "cannot reach the hub at http://127.0.0.1:"),
        ("silent", "the hub did not answer within 1 s"),
    ],
)
def test_a_download_fault_is_one_line_and_a_rerun_resumes(tiny_f32, wav, fault, fragment, tmp_path):
    args = ("transcribe", REPO, wav, "--max-new-tokens", "2")
    with HubServer() as hub:
        hub.seed(REPO, files_of(tiny_f32))
        home = tmp_path / "hf"
        if fault == "refused":
            with dead_endpoint() as url:
                failed = run_cli(*args, env=env(hub, home, HF_ENDPOINT=url))
        elif fault == "silent":
            with silent_endpoint() as url:
                failed = run_cli(*args, env=env(hub, home, HF_ENDPOINT=url, **NO_RETRY))
        else:
            hub.fail_next("GET", *{"weights-503": (WEIGHTS_GET, 503), "repo-info-429": ("/api/models/", 429)}[fault], 2)
            failed = run_cli(*args, env=env(hub, home))
        assert_one_line_fault(failed, f"cannot download {REPO}@")
        assert fragment in failed.stderr and "a re-run resumes" in failed.stderr
        configs = [r for r in hub.requests if r.startswith("GET") and TOP_CONFIG_GET.search(r)]

        hub.clear_failures()  # a download is not retried on 5xx: one of the two may be left
        seen = len(hub.requests)
        done = run_cli(*args, env=env(hub, home))
        assert done.returncode == 0, done.stderr
        again = [r for r in hub.requests[seen:] if r.startswith("GET") and TOP_CONFIG_GET.search(r)]
        assert len(configs) + len(again) == 1  # fetched once: before the fault if it got so far, else now


# -- an evaluation set streamed through `datasets` -----------------------------------------------------


def test_a_fault_while_streaming_a_set_is_one_line_and_a_rerun_completes(tiny_f32, tmp_path):
    from funasr_nano_mlx.evalsets import EvalSet
    from tests.hub_datasets import ROWS, data_file, seed_eval_sets

    name = "librispeech-test-clean"
    with HubServer() as hub:
        seed_eval_sets(hub, [name])
        args = ("evaluate", tiny_f32, "--set", name, "--limit", ROWS, "--max-new-tokens", "2")
        hub.fail_next("GET", data_file(EvalSet.load(name)), 503, count=50)  # however often asked
        failed = run_cli(*args, "--report", tmp_path / "failed", env=env(hub, tmp_path / "hf"))
        assert_one_line_fault(failed, f"set {name}: cannot open dataset ")
        assert "the hub answered 503 Service Unavailable" in failed.stderr and not (tmp_path / "failed").exists()
        hub.clear_failures()
        done = run_cli(*args, "--report", tmp_path / "report", env=env(hub, tmp_path / "hf"))
        assert done.returncode == 0, done.stderr


# -- repo ids the hub refuses: one line before anything is sent -----------------------------------------


def test_repo_ids_the_hub_refuses_are_refused_before_any_request(carded_model, wav, tmp_path):
    def recipe(old: str, new: str) -> Path:
        """The shipped bf16 recipe with one edit, as a file of its own."""
        text = (RECIPES_DIR / "bf16.yaml").read_text()
        assert old in text
        path = tmp_path / f"edited-{len(list(tmp_path.glob('edited-*')))}.yaml"
        path.write_text(text.replace(old, new, 1))
        return path

    long_name = "org/" + "n" * 97
    for args, fragment in [
        (("publish", carded_model, "--repo", "../.."), "--repo '../..': a hub repo id may not contain '--' or '..'"),
        (("publish", carded_model, "--repo", "org/"), "--repo 'org/': expected ORG/NAME"),
        (("publish", carded_model, "--repo", "组织/模型"), "a hub repo id has only ASCII letters"),
        (("transcribe", "org/na--me", wav), "'org/na--me': a hub repo id may not contain '--' or '..'"),
        (("transcribe", long_name, wav), "ORG and NAME are at most 96 characters each"),
        (("transcribe", carded_model, wav, "--vad", "org/vad.git"), "'org/vad.git': a hub repo id may not end in .git"),
        (("convert", "org/-name", tmp_path / "out"), "'org/-name': a hub repo id has only ASCII letters"),
        (("run", "bf16", "--work", tmp_path / "w", "--repo", "a/b/c"), "--repo 'a/b/c': expected ORG/NAME"),
        (("run", recipe("target: mlx-community/", "target: ../../"), "--work", tmp_path / "w"), "target: '../../"),
        (("run", recipe("repo: FunAudioLLM/", "repo: Fun--Audio/"), "--work", tmp_path / "w"), "repo: 'Fun--Audio/"),
    ]:
        assert_user_error(invoke_cli(*args), fragment, alone=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
