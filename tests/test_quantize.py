"""Quantization of the tiny converted model by every shipped recipe (and one using the float modes).

Each check looks at the written files, not at the quantizer's own bookkeeping: which layers carry
scales, at what bits/group size/mode, the config entries a loader needs, bits per weight and size,
an exact save/load round trip, transcription here, and loading in mlx-audio 0.6.2.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model, save_model

from funasr_nano_mlx import load, transcribe
from funasr_nano_mlx.audio import features
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.model import FunASRNano, ModelArgs
from funasr_nano_mlx.quantize import quantize
from funasr_nano_mlx.recipe import Recipe, component_of
from funasr_nano_mlx.transcribe import prompt_inputs
from tests.helpers import SHIPPED_RECIPES as SHIPPED
from tests.helpers import assert_user_error, cuda_kernel_twins, run_cli

# Every float mode, group sizes other than the default, and a rule: per-layer entries of all kinds.
FLOAT_MODES = """\
source: {repo: org/model, revision: 272c57b82523ada6fd87095e955f8e29100979ab}
dtype: bfloat16
quantization:
  audio_encoder: {bits: 8, mode: mxfp8}
  audio_adaptor: {bits: 4, group_size: 32, mode: mxfp4}
  llm: {bits: 4, mode: nvfp4}
  embeddings: {bits: 5, group_size: 32}
  mixed:
    - {match: "llm.model.layers.*.mlp.down_proj", layers: [1], bits: 3, group_size: 128}
target: org/model-float-modes
"""
VARIANTS = (*SHIPPED, "float-modes")
# Decoding with quantized matmuls is slow on CPU: the mlt-* recipes quantize exactly as bf16 and 4bit-llm
# do (tests/test_recipe.py), so transcription runs once per distinct quantization.
DISTINCT = tuple(name for name in VARIANTS if not name.startswith("mlt-"))
TOKENS = 16


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict[str, Recipe]:
    custom = tmp_path_factory.mktemp("recipes") / "float-modes.yaml"
    custom.write_text(FLOAT_MODES)
    return {name: Recipe.load(custom if name == "float-modes" else name) for name in VARIANTS}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_bf16, recipes):
    """name -> the tiny bf16 model quantized by that recipe (made once, on first use)."""
    root, made = tmp_path_factory.mktemp("quantized"), {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = quantize(tiny_bf16, root / name, recipes[name])
        return made[name]

    return get


def tensors(model_dir: Path) -> dict[str, mx.array]:
    return {k: v for f in sorted(model_dir.glob("model*.safetensors")) for k, v in mx.load(str(f)).items()}


def config_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def expected_layers(recipe: Recipe, source: dict[str, mx.array]) -> dict[str, object]:
    """Layer path -> the recipe's QuantSpec for it, or None where it stays unquantized: every 2-D
    `.weight` of the unquantized model is a Linear or an Embedding (norms are 1-D, the FSMN conv 3-D)."""
    layers = {}
    for key, weight in source.items():
        if key.endswith(".weight") and weight.ndim == 2:
            path, spec = key.removesuffix(".weight"), recipe.spec_for(key.removesuffix(".weight"))
            layers[path] = spec if spec and weight.shape[-1] % spec.group_size == 0 else None
    return layers


@pytest.mark.parametrize("name", VARIANTS)
def test_quantized_layers_are_exactly_what_the_recipe_says(name, recipes, quantized, tiny_bf16):
    recipe, out = recipes[name], quantized(name)
    source, weights, config = tensors(tiny_bf16), tensors(out), config_of(out)
    layers = expected_layers(recipe, source)
    entries = config.get("quantization", {})
    default = {k: entries[k] for k in ("group_size", "bits", "mode")} if entries else None
    for path, spec in layers.items():
        in_dims = source[f"{path}.weight"].shape[-1]
        if spec is None:
            assert f"{path}.scales" not in weights, path
            assert entries.get(path, False) is False  # an explicit `false` wherever anything is quantized
            continue
        packed, scales = weights[f"{path}.weight"], weights[f"{path}.scales"]
        assert packed.dtype == mx.uint32 and packed.shape[-1] * 32 // in_dims == spec.bits, path
        assert in_dims // scales.shape[-1] == spec.group_size, path
        assert (scales.dtype == mx.uint8) == (spec.mode != "affine"), path  # float modes: e8m0/e4m3 scales
        assert (f"{path}.biases" in weights) == (spec.mode == "affine"), path
        assert entries.get(path, default) == spec.params(), path  # an entry exactly where it differs
    if entries:
        differ = {p for p, spec in layers.items() if spec is None or spec.params() != default}
        assert set(entries) - {"group_size", "bits", "mode"} == differ
        assert config["quantization_config"] == entries
    # Everything else (norms, FSMN convolutions, biases, unquantized layers) is the converted tensor, bit for bit.
    for key, value in source.items():
        if key.removesuffix(".weight") not in layers or layers[key.removesuffix(".weight")] is None:
            assert weights[key].dtype == value.dtype and mx.array_equal(weights[key], value), key
    summary = config["quantization_summary"]
    skipped = {p for p in layers if layers[p] is None and recipe.spec_for(p) is not None}
    assert set(summary["skipped"]) == skipped
    for component, row in summary["components"].items():
        spec = getattr(recipe, component)
        assert row["quantization"] == (spec.params() if spec else None)
        assert row["quantized_layers"] == sum(1 for p, s in layers.items() if s and component_of(p) == component)
    assert config["recipe"]["name"] == name and config["recipe"]["file_sha256"] == recipe.file_sha256
    # The acceptance bound travels with the model, so that `card` and `publish` check it without the recipe file.
    assert config["recipe"]["acceptance"] == (recipe.acceptance.to_dict() if recipe.acceptance else None)


@pytest.mark.parametrize("name", VARIANTS)
def test_bits_per_weight_and_size(name, recipes, quantized, tiny_bf16):
    """Recomputed from the files: stored bits over the number of original (unquantized) weights."""
    out = quantized(name)
    source, weights, summary = tensors(tiny_bf16), tensors(out), config_of(out)["quantization_summary"]

    def bits_per_weight(prefix_test) -> float:
        stored = sum(v.nbytes for k, v in weights.items() if prefix_test(k))
        original = sum(v.size for k, v in source.items() if prefix_test(k))
        return round(8 * stored / original, 4)

    assert summary["bits_per_weight"] == bits_per_weight(lambda k: True)
    for component, row in summary["components"].items():
        assert row["bits_per_weight"] == bits_per_weight(lambda k, c=component: component_of(k) == c), component
    embeddings = recipes[name].embeddings  # one bf16 scale (and bias) per group: bits + 16 (or 32) / group
    if embeddings and embeddings.mode == "affine" and "llm.model.embed_tokens.scales" in weights:
        assert summary["components"]["embeddings"]["bits_per_weight"] == embeddings.bits + 32 / embeddings.group_size
    assert summary["size_bytes"] == sum(f.stat().st_size for f in out.glob("model*.safetensors"))
    if name == "bf16":
        assert summary["bits_per_weight"] == 16.0 and "quantization" not in config_of(out)


def load_stored(model_dir: Path):
    """As mlx-lm loads it (stored dtypes; `transcribe.load` also runs the encoder in float32)."""
    return load_model(model_dir, get_model_classes=lambda config: (FunASRNano, ModelArgs))[0]


@pytest.mark.parametrize("name", VARIANTS)
def test_save_load_round_trip_is_exact(name, recipes, quantized, tiny_bf16, tmp_path):
    out = quantized(name)
    model = load_stored(out)
    files = tensors(out)
    params = dict(tree_flatten(model.parameters()))
    assert params.keys() == files.keys()
    for key, value in files.items():
        assert params[key].dtype == value.dtype and mx.array_equal(params[key], value), key
    modules = dict(model.named_modules())
    for path, spec in expected_layers(recipes[name], tensors(tiny_bf16)).items():
        module = modules[path]
        got = (module.bits, module.group_size, module.mode) if hasattr(module, "bits") else None
        assert got == ((spec.bits, spec.group_size, spec.mode) if spec else None), path
    save_model(tmp_path / "again", model)
    again = tensors(tmp_path / "again")
    assert again.keys() == files.keys() and all(mx.array_equal(again[k], files[k]) for k in files)


@pytest.fixture(scope="module")
def unquantized_run(tiny_bf16, clips):
    model, tokenizer = load(tiny_bf16)
    frames = model.encode(mx.array(features(clips["1s"]))[None])
    return frames, transcribe(model, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("name", DISTINCT)
def test_loads_and_transcribes(name, recipes, quantized, clips, unquantized_run, record_property):
    model, tokenizer = load(quantized(name))
    result = transcribe(model, tokenizer, clips["1s"], max_new_tokens=TOKENS)
    assert len(result.token_ids) == TOKENS and all(isinstance(t, int) for t in result.token_ids)
    # The encoder runs in float32 (quantized layers too: their scales are upcast); a quantized encoder
    # and adaptor stay close to the unquantized ones (measured: 8-bit 2.8e-2, mxfp8 + mxfp4 0.17).
    frames = model.encode(mx.array(features(clips["1s"]))[None])
    reference, reference_tokens = unquantized_run
    error = float(mx.linalg.norm(frames - reference) / mx.linalg.norm(reference))
    audio_bits = [spec.bits for spec in (recipes[name].audio_encoder, recipes[name].audio_adaptor) if spec]
    assert frames.dtype == mx.float32 and error < (0.05 if min(audio_bits, default=8) >= 8 else 0.3), error
    same = agreement(result.token_ids, reference_tokens)
    record_property("adaptor_rel_error_vs_bf16", error)
    record_property("leading_tokens_equal_to_bf16", same)
    print(f"{name}: adaptor output rel. error vs bf16 {error:.2e}; first {same}/{TOKENS} tokens equal to bf16")


def test_loading_keeps_each_quantized_llm_projection_in_one_buffer(quantized, clips, monkeypatch):
    """At load each quantized projection of the LLM keeps its weight, scales and biases as views into one
    buffer, the layout the CUDA projection kernels read (cuda_kernels.pack_quantized): the same tokens as
    mlx-lm's separate arrays (FUNASR_NANO_FUSE=0), in the same memory."""
    from funasr_nano_mlx import cuda_kernels

    model, tokenizer = load(quantized("4bit-llm"))
    layers = model.llm.layers
    projections = [layer.self_attn.fused_qkv() for layer in layers] + [layer.mlp.down_proj for layer in layers]
    projections += [layer.self_attn.o_proj for layer in layers] + [layer.mlp.fused_gate_up() for layer in layers]
    buffers = [cuda_kernels.packed_quantized(linear) for linear in projections]
    assert all(buffer is not None for buffer in buffers)
    for linear, buffer in zip(projections, buffers):
        assert buffer.nbytes == sum(linear[name].nbytes for name in ("weight", "scales", "biases"))
    packed = transcribe(model, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids
    monkeypatch.setenv("FUNASR_NANO_FUSE", "0")
    apart, _ = load(quantized("4bit-llm"))
    assert cuda_kernels.packed_quantized(apart.llm.layers[0].self_attn.o_proj) is None
    assert transcribe(apart, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids == packed


def test_a_4bit_clip_through_the_cuda_step_decodes_as_mlx_lm(quantized, clips, monkeypatch):
    """On CUDA a 4-bit model's step reads the embedding's rows in one kernel (cuda_kernels.embed_affine) and each
    layer through the projection kernels, from the packed buffers. Here each kernel is its MLX-ops twin: the
    tokens of mlx-lm's path, and every kernel called."""
    from funasr_nano_mlx import cuda_kernels

    model, tokenizer = load(quantized("4bit-llm"))
    expected = transcribe(model, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids
    kernels = ("prompt_attention", "step_attention", "write_step_kv", "embed_affine")
    projections = ("norm_project", "project_add", "norm_swiglu")
    monkeypatch.setenv("FUNASR_NANO_COMPILE", "1")  # as on a GPU
    calls = cuda_kernel_twins(monkeypatch, kernels + projections)
    monkeypatch.setattr(cuda_kernels, "projection_shape", lambda mode, *layer: mode)
    assert transcribe(model, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids == expected
    assert set(calls) == set(kernels + projections)


def test_a_packed_layer_computes_the_same_without_adding_memory():
    """`cuda_kernels.pack_quantized` moves a layer's arrays into one buffer without copying them twice: the
    layer's output is bit-identical, the memory in use is the same once the old arrays are gone, and an array
    replaced afterwards makes the buffer stale (the kernels then leave the layer to MLX's ops)."""
    import mlx.nn as nn

    from funasr_nano_mlx import cuda_kernels

    layer = nn.Linear(1024, 512, bias=False)
    layer.set_dtype(mx.bfloat16)
    layer = nn.QuantizedLinear.from_linear(layer, group_size=64, bits=4)
    x = mx.random.normal((1, 1, 1024)).astype(mx.bfloat16)
    expected = layer(x)
    mx.eval(expected)
    size = sum(layer[name].nbytes for name in ("weight", "scales", "biases"))
    before = mx.get_active_memory()
    cuda_kernels.pack_quantized(layer)
    assert abs(mx.get_active_memory() - before) < size / 10  # a second copy would add `size`
    assert mx.array_equal(layer(x), expected).item()
    assert cuda_kernels.packed_quantized(layer) is not None
    layer.set_dtype(mx.float16)  # casts the scales and biases, not the weight
    assert cuda_kernels.packed_quantized(layer) is None


def only_llm_quantized(recipe: Recipe) -> bool:
    return (
        recipe.audio_encoder is None
        and recipe.audio_adaptor is None
        and not any(rule.match.startswith(("audio_", "*")) for rule in recipe.mixed)
    )


@pytest.mark.parametrize("name", DISTINCT)
def test_mlx_audio_reads_the_same_llm(name, recipes, quantized, clips, record_property):
    """mlx-audio 0.6.2 quantizes only under llm.model (its model_quant_predicate) and loads weights
    with strict=False. Variants quantized only there load with the very same LLM: same tensors, same
    quantized layers, same greedy tokens from the same prompt embeddings once it uses upstream's
    bf16-rounded RoPE. Its own end-to-end tokens differ (plain RoPE, bf16 encoder, its frontend):
    measured and recorded, not asserted."""
    from mlx_audio.stt import load as mlx_audio_load

    out = quantized(name)
    theirs = mlx_audio_load(str(out))
    if not only_llm_quantized(recipes[name]):
        with pytest.raises(ValueError):  # loads (strict=False) with packed weights in float layers, then fails
            list(theirs.stream_generate(mx.array(clips["1s"]), max_tokens=2))
        return
    ours, tokenizer = load(out)
    our_llm = dict(tree_flatten(ours.llm.model.parameters()))
    their_llm = dict(tree_flatten(theirs.llm.model.parameters()))
    assert our_llm.keys() == their_llm.keys()
    assert all(our_llm[k].dtype == their_llm[k].dtype and mx.array_equal(our_llm[k], their_llm[k]) for k in our_llm)
    ours_modules, theirs_modules = dict(ours.llm.model.named_modules()), dict(theirs.llm.model.named_modules())
    for path, module in ours_modules.items():
        if hasattr(module, "bits"):
            other = theirs_modules[path]
            assert (other.bits, other.group_size, other.mode) == (module.bits, module.group_size, module.mode)

    frames = ours.encode(mx.array(features(clips["1s"]))[None])[0]
    ids, embeddings = prompt_inputs(ours, tokenizer, frames)

    def greedy(model) -> list[int]:
        return [int(t) for t, _ in generate_step(ids, model, max_tokens=TOKENS, input_embeddings=embeddings)]

    ours_tokens = greedy(ours.llm)
    plain_rope_tokens = greedy(theirs)
    end_to_end = [int(t) for t, _ in theirs.stream_generate(mx.array(clips["1s"]), max_tokens=TOKENS)]
    ours_end_to_end = transcribe(ours, tokenizer, clips["1s"], max_new_tokens=TOKENS).token_ids
    for mine, other in zip(ours.llm.layers, theirs.llm.model.layers):
        other.self_attn.rope = mine.self_attn.rope
    assert greedy(theirs) == ours_tokens

    findings = {
        "same_embeddings_plain_rope": agreement(plain_rope_tokens, ours_tokens),
        "end_to_end": agreement(end_to_end, ours_end_to_end),
    }
    for key, value in findings.items():
        record_property(f"mlx_audio_leading_tokens_equal_{key}", value)
    print(f"{name}: mlx-audio, leading tokens equal to ours (of {TOKENS}): {findings}")


def test_refusals(tiny_bf16, tiny_f32, quantized, tmp_path):
    four_bit = Recipe.load("4bit-llm")
    with pytest.raises(UserError, match="already quantized"):
        quantize(quantized("4bit-llm"), tmp_path / "twice", four_bit)
    with pytest.raises(UserError, match="holds mlx.core.float32 weights but recipe 4bit-llm is for bfloat16"):
        quantize(tiny_f32, tmp_path / "f32", four_bit)
    with pytest.raises(UserError, match="not a converted Fun-ASR-Nano model"):
        quantize(tmp_path, tmp_path / "nothing", four_bit)
    with pytest.raises(UserError, match="destination already exists"):
        quantize(tiny_bf16, tmp_path, four_bit)
    typo = tmp_path / "typo.yaml"  # `layer` for `layers`
    rule = "  mixed: [{match: llm.model.layer.*, bits: 8}]\n"
    typo.write_text(four_bit.file.read_text().replace("  embeddings:", rule + "  embeddings:"))
    with pytest.raises(UserError, match=r"quantization.mixed\[0\] \(llm.model.layer.\*\) matches no layer"):
        quantize(tiny_bf16, tmp_path / "typo", Recipe.load(typo))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]  # nothing half-written


def test_summary_is_json_friendly(quantized):
    summary = config_of(quantized("4bit-mixed"))["quantization_summary"]
    assert [rule["matched_layers"] for rule in summary["mixed"]] == [2, 2]  # layers 0 and 1 of the tiny LLM
    assert np.isfinite(summary["bits_per_weight"]) and summary["skipped"] == []


def test_the_quantize_command(tiny_bf16, tiny_f32, quantized, tmp_path):
    done = run_cli("quantize", tiny_bf16, tmp_path / "q", "--recipe", "4bit-mixed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "q")
    ours, reference = tensors(tmp_path / "q"), tensors(quantized("4bit-mixed"))
    assert ours.keys() == reference.keys() and all(mx.array_equal(ours[k], reference[k]) for k in ours)
    done = run_cli("quantize", tiny_f32, tmp_path / "f32", "--recipe", "4bit-mixed")
    assert_user_error(done, "convert with --dtype bfloat16")
    assert_user_error(run_cli("quantize", tiny_bf16, tmp_path / "x", "--recipe", "4bit"), "no recipe '4bit'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    assert "--recipe" in run_cli("quantize", "--help").stdout


def test_quantized_layers_run_as_they_are_where_layers_are_compiled(monkeypatch):
    """On a GPU encoder and adaptor layers run compiled; a quantized one (the `8bit` recipe quantizes
    them) runs as it is, with the same output."""
    import mlx.nn as nn

    from funasr_nano_mlx.model import AdaptorBlock, run_layer

    monkeypatch.setenv("FUNASR_NANO_COMPILE", "1")
    block = AdaptorBlock(256, 4)
    nn.quantize(block, group_size=64, bits=8)
    x = mx.random.normal((2, 6, 256), key=mx.random.key(0))
    assert mx.array_equal(run_layer(block, (256, 4), x, None), block(x, None))
