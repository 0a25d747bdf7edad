"""Every shipped evaluation set, streamed through `datasets` at its pinned commit from the fake hub
(tests/hub_datasets.py lays the repos out), scored end to end with the tiny model, its SHA-256 pins
checked; and the refusals: a pinned file whose hash differs, a set with no pin.

huggingface_hub and datasets read HF_ENDPOINT when imported, so the evaluations run in a fresh
interpreter (the CLI) with the server's environment, as in tests/test_hub_server.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.evalsets import EvalSet, check_sets
from funasr_nano_mlx.evaluate import HYPOTHESES
from funasr_nano_mlx.packaged import EVAL_SETS_DIR
from funasr_nano_mlx.hub import COMMIT
from tests.hub_datasets import ROWS, data_file, seed_eval_sets
from tests.hub_server import HubServer

MAX_NEW_TOKENS = 4  # random weights: the machinery is under test, not the transcripts
SHIPPED = sorted(p.stem for p in EVAL_SETS_DIR.glob("*.yaml"))
UNPINNED = ["fleurs-pl"]  # no public pin known: refused, never read
PINNED = [name for name in SHIPPED if name not in UNPINNED]
CLEAN = "librispeech-test-clean"


def evaluate_cli(hub: HubServer, home: Path, model: Path, sets: list[str], report: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "funasr_nano_mlx",
        "evaluate",
        str(model),
        *(f"--set={s}" for s in sets),
        "--report",
        str(report),
        "--limit",
        str(ROWS),
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
    ]
    return subprocess.run(command, env=hub.client_env(home), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def served():
    """One fake hub holding the repos of every pinned shipped set, and the rows it serves per set."""
    with HubServer() as hub:
        yield hub, seed_eval_sets(hub, PINNED)


def test_every_pinned_set_streams_at_its_commit_and_is_scored(served, tiny_f32, tmp_path):
    hub, rows = served
    seen = len(hub.requests)
    proc = evaluate_cli(hub, tmp_path / "hf-home", tiny_f32, PINNED, tmp_path / "report")
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    scored = [json.loads(line) for line in (tmp_path / "report" / HYPOTHESES).read_text().splitlines()]
    requests = hub.requests[seen:]
    for name in PINNED:
        evalset = EvalSet.load(name)
        data = report["sets"][name]
        assert data["rows"] == data["utterances"] == ROWS and data["skipped"] == [], (name, data["skipped"])
        metric = "cer" if evalset.language in ("zh", "ja") else "wer"
        assert list(data["scores"]) == [metric] and data["scores"][metric]["reference_tokens"] > 0
        # The references are the definition's column of the rows served (FLEURS: the written sentence).
        references = [r["reference"] for r in scored if r["set"] == name]
        assert references == [row[evalset.text_column] for row in rows[name]], name
        if evalset.dataset == "google/fleurs":  # as written, not FLEURS' lower-case unpunctuated `transcription`
            assert references != [row["transcription"] for row in rows[name]], name
        # Every file came from the pinned commit; a pinned file's hash was asked before it was read.
        resolved = [r for r in requests if f"/datasets/{evalset.dataset}/resolve/" in r and data_file(evalset) in r]
        assert resolved and all(f"/resolve/{evalset.revision}/" in r for r in resolved), name
        if evalset.sha256:
            asked = requests.index(f"POST /api/datasets/{evalset.dataset}/paths-info/{evalset.revision}")
            assert asked < requests.index(resolved[0]), name
        assert data["definition"]["revision"] == evalset.revision
    assert not [r for r in requests if "/resolve/main/" in r or "/revision/main" in r]  # never a branch


def test_a_pinned_file_with_another_sha256_is_refused(tiny_f32, tmp_path):
    other = "0" * 64
    with HubServer() as hub:
        absent = evaluate_cli(hub, tmp_path / "hf-home", tiny_f32, [CLEAN], tmp_path / "report")
        seed_eval_sets(hub, [CLEAN], declared={data_file(EvalSet.load(CLEAN)): other})
        proc = evaluate_cli(hub, tmp_path / "hf-home", tiny_f32, [CLEAN], tmp_path / "report")
        assert not [r for r in hub.requests if "/resolve/" in r]  # refused before any byte of data is read
    assert proc.returncode == absent.returncode == 2 and not (tmp_path / "report").exists()
    (line,) = proc.stderr.strip().splitlines()
    pinned = EvalSet.load(CLEAN).sha256[data_file(EvalSet.load(CLEAN))]
    assert f"its SHA-256 is {other}, the definition pins {pinned}" in line and line.startswith(f"error: set {CLEAN}: ")
    (line,) = absent.stderr.strip().splitlines()  # no such repo on the hub: one line too
    assert line.startswith(f"error: set {CLEAN}: cannot check the SHA-256 of its files: ") and "Not Found" in line


def test_shipped_sets_are_pinned_except_the_known_unpinned():
    for name in SHIPPED:
        evalset = EvalSet.load(name)
        assert (COMMIT.fullmatch(evalset.revision or "") is not None) == (name not in UNPINNED), name
    with pytest.raises(UserError, match="set fleurs-pl: dataset google/fleurs files .* is not pinned to a commit"):
        check_sets(["fleurs-pl"])


# -- SHA-256 pins on a local dataset folder (no hub: the files are hashed) ------------------------------


def local_pinned_set(tmp_path: Path, digest: str) -> Path:
    from tests.helpers import hub_style_dataset

    repo = hub_style_dataset(tmp_path / "repo")
    definition = (
        f"dataset: {repo}\ndata_files: data/test-00000-of-00001.parquet\ntext_column: sentence\n"
        f"language: en\nsha256:\n  data/test-00000-of-00001.parquet: {digest}\n"
    )
    (tmp_path / "pinned.yaml").write_text(definition)
    return tmp_path / "pinned.yaml"


def test_local_pinned_file_is_hashed(tmp_path):
    from funasr_nano_mlx.files import sha256
    from funasr_nano_mlx.evalsets import open_set

    definition = local_pinned_set(tmp_path, "a" * 64)
    with pytest.raises(UserError, match=r"set pinned: data/test-00000-of-00001.parquet in .*repo: its SHA-256 is "):
        open_set(EvalSet.load(definition))
    actual = sha256(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet")
    definition.write_text(definition.read_text().replace("a" * 64, actual))
    items = list(open_set(EvalSet.load(definition)))
    assert [item.reference for item in items][:1] == ["Good morning!"] and len(items) == 4


@pytest.mark.parametrize(
    "pins, message",
    [
        ("sha256:\n  data/other.parquet: " + "a" * 64, "data/other.parquet is not a file this set reads"),
        (
            "sha256:\n  data/x.parquet: ABC",
            r"expected 64 lower-case hex digits \(quoted if all are digits\), found 'ABC'",
        ),
        ("sha256:\n  data/x.parquet: " + "1" * 64, "found 1111"),  # YAML reads it as a number
        ("sha256: abc", "sha256: expected dict, found 'abc'"),
        ("data_files: data/*.csv", r"data_files: 'data/\*.csv' names no .parquet files"),
    ],
)
def test_sha256_pins_and_data_files_are_checked_when_the_definition_is_read(tmp_path, pins, message):
    files = "" if "data_files" in pins else "data_files: data/x.parquet\n"
    (tmp_path / "set.yaml").write_text(f"dataset: a/b\nrevision: {'f' * 40}\n{files}{pins}\n")
    with pytest.raises(UserError, match=message):
        EvalSet.load(tmp_path / "set.yaml")
