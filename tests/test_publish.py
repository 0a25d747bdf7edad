"""`funasr-nano-mlx publish` against the fake hub (tests/hub_server.py): a byte-identical round trip with
verification, dry runs, unchanged re-publishing, a failed upload, tampering, and what blocks publishing.
huggingface_hub runs only in the CLI subprocesses (`hub.client_env`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from funasr_nano_mlx.card import write_card
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.publish import check
from tests.hub_server import HubServer
from tests.test_card import cli, evaluated  # noqa: F401  (a fixture)

REPO = "tester/fun-asr-nano-tiny"


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def carded_once(evaluated, tmp_path_factory):  # noqa: F811
    model, report = evaluated
    target = tmp_path_factory.mktemp("carded") / "model"
    shutil.copytree(model, target)
    write_card(target, report_dir=report)
    return target


@pytest.fixture
def carded(carded_once, tmp_path):
    return Path(shutil.copytree(carded_once, tmp_path / "model"))


def publish(hub: HubServer, home: Path, model: Path, *extra: str):
    return cli("publish", model, "--repo", REPO, *extra, env=hub.client_env(home))


def local(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_user_error(done, fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and fragment in lines[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_round_trip_is_byte_identical_and_unchanged_republish_adds_no_commit(hub, carded, tmp_path):
    done = publish(hub, tmp_path / "hf", carded)
    assert done.returncode == 0, done.stderr
    commits = hub.commits(REPO)
    head = commits[0]
    assert done.stdout.strip().splitlines()[-1].endswith(head)  # the commit URL
    served = hub.files(REPO)
    served.pop(".gitattributes", None)
    assert served == local(carded)
    assert "recipe" in hub.repos[REPO].commits[-1].title and "funasr-nano-mlx" in hub.repos[REPO].commits[-1].title
    assert "hf_fake_test_token" not in done.stdout + done.stderr

    again = publish(hub, tmp_path / "hf2", carded)
    assert again.returncode == 0, again.stderr
    assert hub.commits(REPO) == commits


def test_dry_run_uploads_nothing(hub, carded, tmp_path):
    done = publish(hub, tmp_path / "hf", carded, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "model.safetensors" in done.stdout and "README.md" in done.stdout and "dry run" in done.stdout
    assert REPO not in hub.repos
    assert not [r for r in hub.requests if not r.startswith("GET")]


def test_a_server_error_mid_upload_is_one_line_and_a_rerun_succeeds(hub, carded, tmp_path):
    hub.fail_next("POST", "/commit/", 500)
    failed = publish(hub, tmp_path / "hf", carded)
    assert_user_error(failed, "upload to")
    assert len(hub.commits(REPO)) == 1  # only create_repo's .gitattributes commit
    done = publish(hub, tmp_path / "hf", carded)
    assert done.returncode == 0, done.stderr
    assert len(hub.commits(REPO)) == 2


def test_verification_catches_a_file_changed_on_the_server(hub, carded, tmp_path):
    assert publish(hub, tmp_path / "hf", carded).returncode == 0
    original = (carded / "config.json").read_bytes()
    hub.tamper(REPO, "config.json", original.replace(b"float32", b"float33"))
    done = publish(hub, tmp_path / "hf2", carded)
    assert_user_error(done, "verification failed")
    assert "config.json" in done.stderr


def test_missing_or_stale_eval_json_blocks_publishing(hub, carded, tmp_path):
    stale = tmp_path / "stale"
    shutil.copytree(carded, stale)
    later = (stale / "eval.json").stat().st_mtime + 10
    os.utime(stale / "model.safetensors", (later, later))
    assert_user_error(publish(hub, tmp_path / "hf", stale), "older than")

    (carded / "eval.json").unlink()
    with pytest.raises(UserError, match="no evaluation report"):
        check(carded)
    assert not hub.repos


def test_a_directory_that_does_not_load_is_refused(hub, carded, tmp_path):
    (carded / "model.safetensors").write_bytes(b"not weights")
    assert_user_error(publish(hub, tmp_path / "hf", carded), "cannot load")
    assert not hub.repos
