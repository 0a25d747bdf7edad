"""Recipes: the shipped files, strict validation (file, line and field in every error), layer choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.packaged import RECIPES_DIR
from funasr_nano_mlx.pipeline import run
from tests.helpers import SHIPPED_RECIPES as SHIPPED
from funasr_nano_mlx.recipe import (
    Acceptance,
    QuantSpec,
    Recipe,
    baseline_for,
    baseline_recipe,
)

NANO = (
    "FunAudioLLM/Fun-ASR-Nano-2512",
    "272c57b82523ada6fd87095e955f8e29100979ab",
    "55ae0d2fee369f0f11cce0795f6927934ad17cf11b278a7e56a51272074160bb",
)
NANO_CTC = (
    "FunAudioLLM/Fun-ASR-Nano-2512",
    "master",
    "81fec8616083c69377f3ceef36aba3655660ee0ca69a5d4a1e9810cd340ca499",
    "modelscope",
)
MLT = ("FunAudioLLM/Fun-ASR-MLT-Nano-2512", "main", "f7ddbef5ff8c57254e6a045f0b316501b704fe2b774f962efc6e402364e8fe37")
Q4, Q6, Q8 = QuantSpec(4, 64), QuantSpec(6, 64), QuantSpec(8, 64)

VALID = """\
source:
  repo: org/model
  revision: 272c57b82523ada6fd87095e955f8e29100979ab
dtype: bfloat16
quantization:
  audio_encoder: null
  audio_adaptor: {bits: 8}
  llm: {bits: 4, group_size: 64, mode: affine}
  embeddings: {bits: 8, group_size: 32, mode: mxfp8}
  mixed:
    - {match: "llm.model.layers.*.mlp.down_proj", layers: [0, 3], bits: 6}
evaluation: [fleurs-en]
acceptance: {max_error_rate_delta: 0.5}
target: org/model-mlx
"""


def test_shipped_recipes():
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == sorted(SHIPPED)
    recipes = {name: Recipe.load(name) for name in SHIPPED}
    for name, recipe in recipes.items():
        assert recipe.dtype == "bfloat16" and recipe.evaluation and recipe.target.startswith("mlx-community/")
        # Every quantized variant has a bound against its bf16 baseline; the baselines themselves none.
        assert (recipe.acceptance is None) == recipe.is_plain, name
        assert recipe.acceptance is None or recipe.acceptance.max_error_rate_delta > 0
        if name.startswith("mlt-"):  # no MLT commit is known: pinned by the content of model.pt
            assert (recipe.source, recipe.revision, recipe.model_pt_sha256, recipe.hub) == (*MLT, "huggingface")
        elif name.endswith("-timestamps"):  # the ModelScope copy carries the CTC head; pinned by content too
            assert (recipe.source, recipe.revision, recipe.model_pt_sha256, recipe.hub) == NANO_CTC
        else:
            assert (recipe.source, recipe.revision, recipe.model_pt_sha256, recipe.hub) == (*NANO, "huggingface")
    specs = {name: (r.audio_encoder, r.audio_adaptor, r.llm, r.embeddings) for name, r in recipes.items()}
    assert specs["bf16"] == specs["mlt-bf16"] == (None, None, None, None)
    assert specs["8bit"] == (Q8, Q8, Q8, Q8)
    assert specs["4bit-llm"] == specs["mlt-4bit-llm"] == specs["4bit-llm-timestamps"] == (None, None, Q4, Q4)
    assert specs["bf16-timestamps"] == (None, None, None, None)
    assert all(recipes[name].ctc is None for name in ("bf16-timestamps", "4bit-llm-timestamps"))
    assert specs["4bit-mixed"] == (None, None, Q4, Q6)


def test_layer_choices_of_the_mixed_recipe():
    recipe = Recipe.load("4bit-mixed")
    assert recipe.spec_for("llm.model.embed_tokens") == Q6  # its own choice, not the LLM's
    assert recipe.spec_for("llm.model.layers.5.mlp.down_proj") == Q6  # mlx-lm's use_more_bits layers
    assert recipe.spec_for("llm.model.layers.6.mlp.down_proj") == Q4
    assert recipe.spec_for("llm.model.layers.27.self_attn.v_proj") == Q6
    assert recipe.spec_for("llm.model.layers.27.self_attn.k_proj") == Q4
    assert recipe.spec_for("audio_encoder.encoders.3.self_attn.linear_out") is None
    assert recipe.spec_for("audio_adaptor.linear1") is None


def test_a_recipe_file_by_path(tmp_path):
    file = tmp_path / "custom.yaml"
    file.write_text(VALID)
    recipe = Recipe.load(file)
    assert recipe.name == "custom" and recipe.audio_adaptor == Q8 and recipe.embeddings == QuantSpec(8, 32, "mxfp8")
    assert recipe.spec_for("llm.model.layers.3.mlp.down_proj") == Q6
    assert recipe.spec_for("llm.model.layers.13.mlp.down_proj") == Q4  # 13 is not 3
    assert recipe.model_pt_sha256 is None and len(recipe.file_sha256) == 64
    assert recipe.evaluation == ("fleurs-en",) and recipe.acceptance == Acceptance(0.5)


def test_local_sets_and_per_set_bounds(tmp_path):
    """Local sets are paths relative to the recipe file; a set's own bound wins over the global one."""
    (tmp_path / "sets" / "mine").mkdir(parents=True)
    (tmp_path / "sets" / "other.jsonl").write_text("")
    text = VALID.replace("evaluation: [fleurs-en]", "evaluation: [fleurs-en, ./sets/mine, sets/other.jsonl]")
    text = text.replace(
        "acceptance: {max_error_rate_delta: 0.5}",
        "acceptance:\n  max_error_rate_delta: 0.5\n  sets:\n    mine: {max_error_rate_delta: 2}",
    )
    (tmp_path / "recipes").mkdir()
    file = tmp_path / "recipes" / "local.yaml"
    file.write_text(text.replace("./sets", "../sets").replace(" sets/other", " ../sets/other"))
    recipe = Recipe.load(file)
    assert recipe.evaluation == ("fleurs-en", str(tmp_path / "sets" / "mine"), str(tmp_path / "sets" / "other.jsonl"))
    assert recipe.acceptance == Acceptance(0.5, (("mine", 2.0),))
    assert [recipe.acceptance.bound_for(name) for name in ("mine", "other", "fleurs-en")] == [2.0, 0.5, 0.5]
    assert recipe.provenance()["acceptance"] == {
        "max_error_rate_delta": 0.5,
        "sets": {"mine": {"max_error_rate_delta": 2.0}},
    }


def test_baselines():
    """Each recipe's baseline is the bf16 one of its source; built from wherever the recipe is built from."""
    assert {name: baseline_recipe(Recipe.load(name)) for name in SHIPPED} == {
        "bf16": None,
        "8bit": "bf16",
        "4bit-llm": "bf16",
        "4bit-mixed": "bf16",
        "mlt-bf16": None,
        "mlt-4bit-llm": "mlt-bf16",
        "bf16-timestamps": None,
        "4bit-llm-timestamps": "bf16-timestamps",
    }
    moved = Recipe.load("4bit-llm").override(source="/some/mirror")
    base = baseline_for(moved)
    assert base.name == "bf16" and (base.source, base.revision, base.model_pt_sha256) == ("/some/mirror", None, None)
    assert baseline_for(Recipe.load("bf16")) is None


def edit(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new, 1)


BAD = [  # (recipe text, line, the start of the message after "FILE:LINE: ")
    (edit("target:", "targte: x\ntarget:"), 14, "targte: unknown key 'targte'"),
    (edit("  llm: {bits: 4,", "  llm: {bitz: 3, bits: 4,"), 8, "quantization.llm.bitz: unknown key"),
    (edit("  embeddings:", "  vision: null\n  embeddings:"), 9, "quantization.vision: unknown key 'vision'"),
    (
        edit("bits: 4, group_size: 64", "bits: 7, group_size: 64"),
        8,
        "quantization.llm.bits: 7 bits is not supported by mode affine",
    ),
    (
        edit("bits: 4, group_size: 64", "bits: 4, group_size: 16"),
        8,
        "quantization.llm.group_size: group size 16 is not supported",
    ),
    (
        edit("group_size: 32, mode: mxfp8", "group_size: 64, mode: mxfp8"),
        9,
        "quantization.embeddings.group_size: group size 64",
    ),
    (
        edit("bits: 8, group_size: 32", "bits: 4, group_size: 32"),
        9,
        "quantization.embeddings.bits: 4 bits is not supported by mode mxfp8",
    ),
    (edit("mode: affine", "mode: fp4"), 8, "quantization.llm.mode: 'fp4' is not a quantization mode"),
    (edit("{bits: 8}", "{bits: true}"), 7, "quantization.audio_adaptor.bits: expected int, found True"),
    (edit("dtype: bfloat16", "dtype: float16"), 4, "dtype: 'float16' is not supported"),
    (
        edit("  revision: 272c57b82523ada6fd87095e955f8e29100979ab\n", ""),
        2,
        "source.revision: is missing: pin a 40-hex commit",
    ),
    (edit("272c57b82523ada6fd87095e955f8e29100979ab", "main"), 3, "source.revision: 'main' is not a pinned commit"),
    (edit("  audio_encoder: null\n", ""), 6, "quantization.audio_encoder: is missing: give its quantization, or null"),
    (edit("layers: [0, 3]", "layers: [zero]"), 11, "quantization.mixed[0].layers: expected a non-empty list"),
    (
        edit("  audio_encoder: null\n", "  audio_encoder: null\n  audio_encoder: {bits: 4}\n"),
        7,
        "quantization: 'audio_encoder' is given twice",
    ),
    (edit("repo: org/model", "repo: model"), 2, "source.repo: 'model' is not a hub repo id"),
    (edit("[fleurs-en]", "[fleurs-en, fleurs-xx]"), 12, "evaluation[1]: no evaluation set 'fleurs-xx'"),
    (edit("[fleurs-en]", "[fleurs-en, ./no-such-folder]"), 12, "evaluation[1]: no local set './no-such-folder'"),
    (edit("[fleurs-en]", "[fleurs-en, 3]"), 12, "evaluation[1]: expected a set name or path, found 3"),
    (edit("[fleurs-en]", "[fleurs-en, fleurs-en]"), 12, "evaluation[1]: two sets are named 'fleurs-en'"),
    (edit("[fleurs-en]", "fleurs-en"), 12, "evaluation: expected a list of evaluation sets, found a scalar"),
    (
        edit("{max_error_rate_delta: 0.5}", "{max_error_rate_delta: -1}"),
        13,
        "acceptance.max_error_rate_delta: expected a number of percentage points >= 0",
    ),
    (
        edit("{max_error_rate_delta: 0.5}", "{max_error_rate_delta: .inf}"),
        13,
        "acceptance.max_error_rate_delta: expected a number of percentage points >= 0",
    ),
    (
        edit("{max_error_rate_delta: 0.5}", "{max_error_rate_delta: yes}"),
        13,
        "acceptance.max_error_rate_delta: expected int or float, found True",
    ),
    (
        edit("{max_error_rate_delta: 0.5}", "{max_wer_delta: 0.5}"),
        13,
        "acceptance.max_wer_delta: unknown key 'max_wer_delta'",
    ),
    (edit("{max_error_rate_delta: 0.5}", "{}"), 13, "acceptance: give max_error_rate_delta"),
    (
        edit(
            "acceptance: {max_error_rate_delta: 0.5}", "acceptance:\n  sets:\n    fleurs-ja: {max_error_rate_delta: 1}"
        ),
        15,
        "acceptance.sets.fleurs-ja: 'fleurs-ja' is not one of the recipe's evaluation sets (fleurs-en)",
    ),
    (
        edit("acceptance: {max_error_rate_delta: 0.5}", "acceptance:\n  sets:\n    fleurs-en: {}"),
        15,
        "acceptance.sets.fleurs-en.max_error_rate_delta: is missing (required)",
    ),
]


@pytest.mark.parametrize("text,line,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, _, m) in enumerate(BAD)])
def test_strict_validation_names_file_line_and_field(tmp_path, text, line, message):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(UserError) as info:
        Recipe.load(file)
    assert str(info.value).startswith(f"{file}:{line}: {message}"), str(info.value)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match=r"no recipe 'nope'.*4bit-llm"):
        Recipe.load("nope")
    file = tmp_path / "broken.yaml"
    file.write_text("source: [unclosed\n")
    with pytest.raises(UserError, match=re.escape(f"{file}: not valid YAML")):
        Recipe.load(file)


def test_overrides():
    recipe = Recipe.load("4bit-llm")
    other = recipe.override(revision="a" * 40)
    assert other.revision == "a" * 40 and other.model_pt_sha256 is None  # the pin's SHA-256 no longer applies
    assert recipe.override(model_pt_sha256="b" * 64).model_pt_sha256 == "b" * 64
    assert recipe.override(source=recipe.source).model_pt_sha256 == recipe.model_pt_sha256
    mirror = recipe.override(source="mirror/model")  # the pin is not the mirror's: run refuses without one
    assert (mirror.revision, mirror.model_pt_sha256) == (None, None)
    with pytest.raises(UserError, match="source.revision of mirror/model is not pinned"):
        run(mirror, "unused")
    with pytest.raises(UserError, match="--revision 'main' is not a pinned commit"):
        recipe.override(revision="main")
    by_content = Recipe.load("bf16-timestamps")  # the SHA-256 is the pin: a local copy must match it too
    assert by_content.override(source="/a/modelscope/download").model_pt_sha256 == by_content.model_pt_sha256


def test_a_branch_is_a_pin_only_with_the_checkpoints_sha256(tmp_path):
    file = tmp_path / "content.yaml"
    file.write_text(edit("272c57b82523ada6fd87095e955f8e29100979ab", "main\n  model_pt_sha256: " + "c" * 64))
    assert (Recipe.load(file).revision, Recipe.load(file).model_pt_sha256) == ("main", "c" * 64)
    file.write_text(edit("272c57b82523ada6fd87095e955f8e29100979ab", "dev\n  model_pt_sha256: " + "c" * 64))
    with pytest.raises(UserError, match="source.revision: 'dev' is not a pinned commit"):
        Recipe.load(file)


def test_the_source_hub_is_one_this_package_downloads_from(tmp_path):
    file = tmp_path / "hub.yaml"
    file.write_text(edit("  repo: org/model\n", "  hub: gitee\n  repo: org/model\n"))
    with pytest.raises(UserError, match="source.hub: 'gitee' is not a hub this package downloads from"):
        Recipe.load(file)
    file.write_text(
        edit("272c57b82523ada6fd87095e955f8e29100979ab", "main\n  hub: modelscope\n  model_pt_sha256: " + "c" * 64)
    )
    with pytest.raises(UserError, match="only 'master' together with model_pt_sha256"):
        Recipe.load(file)  # ModelScope's branch is master


def test_an_unpinned_recipe_refuses_to_run(tmp_path):
    file = tmp_path / "unpinned.yaml"
    file.write_text(edit("272c57b82523ada6fd87095e955f8e29100979ab", "null"))
    with pytest.raises(UserError, match="source.revision of org/model is not pinned"):
        run(Recipe.load(file), tmp_path / "work")
    assert not (tmp_path / "work").exists()
    with pytest.raises(UserError, match="unknown stage 'upload'"):
        run(Recipe.load("bf16"), tmp_path / "work", until="upload")


def test_recipes_are_documented_in_their_files():
    for name in SHIPPED:
        text = (RECIPES_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# "), name  # a comment says what the variant is
        if name.startswith("mlt-"):
            assert "PINNED BY CONTENT" in text
    assert Path(RECIPES_DIR).name == "recipes"


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"source:\n  repo: a/b\n  revision: 2020-13-45\n",
            ":3: source.revision: cannot be read: month must be in 1..12",
        ),
        (b"source:\n  repo: a/b\x01\n", ": not valid YAML: unacceptable character #x0001"),
        (b"source:\xff\n", ":1: not valid UTF-8 (byte 0xff)"),
    ],
)
def test_unreadable_yaml_is_one_line_naming_the_file(tmp_path, content, message):
    file = tmp_path / "odd.yaml"
    file.write_bytes(content)
    with pytest.raises(UserError) as info:
        Recipe.load(file)
    assert str(info.value).startswith(f"{file}{message}") and "\n" not in str(info.value), str(info.value)
