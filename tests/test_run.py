"""`funasr-nano-mlx run` and the Makefile stages, end to end against a local fake hub.

The tiny reference checkpoint is served under the upstream repo ids by tests/hub_server.py; the CLI runs
in subprocesses whose huggingface_hub points there (`client_env`). Recipes keep their repo id and are
given the server's commit (--revision) and the tiny model.pt's SHA-256 (--sha256). Recipes are evaluated
here on a small espeak-ng set (--set) and published to the same fake hub; the shipped hub sets, pinned,
are streamed from the fake hub in tests/test_hub_sets.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from funasr_nano_mlx.files import sha256
from funasr_nano_mlx.quantize import quantize
from funasr_nano_mlx.pipeline import PUBLISH_RECORD, Options, run
from funasr_nano_mlx.recipe import STAGES, Recipe
from tests.hub_server import HubServer, dead_endpoint
from tests.helpers import SHIPPED_RECIPES
from tests.helpers import assert_user_error, files_of, local_set
from tests.modelscope_server import ModelScopeServer, client_env

REPO_ROOT = Path(__file__).resolve().parent.parent
# The recipes downloaded from Hugging Face, served here by the fake hub; the ModelScope ones are built
# from a local directory (test_the_timestamp_recipes_build_from_a_modelscope_download) and downloaded
# from a fake ModelScope hub (tests/modelscope_server.py).
SHIPPED = [name for name in SHIPPED_RECIPES if Recipe.load(name).hub == "huggingface"]
BUILD = STAGES[: STAGES.index("quantize") + 1]  # what every shipped recipe builds here (until=quantize)
TOKENS = "8"  # new tokens per utterance: random weights rarely stop by themselves
# A hard kill in the middle of the quantize stage: the weights are in quantize.PID.tmp, config.json is not.
KILLED_IN_QUANTIZE = """
import os, signal, sys
import funasr_nano_mlx.quantize
funasr_nano_mlx.quantize.save_config = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from funasr_nano_mlx.cli import main
main(sys.argv[1:], prog_name="funasr-nano-mlx")
"""


@pytest.fixture(scope="module")
def hub(tiny_upstream):
    """The tiny checkpoint as commit `rev` of both upstream repos."""
    with HubServer() as server:
        revisions = {
            repo: server.seed(repo, files_of(tiny_upstream))
            for repo in ("FunAudioLLM/Fun-ASR-Nano-2512", "FunAudioLLM/Fun-ASR-MLT-Nano-2512")
        }
        yield server, revisions


@pytest.fixture(scope="module")
def cli(hub, tmp_path_factory):
    """cli(*args, script=None, env=None) runs the CLI (or `script` with these args) wired to the fake hub
    (or with the environment `env`)."""
    server, _ = hub
    hub_env = server.client_env(tmp_path_factory.mktemp("hf-home"))

    def call(*args, script: str | None = None, env: dict | None = None):
        command = ["-c", script] if script else ["-m", "funasr_nano_mlx"]
        return subprocess.run(
            [sys.executable, *command, *map(str, args)],
            env=env or hub_env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return call


def pinned(hub, tiny_upstream, recipe: str) -> list[str]:
    """The override flags that make a shipped recipe build the served tiny checkpoint."""
    _, revisions = hub
    return ["--revision", revisions[Recipe.load(recipe).source], "--sha256", sha256(tiny_upstream / "model.pt")]


def stage_dirs(work: Path) -> list[str]:
    return sorted(p.relative_to(work).as_posix() for p in work.glob("*/*")) if work.exists() else []


@pytest.fixture(scope="module")
def built(hub, cli, tiny_upstream, tmp_path_factory):
    """Every shipped recipe, run up to quantize against the hub: name -> (work dir, completed process)."""
    work = tmp_path_factory.mktemp("work")
    runs = {
        name: cli("run", name, "--work", work, "--until", "quantize", *pinned(hub, tiny_upstream, name))
        for name in SHIPPED
    }
    return runs, work


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """A local set `speech` of two espeak-ng utterances (English, Mandarin)."""
    return local_set(tmp_path_factory.mktemp("sets") / "speech")


def weights(model_dir: Path) -> dict[str, mx.array]:
    return mx.load(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(wa[k].dtype == wb[k].dtype and mx.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_builds_from_the_hub(name, built, tiny_upstream, tiny_bf16, tmp_path):
    runs, work = built
    done = runs[name]
    assert done.returncode == 0, done.stderr
    out = work / name / "quantize"
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in (work / name).iterdir()) == sorted(BUILD)  # no .tmp or .stale left
    downloaded = work / name / "download"
    assert sorted(files_of(downloaded)) == sorted([*files_of(tiny_upstream), "source.json"])  # allow-patterns only
    conversion = json.loads((work / name / "convert" / "config.json").read_text())["conversion"]
    recipe = Recipe.load(name)
    assert conversion["source"] == f"{recipe.source}@{json.loads((downloaded / 'source.json').read_text())['revision']}"
    assert_same_weights(work / name / "convert", tiny_bf16)
    # The stage output is what quantizing the same conversion directly gives (test_quantize checks that).
    assert_same_weights(out, quantize(tiny_bf16, tmp_path / name, recipe))


def test_a_second_run_and_a_second_recipe_download_nothing(hub, cli, built, tiny_upstream):
    server, _ = hub
    _, work = built
    before = len(server.requests)
    again = cli("run", "4bit-llm", "--work", work, "--until", "quantize", *pinned(hub, tiny_upstream, "4bit-llm"))
    assert again.returncode == 0, again.stderr
    assert all(f"{stage}: up to date, skipped" in again.stderr for stage in BUILD)
    assert len(server.requests) == before  # not even a metadata request
    # Six recipes, two repos: model.pt was fetched once per repo (the Hugging Face cache is shared).
    fetched = [r for r in server.requests[:before] if r.startswith("GET ") and r.split("?")[0].endswith("/model.pt")]
    assert len(fetched) == 2, fetched


@pytest.fixture(scope="module")
def ctc_upstream(tmp_path_factory) -> Path:
    """The tiny checkpoint with the CTC head, laid out as `modelscope download` leaves the upstream repo."""
    from tests.reference import write_upstream_dir

    return write_upstream_dir(tmp_path_factory.mktemp("ctc") / "Fun-ASR-Nano-2512", "tiny", seed=0, with_ctc=True)


WITHOUT_MODELSCOPE = """
import sys
sys.modules["modelscope"] = None  # as where the optional client is not installed
from funasr_nano_mlx.cli import main
main(sys.argv[1:], prog_name="funasr-nano-mlx")
"""


def test_the_timestamp_recipes_build_from_a_modelscope_download(cli, ctc_upstream, tmp_path):
    """The ModelScope copy carries the CTC head. The timestamp recipes are built here from a local
    directory laid out as its download leaves one (`--source`); the download itself, through the real
    client, is tested against a fake ModelScope hub below. Without the client, the download stage says
    what to do in one line."""
    work = tmp_path / "work"
    blocked = cli("run", "bf16-timestamps", "--work", work, "--until", "download", script=WITHOUT_MODELSCOPE)
    assert_user_error(blocked, "is downloaded from ModelScope: install its client (pip install modelscope)")
    assert stage_dirs(work) == []
    for name in ("bf16-timestamps", "4bit-llm-timestamps"):
        local = ["--source", ctc_upstream]  # the pin by content stays: the local copy must match it
        assert_user_error(cli("run", name, "--work", work, "--until", "quantize", *local), "expects 81fec861")
        done = cli(
            "run", name, "--work", work, "--until", "quantize", *local, "--sha256", sha256(ctc_upstream / "model.pt")
        )
        assert done.returncode == 0, done.stderr
        config = json.loads((work / name / "quantize" / "config.json").read_text())
        assert config["timestamps"] is True and config["recipe"]["hub"] == "modelscope"
        assert (work / name / "quantize" / "multilingual.tiktoken").is_file()
        assert any(key.startswith("ctc_decoder.") for key in weights(work / name / "quantize"))


MODELSCOPE_REPO = "FunAudioLLM/Fun-ASR-Nano-2512"


@pytest.fixture
def modelscope(ctc_upstream):
    """The tiny checkpoint with the CTC head as `master` of the upstream repo on a fake ModelScope hub,
    beside a file that the recipes' patterns leave out (the real repo has a README.md and examples)."""
    with ModelScopeServer() as server:
        server.seed(MODELSCOPE_REPO, {**files_of(ctc_upstream), "README.md": b"# Fun-ASR-Nano-2512\n"})
        yield server


def test_the_timestamp_recipes_download_through_the_modelscope_client(cli, modelscope, ctc_upstream, tmp_path):
    """The real `modelscope` client fetches the files the patterns name from the fake hub; the recipe's
    pin by content refuses the tiny model.pt, its own SHA-256 is accepted from the client's cache, and
    a commit given with --revision is what the client asks for and the download stage records."""
    work, env = tmp_path / "work", modelscope.client_env(tmp_path / "modelscope")
    args = ["run", "bf16-timestamps", "--work", work, "--until", "download"]
    assert_user_error(cli(*args, env=env), "expects 81fec861")
    assert stage_dirs(work) == []
    upstream = files_of(ctc_upstream)
    assert sorted(modelscope.fetched()) == sorted(upstream)  # each once; not README.md

    before = len(modelscope.requests)
    done = cli(*args, "--sha256", sha256(ctc_upstream / "model.pt"), env=env)
    assert done.returncode == 0, done.stderr
    # The client lists the repo again and finds every file in its cache, by size and SHA-256.
    assert [r.split("?")[0] for r in modelscope.requests[before:]] == [
        f"GET /api/v1/models/{MODELSCOPE_REPO}/repo/files"
    ]
    downloaded = work / "bf16-timestamps" / "download"
    assert done.stdout.strip().splitlines()[-1] == str(downloaded)
    assert sorted(files_of(downloaded)) == sorted([*upstream, "source.json"])
    record = json.loads((downloaded / "source.json").read_text())
    assert record["files"] == {name: sha256(path) for name, path in upstream.items()}
    # master moves and the client's snapshot folder is named by it: no commit is known to record.
    assert (record["source"], record["revision"], record["commit"]) == (MODELSCOPE_REPO, "master", None)
    assert record["model_pt_sha256"] == sha256(ctc_upstream / "model.pt")

    before = len(modelscope.requests)
    again = cli(*args, "--sha256", sha256(ctc_upstream / "model.pt"), env=env)
    assert again.returncode == 0 and "download: up to date, skipped" in again.stderr, again.stderr
    assert len(modelscope.requests) == before

    # Pinned to a commit, the client asks for that commit (into another snapshot folder), and the
    # download stage, made again for another revision, records it.
    commit = modelscope.repos[MODELSCOPE_REPO][-1].sha
    pinned = cli(*args, "--revision", commit, "--sha256", sha256(ctc_upstream / "model.pt"), env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert all(f"Revision={commit}&" in r for r in modelscope.requests[before:] if "/models/" in r)
    assert sorted(modelscope.fetched()[len(upstream) :]) == sorted(upstream)
    record = json.loads((downloaded / "source.json").read_text())
    assert (record["revision"], record["commit"]) == (commit, commit)


def test_an_unreachable_modelscope_hub_is_one_line_and_leaves_no_stage_output(cli, tmp_path):
    """Every connection refused (the client tries the listing 4 times): one line, exit status 2."""
    work, args = tmp_path / "work", ["--until", "download"]
    with dead_endpoint() as url:
        done = cli("run", "bf16-timestamps", "--work", work, *args, env=client_env(url, tmp_path / "modelscope"))
    assert_user_error(done, f"cannot download {MODELSCOPE_REPO}@master from ModelScope: ")
    assert "Connection refused" in done.stderr and stage_dirs(work) == []
    assert done.stderr.endswith(": try again later; a re-run resumes\n")
    assert "WARNING" not in done.stderr  # the client's retries are one line, not one per attempt


def test_a_modelscope_hub_error_is_one_line_and_a_rerun_resumes(cli, modelscope, ctc_upstream, tmp_path):
    """model.pt answered 500 (the client tries it 6 times): one line, no stage output; once the hub
    answers again, a re-run fetches only model.pt, the other files being in the client's cache."""
    work, env = tmp_path / "work", modelscope.client_env(tmp_path / "modelscope")
    args = ["run", "bf16-timestamps", "--work", work, "--until", "download"]
    modelscope.fail_next(r"FilePath=model\.pt", 500, count=6)
    failed = cli(*args, "--sha256", sha256(ctc_upstream / "model.pt"), env=env)
    assert_user_error(failed, f"cannot download {MODELSCOPE_REPO}@master from ModelScope: ")
    assert "model.pt" in failed.stderr.splitlines()[-1] and stage_dirs(work) == []
    assert "WARNING" not in failed.stderr and "ERROR" not in failed.stderr, failed.stderr
    assert modelscope.fetched().count("model.pt") == 6

    before = len(modelscope.fetched())
    done = cli(*args, "--sha256", sha256(ctc_upstream / "model.pt"), env=env)
    assert done.returncode == 0, done.stderr
    assert modelscope.fetched()[before:] == ["model.pt"]
    assert stage_dirs(work) == ["bf16-timestamps/download"]


def test_a_file_the_modelscope_hub_lacks_is_one_line_and_not_retried(cli, modelscope, ctc_upstream, tmp_path):
    """A 404 is final: one request, one line, and no word of retrying."""
    work, env = tmp_path / "work", modelscope.client_env(tmp_path / "modelscope")
    modelscope.fail_next(r"FilePath=model\.pt", 404)
    failed = cli("run", "bf16-timestamps", "--work", work, "--until", "download", "--sha256", "0" * 64, env=env)
    assert_user_error(failed, f"cannot download {MODELSCOPE_REPO}@master from ModelScope: ")
    assert "retrying" not in failed.stderr and "ERROR" not in failed.stderr, failed.stderr
    assert modelscope.fetched().count("model.pt") == 1 and stage_dirs(work) == []


def test_an_unpinned_recipe_is_refused_before_any_request(hub, cli, tmp_path):
    server, _ = hub
    unpinned = tmp_path / "unpinned.yaml"
    unpinned.write_text(Recipe.load("mlt-bf16").file.read_text().replace("revision: main", "revision: null"))
    before = len(server.requests)
    assert_user_error(cli("run", unpinned, "--work", tmp_path / "work"), "is not pinned")
    assert len(server.requests) == before and not (tmp_path / "work").exists()


def test_a_token_budget_past_the_llm_is_refused_before_a_first_hub_download(hub, cli, tiny_upstream, speech, tmp_path):
    """On a first run from the hub the LLM's positions are read from its one small config file, not from
    the download stage: the budget is refused before gigabytes arrive."""
    server, _ = hub
    work, before = tmp_path / "work", len(server.requests)
    args = ["--work", work, *pinned(hub, tiny_upstream, "bf16"), "--set", speech, "--max-new-tokens", "100000"]
    assert_user_error(cli("run", "bf16", *args), "max_new_tokens must be in 1..", alone=True)
    paths = [r.split("?")[0] for r in server.requests[before:] if r.startswith("GET ")]
    assert not any(p.endswith("/model.pt") for p in paths) and not work.exists()  # (the config may be cached)


def test_a_pin_by_content_follows_main_records_its_commit_and_refuses_other_bytes(hub, cli, tiny_upstream, tmp_path):
    """The MLT recipes follow `main` with model.pt's SHA-256 (no public commit is known): the served
    tiny model.pt is not the real one and is refused before conversion; accepted under its own SHA-256,
    the commit that main resolved to is what the download and the conversion record."""
    _, revisions = hub
    work = tmp_path / "work"
    assert_user_error(
        cli("run", "mlt-bf16", "--work", work, "--until", "convert"),
        "but recipe mlt-bf16 expects f7ddbef5ff8c57254e6a045f0b316501b704fe2b774f962efc6e402364e8fe37",
    )
    assert stage_dirs(work) == []
    done = cli("run", "mlt-bf16", "--work", work, "--until", "convert", "--sha256", sha256(tiny_upstream / "model.pt"))
    assert done.returncode == 0, done.stderr
    commit = revisions["FunAudioLLM/Fun-ASR-MLT-Nano-2512"]
    record = json.loads((work / "mlt-bf16" / "download" / "source.json").read_text())
    assert (record["revision"], record["commit"]) == ("main", commit)
    config = json.loads((work / "mlt-bf16" / "convert" / "config.json").read_text())
    assert config["conversion"]["source"] == f"FunAudioLLM/Fun-ASR-MLT-Nano-2512@{commit}"


def test_a_wrong_sha256_leaves_no_stage_output(hub, cli, tmp_path):
    _, revisions = hub
    done = cli(
        "run",
        "bf16",
        "--work",
        tmp_path,
        "--until",
        "quantize",
        "--revision",
        revisions["FunAudioLLM/Fun-ASR-Nano-2512"],
        "--sha256",
        "0" * 64,
    )
    assert_user_error(done, "expects 0000")
    assert "nothing was converted" in done.stderr and stage_dirs(tmp_path) == []


def test_an_unknown_recipe_key_leaves_no_stage_output(hub, cli, tmp_path):
    _, revisions = hub
    lines = Recipe.load("bf16").file.read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if text.startswith("dtype:")) + 1
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("\n".join(lines[: line - 1] + ["dtyp: float32"] + lines[line - 1 :]))
    done = cli("run", recipe, "--work", tmp_path / "work", "--revision", revisions["FunAudioLLM/Fun-ASR-Nano-2512"])
    assert_user_error(done, f"{recipe}:{line}: dtyp: unknown key 'dtyp'")
    assert not (tmp_path / "work").exists()


def test_a_truncated_model_pt_leaves_no_stage_output(hub, cli, tiny_upstream, tmp_path):
    server, _ = hub
    files = files_of(tiny_upstream)
    truncated = (tiny_upstream / "model.pt").read_bytes()[:100_000]
    # Cut short on the wire (sizes and hashes describe the whole file): huggingface_hub notices.
    whole = server.seed("test/cut-in-transit", files)
    server.tamper("test/cut-in-transit", "model.pt", truncated)
    done = cli(
        "run",
        "bf16",
        "--work",
        tmp_path / "a",
        "--until",
        "quantize",
        "--source",
        "test/cut-in-transit",
        "--revision",
        whole,
    )
    assert_user_error(done, "cannot download test/cut-in-transit")
    assert stage_dirs(tmp_path / "a") == []
    # Truncated at the source, expected SHA-256 known: the download stage refuses it.
    cut = server.seed("test/cut-at-source", {**files, "model.pt": truncated})
    source = ["--until", "quantize", "--source", "test/cut-at-source", "--revision", cut]
    done = cli("run", "bf16", "--work", tmp_path / "b", *source, "--sha256", sha256(tiny_upstream / "model.pt"))
    assert_user_error(done, "has SHA-256")
    assert stage_dirs(tmp_path / "b") == []
    # No SHA-256 to check: conversion refuses it, and leaves nothing either.
    done = cli("run", "bf16", "--work", tmp_path / "c", *source)
    assert_user_error(done, "not a readable PyTorch checkpoint")
    assert stage_dirs(tmp_path / "c") == ["bf16/download"]  # the download itself is complete and verified as is


def make(
    *targets: str, work: Path, source: Path, venv: Path, run_args: str = "", env=None
) -> subprocess.CompletedProcess:
    """The repository's Makefile with this interpreter and a local source."""
    (venv / ".installed").parent.mkdir(parents=True, exist_ok=True)
    (venv / ".installed").touch()
    variables = [f"PY={sys.executable}", f"VENV={venv}", f"WORK={work}", f"RUN_ARGS=--source {source} {run_args}"]
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), *variables, *targets],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_an_interrupted_stage_is_not_done_and_a_rerun_completes(cli, tiny_upstream, tmp_path):
    work, venv = tmp_path / "work", tmp_path / "venv"
    args = ["run", "4bit-llm", "--work", work, "--source", tiny_upstream, "--until", "quantize"]
    killed = cli(*args, script=KILLED_IN_QUANTIZE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    *built, partial = stage_dirs(work)
    assert built == ["4bit-llm/convert", "4bit-llm/download"] and re.fullmatch(r"4bit-llm/quantize\.\d+\.tmp", partial)
    assert (work / partial / "model.safetensors").exists()  # half-written, under its partial name
    quantize_target = str(work / "4bit-llm/quantize")
    question = make("-q", quantize_target, work=work, source=tiny_upstream, venv=venv)
    assert question.returncode == 1, question.stderr  # Make: not up to date
    assert make("-q", str(work / "4bit-llm/convert"), work=work, source=tiny_upstream, venv=venv).returncode == 0

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "convert: up to date, skipped" in resumed.stderr and "quantize: building" in resumed.stderr
    assert stage_dirs(work) == [f"4bit-llm/{stage}" for stage in sorted(BUILD)]
    assert make("-q", quantize_target, work=work, source=tiny_upstream, venv=venv).returncode == 0
    direct = quantize(work / "4bit-llm/convert", tmp_path / "q", Recipe.load("4bit-llm"))
    assert_same_weights(work / "4bit-llm/quantize", direct)


def test_make_publish_goes_all_the_way_to_the_hub(hub, speech, tiny_upstream, tmp_path):
    server, _ = hub
    work, venv, repo = tmp_path / "work", tmp_path / "venv", "tester/made-by-make"
    env = server.client_env(tmp_path / "hf")
    args = f"--set {speech} --max-new-tokens {TOKENS} --repo {repo}"
    done = make("publish", "RECIPE=bf16", work=work, source=tiny_upstream, venv=venv, run_args=args, env=env)
    assert done.returncode == 0, done.stderr
    assert stage_dirs(work) == [f"bf16/{stage}" for stage in sorted(STAGES)]
    record = json.loads((work / "bf16/publish" / PUBLISH_RECORD).read_text())
    assert record["repo"] == repo and server.commits(repo)[0] == record["commit"]
    assert "this is the unquantized baseline of its source: no comparison" in done.stderr
    again = make("publish", "RECIPE=bf16", work=work, source=tiny_upstream, venv=venv, run_args=args, env=env)
    assert again.returncode == 0, again.stderr
    assert all(f"{stage}: up to date, skipped" in again.stderr for stage in STAGES)
    assert server.commits(repo)[0] == record["commit"]


def test_a_changed_recipe_rebuilds_its_stages(tiny_upstream, tmp_path):
    recipe_file = tmp_path / "mine.yaml"
    recipe_file.write_text(Recipe.load("bf16").file.read_text())
    recipe = Recipe.load(recipe_file).override(source=str(tiny_upstream))
    out = run(recipe, tmp_path / "work", until="convert")
    first = out.stat().st_mtime_ns
    assert run(recipe, tmp_path / "work", until="convert").stat().st_mtime_ns == first  # up to date
    os.utime(recipe_file, ns=(first + 10**9, first + 10**9))  # edited after the stages were built
    assert run(recipe, tmp_path / "work", until="convert").stat().st_mtime_ns > first
    assert stage_dirs(tmp_path / "work") == ["mine/convert", "mine/download"]
    # Another source for the same recipe is noticed by the download stage (source.json).
    moved = recipe.override(source=str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").symlink_to(tiny_upstream)
    before = (tmp_path / "work/mine/download").stat().st_mtime_ns
    run(moved, tmp_path / "work", until="download")
    assert (tmp_path / "work/mine/download").stat().st_mtime_ns > before


def test_conversion_trusts_the_download_stages_hash_of_model_pt(tiny_upstream, tmp_path, monkeypatch):
    """The download stage hashes model.pt as it copies it; the convert stage does not read it a second time
    to hash it (checked_checkpoint: its stamp is unchanged), and still converts what was verified."""
    import funasr_nano_mlx.convert as convert_module

    hashed = []
    monkeypatch.setattr(convert_module, "sha256", lambda path: hashed.append(path.name) or sha256(path))
    out = run(Recipe.load("bf16").override(source=str(tiny_upstream)), tmp_path / "work", until="convert")
    assert hashed == []
    assert json.loads((out / "config.json").read_text())["conversion"]["model_pt_sha256"] == sha256(
        tiny_upstream / "model.pt"
    )


def test_unpinned_evaluation_sets_are_refused_before_any_stage(cli, tiny_upstream, speech, tmp_path):
    """A hub set with no pinned revision: `run` says so in one line, building nothing."""
    unpinned = tmp_path / "unpinned.yaml"
    unpinned.write_text("dataset: some-org/some-set\nlanguage: en\n")
    done = cli("run", "bf16", "--work", tmp_path / "work", "--source", tiny_upstream, "--set", unpinned)
    assert_user_error(done, "set unpinned: dataset some-org/some-set split test is not pinned")
    assert stage_dirs(tmp_path / "work") == []
    assert_user_error(
        cli("run", "bf16", "--work", tmp_path / "work", "--source", tiny_upstream, "--set", tmp_path / "nowhere"),
        "no evaluation set",
    )
    assert_user_error(
        cli(
            "run", "bf16", "--work", tmp_path / "work", "--source", tiny_upstream, "--set", speech, "--repo", "no-slash"
        ),
        "--repo 'no-slash': expected ORG/NAME",
    )
    assert stage_dirs(tmp_path / "work") == []


def test_the_evaluate_stage_builds_its_baseline_first_and_reuses_what_agrees(tiny_upstream, speech, tmp_path, capfd):
    work, sets = tmp_path / "work", (str(speech),)
    four_bit = Recipe.load("4bit-llm").override(source=str(tiny_upstream))
    bf16 = Recipe.load("bf16").override(source=str(tiny_upstream))

    def built(recipe, tokens) -> tuple[str, dict[str, int]]:
        run(recipe, work, "evaluate", Options(sets=sets, max_new_tokens=tokens))
        times = {d: (work / d).stat().st_mtime_ns for d in stage_dirs(work)}
        return capfd.readouterr().err, times

    log, first = built(four_bit, 8)
    assert sorted(first) == sorted(f"{r}/{s}" for r in ("4bit-llm", "bf16") for s in BUILD + ("evaluate",))
    assert log.index("[bf16] evaluate: building") < log.index("[4bit-llm] evaluate: building")
    report = json.loads((work / "4bit-llm/evaluate/eval.json").read_text())
    assert report["baseline"]["path"] == str(work / "bf16/evaluate") and report["sets"]["speech"]["comparison"]
    assert json.loads((work / "bf16/evaluate/eval.json").read_text())["baseline"] is None

    log, again = built(four_bit, 8)
    assert again == first and log.count("up to date, skipped") == 8
    log, same_for_bf16 = built(bf16, 8)  # the baseline's own run finds its stages built
    assert same_for_bf16 == first and "building" not in log

    log, fewer_tokens = built(four_bit, 4)  # another request: both reports are made again, nothing else
    assert [d for d in first if fewer_tokens[d] != first[d]] == ["4bit-llm/evaluate", "bf16/evaluate"]
    assert json.loads((work / "4bit-llm/evaluate/eval.json").read_text())["settings"]["max_new_tokens"] == 4


def recipe_with_bound(folder: Path, name: str, bound: float) -> Path:
    """4bit-llm under another name, with another acceptance bound."""
    text = Recipe.load("4bit-llm").file.read_text()
    assert "acceptance: {max_error_rate_delta: 0.5}" in text
    file = folder / f"{name}.yaml"
    file.write_text(
        text.replace("acceptance: {max_error_rate_delta: 0.5}", f"acceptance: {{max_error_rate_delta: {bound}}}")
    )
    return file


def test_a_recipe_runs_to_publish_against_the_hub(hub, cli, tiny_upstream, speech, tmp_path):
    """Every stage, with the baseline built beside it: refused outside the acceptance bound, published
    within it, then nothing done again unless asked."""
    server, _ = hub
    work, repo = tmp_path / "work", "tester/tiny-4bit-llm"
    common = ["--work", work, *pinned(hub, tiny_upstream, "4bit-llm"), "--set", speech, "--max-new-tokens", TOKENS]

    strict = cli("run", recipe_with_bound(tmp_path, "strict", 0), *common, "--repo", repo)
    comparison = json.loads((work / "strict/evaluate/eval.json").read_text())["sets"]["speech"]["comparison"]
    worst_metric, worst = max(((m, 100 * s["delta"]) for m, s in comparison["scores"].items()), key=lambda x: x[1])
    print(
        f"\ntiny 4-bit LLM vs bf16, {TOKENS} new tokens, 2 utterances: worst delta {worst_metric.upper()} {worst:+.2f} points"
    )
    assert worst > 0, "the tiny 4-bit variant measured no worse than bf16: the bound of 0 cannot be exceeded"
    assert_user_error(strict, f"acceptance: set speech {worst_metric.upper()} is {worst:+.2f} points against bf16")
    assert "outside recipe strict's bound of 0 points (acceptance.max_error_rate_delta)" in strict.stderr
    assert sorted(p.name for p in (work / "strict").iterdir()) == sorted((*BUILD, "evaluate"))  # no card, no .tmp
    assert repo not in server.repos

    loose = cli("run", recipe_with_bound(tmp_path, "loose", 10000), *common, "--repo", repo)
    assert loose.returncode == 0, loose.stderr
    assert loose.stdout.strip().splitlines()[-1] == str(work / "loose/publish")
    assert "[bf16] evaluate: up to date, skipped" in loose.stderr  # the baseline made for `strict` is reused
    record = json.loads((work / "loose/publish" / PUBLISH_RECORD).read_text())
    assert (
        record["repo"] == repo
        and record["commit"] == server.commits(repo)[0]
        and record["url"].endswith(record["commit"])
    )
    served = server.files(repo)
    served.pop(".gitattributes")
    card_dir = work / "loose/card"
    assert served == {k: p.read_bytes() for k, p in files_of(card_dir).items()}
    assert record["files"] == {k: sha256(p) for k, p in files_of(card_dir).items()}
    card = served["README.md"].decode()
    assert "Acceptance bound of recipe `loose`" in card and f'snapshot_download("{repo}")' in card
    assert "| Librispeech-clean (`librispeech-test-clean` here) | 1.76% [1] |" in card  # the source's published figures
    assert json.loads(served["eval.json"]) == json.loads((work / "loose/evaluate/eval.json").read_text())
    assert "hf_fake_test_token" not in loose.stdout + loose.stderr + "".join(
        p.read_text() for p in (work / "loose/publish").iterdir()
    )

    requests = len(server.requests)
    again = cli("run", tmp_path / "loose.yaml", *common, "--repo", repo)
    assert again.returncode == 0, again.stderr
    assert all(f"[loose] {stage}: up to date, skipped" in again.stderr for stage in STAGES)
    assert len(server.requests) == requests  # nothing downloaded, nothing sent

    (card_dir / "README.md").write_text((card_dir / "README.md").read_text() + "\nEdited by hand.\n")
    edited = cli("run", tmp_path / "loose.yaml", *common, "--repo", repo)
    assert edited.returncode == 0, edited.stderr
    assert "[loose] card: building" in edited.stderr and "[loose] publish: building" in edited.stderr
    assert "Edited by hand" not in (card_dir / "README.md").read_text()
    assert server.commits(repo)[0] == record["commit"]  # the same files again: no new commit

    dry = cli("run", "bf16", *common, "--repo", "tester/dry", "--dry-run")  # no card for it yet: none is written
    assert dry.returncode == 0, dry.stderr
    assert "[bf16] card: dry run: would build" in dry.stderr and not (work / "bf16/card").exists()
    assert cli("run", "bf16", *common, "--repo", "tester/dry", "--until", "card").returncode == 0
    dry = cli("run", "bf16", *common, "--repo", "tester/dry", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would upload" in dry.stdout and "README.md" in dry.stdout
    assert dry.stdout.strip().splitlines()[-1] == str(work / "bf16/card")
    assert "tester/dry" not in server.repos and not (work / "bf16/publish").exists()
