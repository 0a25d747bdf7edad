"""Quantize a converted model per component, as a recipe says, through mlx-lm's machinery.

The recipe decides each Linear/Embedding layer's setting by its module path (`Recipe.spec_for`);
`mlx_lm.utils.quantize_model` applies it with that predicate and writes the `quantization` block:
the most common setting is the global one, every layer that differs gets its own entry (`false` for
a layer kept unquantized), so mlx-lm's `load_model` (and with it `transcribe.load`) and mlx-audio's
loader rebuild exactly these layers. Norms, the FSMN convolutions and RoPE are never quantized.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model, quantize_model, save_config, save_model

from .convert import MLX_DTYPES
from .errors import UserError
from .files import check_destination, require_utf8_path, staged_output
from .model import FunASRNano, model_classes
from .modeldir import MODEL_TYPE, WEIGHT_FILES, weights_size
from .recipe import COMPONENTS, OPTIONAL_COMPONENTS, QuantSpec, Recipe, component_of

QUANTIZABLE = (nn.Linear, nn.Embedding)


def load_unquantized(src: Path) -> tuple[FunASRNano, dict]:
    """The converted model in its stored dtype (lazily), unlike `transcribe.load`, which runs the
    encoder in float32: quantization scales take the dtype of the weights they are made from."""
    try:
        model, config = load_model(src, lazy=True, get_model_classes=model_classes)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{src} is not a converted Fun-ASR-Nano model: {err}") from None
    if config.get("model_type") != MODEL_TYPE:
        raise UserError(f"{src} is not a converted Fun-ASR-Nano model (model_type {config.get('model_type')!r})")
    if "quantization" in config:
        raise UserError(f"{src} is already quantized; quantize the converted (unquantized) model instead")
    return model, config


def plan(model: nn.Module, recipe: Recipe) -> dict[str, QuantSpec | None]:
    """The recipe's setting for every quantizable layer (None: kept), by module path."""
    return {path: recipe.spec_for(path) for path, module in model.named_modules() if isinstance(module, QUANTIZABLE)}


def _is_quantized(module: nn.Module) -> bool:
    return hasattr(module, "bits")


def _bits_per_weight(modules: list[nn.Module]) -> float | None:
    """Stored bits per original weight, as mlx_lm.utils.compute_bits_per_weight counts them but over
    parameters only: it also counts other arrays a module holds (our RoPE frequencies), not saved."""
    nbytes = sum(v.nbytes for m in modules for _, v in tree_flatten(m.parameters()))
    weights = sum(
        m.weight.size * 32 // m.bits + (m.bias.size if "bias" in m else 0)
        if _is_quantized(m)
        else sum(v.size for _, v in tree_flatten(m.parameters()))
        for m in modules
    )
    return round(8 * nbytes / weights, 4) if weights else None


def summarize(model: nn.Module, planned: dict[str, QuantSpec | None], recipe: Recipe) -> dict:
    """What was quantized at what setting, per component and per mixed rule, and what was skipped."""
    modules = dict(model.named_modules())
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)

    def component(name: str) -> dict:
        paths, spec = [p for p in planned if component_of(p) == name], getattr(recipe, name)
        return {
            "quantization": spec.params() if spec else None,
            "layers": len(paths),
            "quantized_layers": sum(_is_quantized(modules[p]) for p in paths),
            "bits_per_weight": _bits_per_weight([m for p, m in leaves if component_of(p) == name]),
        }

    return {
        # An optional component (the CTC head) only where the model has it.
        "components": {
            name: component(name)
            for name in COMPONENTS
            if name not in OPTIONAL_COMPONENTS or any(component_of(p) == name for p in planned)
        },
        "mixed": [
            {
                "match": rule.match,
                "layers": list(rule.layers) if rule.layers else None,
                **rule.spec.params(),
                "matched_layers": sum(rule.applies(p) for p in planned),
            }
            for rule in recipe.mixed
        ],
        # Layers the recipe quantizes whose input size is not a multiple of the group size (MLX cannot).
        "skipped": sorted(p for p, spec in planned.items() if spec and not _is_quantized(modules[p])),
        "bits_per_weight": _bits_per_weight([m for _, m in leaves]),
    }


def quantize_layers(model: nn.Module, config: dict, recipe: Recipe) -> tuple[dict, dict]:
    """Quantize `model` in place as `recipe` says; returns the new config and the summary."""
    planned = plan(model, recipe)
    for i, rule in enumerate(recipe.mixed):
        if not any(rule.applies(p) for p in planned):
            raise UserError(f"{recipe.file}: quantization.mixed[{i}] ({rule.match}) matches no layer of this model")
    counts = Counter(spec for spec in planned.values() if spec)
    if counts:
        default = counts.most_common(1)[0][0]

        def predicate(path: str, module: nn.Module) -> bool | dict:
            spec = planned.get(path)
            if spec is None or module.weight.shape[-1] % spec.group_size:
                return False
            return True if spec == default else spec.params()

        model, config = quantize_model(
            model, config, default.group_size, default.bits, default.mode, quant_predicate=predicate
        )
        modules = dict(model.named_modules())
        for path in planned:  # explicit entries for kept layers: loaders need not infer them from the weights
            if not _is_quantized(modules[path]):
                config["quantization"][path] = False
    return config, summarize(model, planned, recipe)


def quantize(src: str | Path, dst: str | Path, recipe: Recipe) -> Path:
    """Write a quantized copy of the converted model at `src` to `dst` (all or nothing)."""
    src, dst = Path(src), Path(dst)
    check_destination(dst)  # before the work: an unusable destination is refused at once
    require_utf8_path(src)
    require_utf8_path(dst)
    model, config = load_unquantized(src)
    stored = model.llm.model.embed_tokens.weight.dtype
    if stored != MLX_DTYPES[recipe.dtype]:
        raise UserError(
            f"{src} holds {stored} weights but recipe {recipe.name} is for {recipe.dtype}: "
            f"convert with --dtype {recipe.dtype}"
        )
    config, summary = quantize_layers(model, config, recipe)
    config["recipe"] = recipe.provenance()
    with staged_output(dst) as out:
        save_model(out, model, donate_model=True)
        summary["size_bytes"] = weights_size(out)
        config["quantization_summary"] = summary
        save_config(config, out / "config.json")
        for item in src.iterdir():  # the tokenizer and anything else that is not weights or config
            if item.name != "config.json" and not any(item.match(p) for p in WEIGHT_FILES):
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
    return dst
