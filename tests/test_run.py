"""`funasr-nano-mlx run` and the Makefile stages, end to end against a local fake hub.

The tiny reference checkpoint is served under the upstream repo ids by tests/hub_server.py; the CLI runs
in subprocesses whose huggingface_hub points there (`client_env`). Recipes keep their repo id and are
given the server's commit (--revision) and the tiny model.pt's SHA-256 (--sha256).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from funasr_nano_mlx.convert import sha256
from funasr_nano_mlx.quantize import quantize
from funasr_nano_mlx.recipe import STAGES, Recipe, run
from tests.hub_server import HubServer
from tests.test_recipe import SHIPPED

REPO_ROOT = Path(__file__).resolve().parent.parent
# A hard kill in the middle of the quantize stage: the weights are in quantize.tmp, config.json is not.
KILLED_IN_QUANTIZE = """
import os, signal, sys
import funasr_nano_mlx.quantize
funasr_nano_mlx.quantize.save_config = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from funasr_nano_mlx.cli import main
main(sys.argv[1:], prog_name="funasr-nano-mlx")
"""


def assert_user_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2 and one `error:` line, the last on stderr (stage progress lines come before it)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == done.stderr.strip().splitlines()[-1:] and "Traceback" not in done.stderr, done.stderr
    assert fragment in errors[0], errors[0]


def files_of(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tiny_upstream):
    """The tiny checkpoint as commit `rev` of both upstream repos."""
    with HubServer() as server:
        revisions = {repo: server.seed(repo, files_of(tiny_upstream))
                     for repo in ("FunAudioLLM/Fun-ASR-Nano-2512", "FunAudioLLM/Fun-ASR-MLT-Nano-2512")}  # fmt: skip
        yield server, revisions


@pytest.fixture(scope="module")
def cli(hub, tmp_path_factory):
    """cli(*args, script=None) runs the CLI (or `script` with these args) wired to the fake hub."""
    server, _ = hub
    env = server.client_env(tmp_path_factory.mktemp("hf-home"))

    def call(*args, script: str | None = None):
        command = ["-c", script] if script else ["-m", "funasr_nano_mlx"]
        return subprocess.run([sys.executable, *command, *map(str, args)], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    return call


def pinned(hub, tiny_upstream, recipe: str) -> list[str]:
    """The override flags that make a shipped recipe build the served tiny checkpoint."""
    _, revisions = hub
    return ["--revision", revisions[Recipe.load(recipe).source], "--sha256", sha256(tiny_upstream / "model.pt")]


def stage_dirs(work: Path) -> list[str]:
    return sorted(p.relative_to(work).as_posix() for p in work.glob("*/*")) if work.exists() else []


@pytest.fixture(scope="module")
def built(hub, cli, tiny_upstream, tmp_path_factory):
    """Every shipped recipe, run to its last stage against the hub: name -> (work dir, completed process)."""
    work = tmp_path_factory.mktemp("work")
    return {name: cli("run", name, "--work", work, *pinned(hub, tiny_upstream, name)) for name in SHIPPED}, work


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
    out = work / name / STAGES[-1]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in (work / name).iterdir()) == sorted(STAGES)  # no .tmp or .stale left
    downloaded = work / name / "download"
    assert sorted(files_of(downloaded)) == sorted(
        [*(k for k in files_of(tiny_upstream) if k != "multilingual.tiktoken"), "source.json"])  # allow-patterns only
    conversion = json.loads((work / name / "convert" / "config.json").read_text())["conversion"]
    recipe = Recipe.load(name)
    assert conversion["source"] == f"{recipe.source}@{json.loads((downloaded / 'source.json').read_text())['revision']}"
    assert_same_weights(work / name / "convert", tiny_bf16)
    # The stage output is what quantizing the same conversion directly gives (test_quantize checks that).
    assert_same_weights(out, quantize(tiny_bf16, tmp_path / name, recipe))


def test_a_second_run_and_a_second_recipe_download_nothing(hub, cli, built, tiny_upstream):
    server, _ = hub
    runs, work = built
    before = len(server.requests)
    again = cli("run", "4bit-llm", "--work", work, *pinned(hub, tiny_upstream, "4bit-llm"))
    assert again.returncode == 0, again.stderr
    assert all(f"{stage}: up to date, skipped" in again.stderr for stage in STAGES)
    assert len(server.requests) == before  # not even a metadata request
    # Six recipes, two repos: model.pt was fetched once per repo (the Hugging Face cache is shared).
    fetched = [r for r in server.requests[:before] if r.startswith("GET ") and r.split("?")[0].endswith("/model.pt")]
    assert len(fetched) == 2, fetched


def test_an_unpinned_recipe_is_refused_before_any_request(hub, cli, tmp_path):
    server, _ = hub
    before = len(server.requests)
    assert_user_error(cli("run", "mlt-bf16", "--work", tmp_path / "work"), "is not pinned")
    assert len(server.requests) == before and not (tmp_path / "work").exists()


def test_a_wrong_sha256_leaves_no_stage_output(hub, cli, tmp_path):
    _, revisions = hub
    done = cli("run", "bf16", "--work", tmp_path, "--revision", revisions["FunAudioLLM/Fun-ASR-Nano-2512"],
               "--sha256", "0" * 64)  # fmt: skip
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
    done = cli("run", "bf16", "--work", tmp_path / "a", "--source", "test/cut-in-transit", "--revision", whole)
    assert_user_error(done, "cannot download test/cut-in-transit")
    assert stage_dirs(tmp_path / "a") == []
    # Truncated at the source, expected SHA-256 known: the download stage refuses it.
    cut = server.seed("test/cut-at-source", {**files, "model.pt": truncated})
    source = ["--source", "test/cut-at-source", "--revision", cut]
    done = cli("run", "bf16", "--work", tmp_path / "b", *source, "--sha256", sha256(tiny_upstream / "model.pt"))
    assert_user_error(done, "has SHA-256")
    assert stage_dirs(tmp_path / "b") == []
    # No SHA-256 to check: conversion refuses it, and leaves nothing either.
    done = cli("run", "bf16", "--work", tmp_path / "c", *source)
    assert_user_error(done, "not a readable PyTorch checkpoint")
    assert stage_dirs(tmp_path / "c") == ["bf16/download"]  # the download itself is complete and verified as is


def make(*targets: str, work: Path, source: Path, venv: Path) -> subprocess.CompletedProcess:
    """The repository's Makefile with this interpreter and a local source."""
    (venv / ".installed").parent.mkdir(parents=True, exist_ok=True)
    (venv / ".installed").touch()
    variables = [f"PY={sys.executable}", f"VENV={venv}", f"WORK={work}", f"RUN_ARGS=--source {source}"]
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT), *variables, *targets],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_an_interrupted_stage_is_not_done_and_a_rerun_completes(cli, tiny_upstream, tmp_path):
    work, venv = tmp_path / "work", tmp_path / "venv"
    args = ["run", "4bit-llm", "--work", work, "--source", tiny_upstream]
    killed = cli(*args, script=KILLED_IN_QUANTIZE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert stage_dirs(work) == ["4bit-llm/convert", "4bit-llm/download", "4bit-llm/quantize.tmp"]
    assert (work / "4bit-llm/quantize.tmp/model.safetensors").exists()  # half-written, under its .tmp name
    quantize_target = str(work / "4bit-llm/quantize")
    question = make("-q", quantize_target, work=work, source=tiny_upstream, venv=venv)
    assert question.returncode == 1, question.stderr  # Make: not up to date
    assert make("-q", str(work / "4bit-llm/convert"), work=work, source=tiny_upstream, venv=venv).returncode == 0

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "convert: up to date, skipped" in resumed.stderr and "quantize: building" in resumed.stderr
    assert stage_dirs(work) == [f"4bit-llm/{stage}" for stage in sorted(STAGES)]
    assert make("-q", quantize_target, work=work, source=tiny_upstream, venv=venv).returncode == 0
    direct = quantize(work / "4bit-llm/convert", tmp_path / "q", Recipe.load("4bit-llm"))
    assert_same_weights(work / "4bit-llm/quantize", direct)


def test_make_publish_runs_every_stage_and_says_publish_is_not_built(tiny_upstream, tmp_path):
    work, venv = tmp_path / "work", tmp_path / "venv"
    done = make("publish", "RECIPE=bf16", work=work, source=tiny_upstream, venv=venv)
    assert done.returncode == 0, done.stderr
    assert "publish is not built yet" in done.stdout and str(work / "bf16/quantize") in done.stdout
    assert stage_dirs(work) == [f"bf16/{stage}" for stage in sorted(STAGES)]
    again = make("publish", "RECIPE=bf16", work=work, source=tiny_upstream, venv=venv)
    assert "funasr_nano_mlx run" not in again.stdout  # every stage up to date: Make runs nothing


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
