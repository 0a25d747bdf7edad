"""The model card: Hub metadata that huggingface_hub parses, with eval.json's metrics; every figure
from config.json or eval.json, "not measured" where there is none."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from huggingface_hub import ModelCard

from funasr_nano_mlx.card import (
    BENCHMARK,
    CARD,
    FIGURES,
    NOT_MEASURED,
    check_acceptance,
    check_card,
    check_report,
    is_current,
    published_figures,
    read_benchmark,
    render,
    write_card,
)
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.evaluate import EVAL_JSON, evaluate
from funasr_nano_mlx.packaged import EVAL_SETS_DIR, RECIPES_DIR
from funasr_nano_mlx.recipe import Recipe
from tests.helpers import SENTENCES, local_set, run_cli, worst_delta

BENCH = {
    "recipe": "4bit-llm",
    "machine": "NVIDIA H100 80GB HBM3",
    "date": "2026-11-24",
    "command": "python bench/speed.py --size full --seconds 10",
    "results": [
        {
            "impl": "ours",
            "audio_s": 10.0,
            "ttft_ms": 44.7,
            "decode_ms_per_token": 4.2,
            "total_ms": 583.0,
            "tokens": 128,
            "peak_mem_gb": 2.54,
        },
        {"impl": "official", "audio_s": 10.0, "ttft_ms": 113.0, "total_ms": 4796.0},
    ],
}


def test_card_metadata_parses_and_carries_the_metrics(evaluated, tmp_path):
    model, report = evaluated
    target = tmp_path / "model"
    shutil.copytree(model, target)
    done = run_cli("card", target, "--eval", report)
    assert done.returncode == 0, done.stderr
    card = ModelCard.load(target / CARD)
    data = card.data
    assert data.library_name == "mlx" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.license == "apache-2.0"
    assert {"mlx", "speech-recognition", "fun-asr-nano-tiny"} <= set(data.tags)
    eval_json = json.loads((report / EVAL_JSON).read_text())
    assert json.loads((target / "eval.json").read_text()) == eval_json
    expected = {
        (name, metric): round(100 * s["error_rate"], 4)
        for name, d in eval_json["sets"].items()
        for metric, s in d["scores"].items()
    }
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
    done = run_cli("card", target, "--eval", report)
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.splitlines()) == 1


def test_the_card_refuses_a_delta_outside_the_acceptance_bound(four_bit, tmp_path):
    model, report = four_bit
    target = tmp_path / "model"
    shutil.copytree(model, target)
    name, metric, delta = worst_delta(report)
    print(f"\ntiny 4-bit LLM vs bf16 (8 new tokens): worst delta {metric} {delta:+.2f} points on {name}")
    assert delta > 0.5, "the tiny 4-bit variant is within 4bit-llm's bound: this test needs one outside it"
    done = run_cli("card", target, "--eval", report)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        f"error: acceptance: set {name} {metric} is {delta:+.2f} points against tiny-bfloat16"
    )
    assert "outside recipe 4bit-llm's bound of 0.5 points (acceptance.max_error_rate_delta)" in done.stderr
    assert not (target / CARD).exists() and not (target / "eval.json").exists()  # nothing written


def test_acceptance_bounds(four_bit):
    """The bound is on the point estimate of each set's delta; a set's own bound wins; a bound that
    cannot be checked (no comparison, no report) refuses too."""
    report = json.loads((four_bit[1] / EVAL_JSON).read_text())
    name, metric, delta = worst_delta(four_bit[1])
    block = {"name": "r", "acceptance": {"max_error_rate_delta": delta, "sets": {}}}
    check_acceptance(block, report)  # exactly at the bound: accepted
    check_acceptance({"name": "r", "acceptance": None}, report)
    check_acceptance(None, report)
    below = {"name": "r", "acceptance": {"max_error_rate_delta": delta - 0.01, "sets": {}}}
    with pytest.raises(
        UserError, match=rf"set {name} {metric} is \{delta:+.2f} points .* bound of {delta - 0.01:g} points"
    ):
        check_acceptance(below, report)
    per_set = {
        "name": "r",
        "acceptance": {"max_error_rate_delta": 1000.0, "sets": {name: {"max_error_rate_delta": 0.0}}},
    }
    with pytest.raises(UserError, match=rf"\(acceptance.sets.{name}\)"):
        check_acceptance(per_set, report)
    relaxed = {
        "name": "r",
        "acceptance": {"max_error_rate_delta": 0.0, "sets": {name: {"max_error_rate_delta": 1000.0}}},
    }
    check_acceptance(relaxed, report)  # the only set has its own, looser bound
    uncompared = json.loads(json.dumps(report))
    del uncompared["sets"][name]["comparison"]
    with pytest.raises(UserError, match=f"set {name} has no comparison with the bf16 baseline"):
        check_acceptance(block, uncompared)
    with pytest.raises(UserError, match="no evaluation report"):
        check_acceptance(block, None)


def test_published_figures_and_the_benchmark_record(four_bit, tmp_path):
    """The upstream figures beside the measured ones for the same set; the benchmark record's figures."""
    model, _ = four_bit
    english = local_set(tmp_path / "fleurs-en", SENTENCES[:1])  # named like the published set it stands for
    report = evaluate(model, [str(english)], tmp_path / "report", max_new_tokens=8)
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    benchmark = read_benchmark(tmp_path / "bench.json", {"name": "4bit-llm"})
    assert [row["impl"] for row in benchmark["results"]] == ["ours"]  # the other implementations are not ours
    card = ModelCard(render(model, report, benchmark=benchmark, repo_id="tester/q4"))
    text = card.text
    assert "| fleurs-en | WER |" in text and text.split("| fleurs-en | WER |")[1].splitlines()[0].endswith(
        " 5.96% [1] |"
    )
    for figure in ("1.80% [1]", "2.75% [1]", "4.33% [1]", "6.01% [1]"):
        assert figure in text
    assert "[1] FunAudioLLM/Fun-ASR, README.md at commit 45c8c96" in text and "arXiv:2509.12508" in text
    assert "Comparability of [1] with the figures above: How these figures were scored is not published" in text
    assert "Not compared with the bfloat16 variant" in text  # quantized, evaluated without a baseline
    assert "on NVIDIA H100 80GB HBM3, 2026-11-24, with `python bench/speed.py --size full --seconds 10`" in text
    assert "| 10 s | 44.7 ms | 4.20 ms/token | 583 ms | 128 | 2.54 GB |" in text
    assert "4796" not in text and 'snapshot_download("tester/q4")' in text and card.data.model_name == "q4"
    assert "0.5 points on every set" in text  # the recipe's bound, from config.json

    (tmp_path / "other.json").write_text(json.dumps({**BENCH, "recipe": "bf16"}))
    with pytest.raises(UserError, match="is a benchmark of recipe bf16, but this model was built by recipe 4bit-llm"):
        read_benchmark(tmp_path / "other.json", {"name": "4bit-llm"})
    (tmp_path / "bare.json").write_text(json.dumps({"results": []}))
    with pytest.raises(UserError, match="is not a benchmark record"):
        read_benchmark(tmp_path / "bare.json", {"name": "4bit-llm"})


def test_a_card_without_published_figures_or_benchmark_says_so(evaluated):
    text = ModelCard(render(evaluated[0], json.loads((evaluated[1] / EVAL_JSON).read_text()))).text
    assert "None recorded for" in text and "published (upstream)" not in text
    assert "Benchmark record (time to first token, decode speed, peak memory on a named machine): not measured." in text


def test_the_upstream_figures_file():
    """Every figure cites a source that is listed; values as printed; set names exist here."""
    import yaml

    data = yaml.safe_load(FIGURES.read_text())
    sources = {Recipe.load(f).source for f in RECIPES_DIR.glob("*.yaml")}
    assert set(data["models"]) <= sources
    for model in data["models"].values():
        assert model["model"] and model["metric"]
        for figure in model["figures"]:
            assert data["sources"][figure["source"]]["citation"]
            assert re.fullmatch(r"\d+\.\d\d", figure["value"]), figure
            assert figure["eval_set"] is None or (EVAL_SETS_DIR / f"{figure['eval_set']}.yaml").is_file()
    figures, cited = published_figures("FunAudioLLM/Fun-ASR-Nano-2512")
    assert len(figures) == 8 and [c["id"] for c in cited] == [1]
    assert published_figures("FunAudioLLM/Fun-ASR-MLT-Nano-2512") == ([], [])  # none recorded: none shown


def test_an_edited_or_stale_card_is_noticed(evaluated, tmp_path):
    model, report = evaluated
    target = tmp_path / "model"
    shutil.copytree(model, target)
    write_card(target, report_dir=report, repo_id="tester/tiny")
    check_card(target, repo_id="tester/tiny")
    assert is_current(target, repo_id="tester/tiny") and not is_current(target, repo_id="tester/other")
    with pytest.raises(UserError, match="renders now from .* for tester/other"):
        check_card(target, repo_id="tester/other")  # the card names another repo
    lines = (target / CARD).read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if text.startswith("## Speed")) + 2
    lines[line - 1] = "Very fast."
    (target / CARD).write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"first difference at line {line}\\): it was edited, or is stale"):
        check_card(target, repo_id="tester/tiny")
    write_card(target, repo_id="tester/tiny")
    assert is_current(target, repo_id="tester/tiny")
    (target / BENCHMARK).write_text(json.dumps(BENCH))  # a benchmark record appears: the card is stale,
    assert not is_current(target, repo_id="tester/tiny")
    done = run_cli("card", target, "--repo", "tester/tiny")  # and this one is not even this model's
    assert (
        done.returncode == 2
        and "is a benchmark of recipe 4bit-llm, but this model was built without a recipe" in done.stderr
    )


def test_a_recipe_other_than_the_models_is_refused(four_bit, tmp_path):
    done = run_cli("card", four_bit[0], "--recipe", "bf16")
    assert done.returncode == 2 and "this model was built by recipe 4bit-llm" in done.stderr


def test_a_model_with_timestamps_lists_its_ctc_head():
    """The CTC head is a component row of its own, in float32 as conversion keeps it, only where it exists."""
    from funasr_nano_mlx.card import CTC_LABEL, _components

    plain = {"conversion": {"dtype": "bfloat16"}}
    assert CTC_LABEL not in [row["name"] for row in _components(plain)]
    rows = {row["name"]: row for row in _components({**plain, "timestamps": True})}
    assert (rows[CTC_LABEL]["dtype"], rows[CTC_LABEL]["bits"], rows[CTC_LABEL]["quantized"]) == ("float32", 32, False)
    assert rows["audio encoder (SAN-M)"]["dtype"] == "bfloat16"
