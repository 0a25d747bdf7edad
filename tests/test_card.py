"""The model card: Hub metadata that huggingface_hub parses, with eval.json's metrics; every figure
from config.json or eval.json, "not measured" where there is none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from funasr_nano_mlx.card import CARD, NOT_MEASURED, check_report, render, write_card
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.evaluate import EVAL_JSON, evaluate
from tests.speech import synthesize

SENTENCES = [("en.wav", "the quick brown fox", "en"), ("zh.wav", "今天天气很好", "zh")]


def local_set(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text, language in SENTENCES:
        synthesize(text, folder / name, "cmn" if language == "zh" else "en")
    lines = ["file_name,text,language"] + [f"{n},{t},{lang}" for n, t, lang in SENTENCES]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_f32, tiny_bf16):
    """(model dir, report dir): a copy of the tiny float32 model, evaluated against the bf16 one."""
    tmp = tmp_path_factory.mktemp("evaluated")
    evalset = local_set(tmp / "tiny-set")
    evaluate(tiny_bf16, [str(evalset)], tmp / "bf16-report", max_new_tokens=8)
    model = tmp / "model"
    shutil.copytree(tiny_f32, model)  # copy2: the model files keep their (older) times
    evaluate(model, [str(evalset)], tmp / "report", baseline=tmp / "bf16-report", max_new_tokens=8)
    return model, tmp / "report"


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "funasr_nano_mlx", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)  # fmt: skip


def test_card_metadata_parses_and_carries_the_metrics(evaluated, tmp_path):
    model, report = evaluated
    target = tmp_path / "model"
    shutil.copytree(model, target)
    done = cli("card", target, "--eval", report)
    assert done.returncode == 0, done.stderr
    card = ModelCard.load(target / CARD)
    data = card.data
    assert data.library_name == "mlx" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.license == "apache-2.0"
    assert {"mlx", "speech-recognition", "fun-asr-nano-tiny"} <= set(data.tags)
    eval_json = json.loads((report / EVAL_JSON).read_text())
    assert json.loads((target / "eval.json").read_text()) == eval_json
    expected = {(name, metric): round(100 * s["error_rate"], 4) for name, d in eval_json["sets"].items()
                for metric, s in d["scores"].items()}  # fmt: skip
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert found == expected and len(found) == 2  # WER (en) and CER (zh)
    for r in data.eval_results:
        assert r.task_type == "automatic-speech-recognition"
    text = card.text
    for d in eval_json["sets"].values():
        for metric, s in d["scores"].items():
            assert f"{100 * s['error_rate']:.2f}%" in text
            assert f"{100 * d['comparison']['scores'][metric]['baseline']:.2f}%" in text
        assert f"{d['real_time_factor']:.3f}" in text
    assert eval_json["machine"]["device"] in text
    config = json.loads((target / "config.json").read_text())
    assert config["conversion"]["model_pt_sha256"] in text
    assert "float32" in text and "timestamps" in text and "float16 is not supported" in text
    assert "mlx_audio" in text  # unquantized: loads in mlx-audio too


def test_a_variant_without_eval_numbers_shows_not_measured(tiny_bf16, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_bf16, target)
    card_path = write_card(target)
    card = ModelCard.load(card_path)
    assert not card.data.eval_results
    assert NOT_MEASURED in card.text
    assert "%" not in card.text.split("## Accuracy")[1].split("## Usage")[0]  # no error rate made up
    assert "not quantized" in card.text and "bfloat16" in card.text


def test_a_quantized_variant_names_its_quantization(tiny_bf16, tmp_path):
    from funasr_nano_mlx.quantize import quantize
    from funasr_nano_mlx.recipe import Recipe

    recipe = Recipe.load("4bit-llm")
    quantized = quantize(tiny_bf16, tmp_path / "q", recipe)
    card = ModelCard(render(quantized))
    assert card.data.base_model == recipe.source and card.data.base_model_relation == "quantized"
    assert card.data.model_name == recipe.target.split("/")[-1]
    summary = json.loads((quantized / "config.json").read_text())["quantization_summary"]
    assert f"{summary['bits_per_weight']:g} bits per weight" in card.text
    assert recipe.name in card.text and recipe.file_sha256 in card.text
    assert "mlx_audio" in card.text


def test_a_report_of_another_or_a_changed_model_is_refused(evaluated, tiny_bf16, tmp_path):
    model, report = evaluated
    with pytest.raises(UserError, match="another model"):
        check_report(tiny_bf16, report / EVAL_JSON)
    target = tmp_path / "model"
    shutil.copytree(model, target)
    later = (report / EVAL_JSON).stat().st_mtime + 10
    os.utime(target / "config.json", (later, later))
    with pytest.raises(UserError, match="older than"):
        check_report(target, report / EVAL_JSON)
    done = cli("card", target, "--eval", report)
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.splitlines()) == 1
