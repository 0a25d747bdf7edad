"""`funasr-nano-mlx publish` against the fake hub (tests/hub_server.py): a byte-identical round trip with
verification, dry runs, unchanged re-publishing, a failed upload, tampering, and what blocks publishing.
huggingface_hub runs only in the CLI subprocesses (`hub.client_env`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from funasr_nano_mlx.card import CARD, EVAL_JSON_NAME, render, write_card
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.publish import check
from tests.hub_server import HubServer
from tests.helpers import PUBLISH_REPO, assert_user_error, run_cli, worst_delta

REPO = PUBLISH_REPO


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def carded(carded_model, tmp_path):
    return Path(shutil.copytree(carded_model, tmp_path / "model"))


def publish(hub: HubServer, home: Path, model: Path, *extra: str):
    return run_cli("publish", model, "--repo", REPO, *extra, env=hub.client_env(home))


def local(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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


def test_an_edited_or_stale_card_blocks_publishing(hub, carded, tmp_path):
    card = carded / CARD
    card.write_text(card.read_text().replace("## Limitations", "## Limitations\n\n- None at all."))
    assert_user_error(publish(hub, tmp_path / "hf", carded), "it was edited, or is stale")
    write_card(carded, repo_id="tester/another-name")  # a card for another repo (its usage names that one)
    assert_user_error(publish(hub, tmp_path / "hf", carded), f"renders now from {carded} for {REPO}")
    assert not hub.repos


def test_a_delta_outside_the_acceptance_bound_blocks_publishing(hub, four_bit, tmp_path):
    """A card written without the check (an older version, by hand) still cannot be published."""
    model, report = four_bit
    target = tmp_path / "model"
    shutil.copytree(model, target)
    shutil.copy2(report / EVAL_JSON_NAME, target / EVAL_JSON_NAME)
    (target / CARD).write_text(render(target, check_report_of(target), repo_id=REPO), encoding="utf-8")
    name, metric, delta = worst_delta(report)
    assert delta > 0.5, "the tiny 4-bit variant is within 4bit-llm's bound: this test needs one outside it"
    done = publish(hub, tmp_path / "hf", target)
    assert_user_error(done, f"acceptance: set {name} {metric} is {delta:+.2f} points against tiny-bfloat16")
    assert "bound of 0.5 points" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not hub.repos


def check_report_of(model: Path) -> dict:
    from funasr_nano_mlx.card import check_report

    return check_report(model, model / EVAL_JSON_NAME)
