"""The release as a maintainer runs it, from the installed wheel (tests/conftest.py's `installed_cli`:
no checkout on sys.path, so a data file missing from the wheel fails here).

The dress rehearsal: the whole `4bit-llm` recipe, as `make publish RECIPE=4bit-llm` runs it, against
the fake hub (tests/hub_server.py) serving the upstream repo at the recipe's pinned commit with the real
repo's file list, and the recipe's own evaluation sets at their pinned commits (tests/hub_datasets.py).
Nothing is overridden but the checkpoint's SHA-256: a random model.pt cannot have the real one's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from funasr_nano_mlx.files import sha256
from funasr_nano_mlx.pipeline import PUBLISH_RECORD
from funasr_nano_mlx.recipe import STAGES, Recipe
from tests.helpers import files_of, run_cli
from tests.hub_datasets import seed_eval_sets
from tests.hub_server import HubServer

RECIPE = Recipe.load("4bit-llm")
# What the real upstream repo holds (at the pinned commit) besides the tiny checkpoint's own files.
UPSTREAM_EXTRAS = {
    "multilingual.tiktoken": b"IQ== 0\n",
    "example/zh.mp3": b"ID3 stand-in",
    "example/en.mp3": b"ID3 stand-in",
    "README.md": b"---\nlicense: apache-2.0\n---\n# Fun-ASR-Nano-2512\n",
}


@pytest.fixture(scope="module")
def agreeing_upstream(tiny_upstream, tmp_path_factory) -> Path:
    """The tiny checkpoint with the LLM's final norm zeroed: every logit is then exactly 0 in bfloat16 and
    at 4 bits alike, so both variants decode the same tokens and the 4-bit one passes the recipe's real
    acceptance bound. (With random weights the two part after a few tokens, by far more than its 0.5
    points; a checkpoint on the 4-bit grid, which quantizes losslessly, still parted: the CPU's
    quantized and bfloat16 matmuls round differently.) The encoder, adaptor and prefill stay random."""
    folder = Path(shutil.copytree(tiny_upstream, tmp_path_factory.mktemp("agreeing") / "upstream"))
    checkpoint = torch.load(folder / "model.pt", weights_only=True)
    checkpoint["state_dict"]["llm.model.norm.weight"].zero_()
    torch.save(checkpoint, folder / "model.pt")
    return folder


def test_the_4bit_llm_recipe_runs_to_publish_from_the_installed_wheel(
    installed_cli, agreeing_upstream, clips, tmp_path
):
    work, home = tmp_path / "work", tmp_path / "hf-home"
    with HubServer() as hub:
        hub.seed(RECIPE.source, {**files_of(agreeing_upstream), **UPSTREAM_EXTRAS}, sha=RECIPE.revision)
        seed_eval_sets(hub, RECIPE.evaluation)
        env = {k: v for k, v in hub.client_env(home).items() if k != "PYTHONPATH"}
        where = run_cli(
            command=[
                str(Path(installed_cli[0]).with_name("python")),
                "-c",
                "import funasr_nano_mlx; print(funasr_nano_mlx.__file__)",
            ],
            env=env,
            cwd=tmp_path,
        )
        assert where.stdout.startswith(str(Path(installed_cli[0]).parents[1])), where  # the wheel's copy

        done = run_cli(
            "run",
            RECIPE.name,
            "--work",
            work,
            "--sha256",
            sha256(agreeing_upstream / "model.pt"),
            command=installed_cli,
            env=env,
            cwd=tmp_path,
            timeout=1200,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == str(work / RECIPE.name / "publish")
        assert sorted(p.name for p in (work / RECIPE.name).iterdir()) == sorted(STAGES)

        report = json.loads((work / RECIPE.name / "evaluate" / "eval.json").read_text())
        assert sorted(report["sets"]) == sorted(RECIPE.evaluation)
        for name, result in report["sets"].items():
            assert result["utterances"] == 2 and result["skipped"] == [], name
            deltas = {metric: score["delta"] for metric, score in result["comparison"]["scores"].items()}
            assert all(abs(delta) * 100 <= 0.5 for delta in deltas.values()), (name, deltas)

        record = json.loads((work / RECIPE.name / "publish" / PUBLISH_RECORD).read_text())
        assert record["repo"] == RECIPE.target and record["commit"] == hub.commits(RECIPE.target)[0]
        served = hub.files(RECIPE.target)
        served.pop(".gitattributes")
        assert served == {k: p.read_bytes() for k, p in files_of(work / RECIPE.name / "card").items()}
        card = served["README.md"].decode()
        assert f"{RECIPE.source}@{RECIPE.revision}" in card or RECIPE.revision in card

        wav = tmp_path / "clip.wav"
        sf.write(str(wav), clips["1s"], 16000)
        by_name = run_cli(
            "transcribe", RECIPE.target, wav, "--format", "json", command=installed_cli, env=env, cwd=tmp_path
        )
        assert by_name.returncode == 0 and json.loads(by_name.stdout)["token_ids"], by_name.stderr
        assert os.listdir(home / "hub")  # the published repo came through the cache
