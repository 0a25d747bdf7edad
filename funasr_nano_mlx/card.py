"""The model card (README.md of a published repo), rendered from model_cards/template.md with
huggingface_hub's `ModelCard.from_template`, from the model's config.json and its evaluation report.

Every figure comes from config.json (`conversion`, `quantization_summary`, `recipe`) or eval.json; a
figure that is missing is shown as "not measured". This module only gathers and formats values: all
text about a variant lives in the template.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import UserError

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
CARD, EVAL_JSON_NAME = "README.md", "eval.json"
NOT_MEASURED = "not measured"
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
DTYPE_BITS = {"bfloat16": 16, "float32": 32}
# Languages each source family was trained on (the official model cards); others: the evaluated ones.
FAMILY_LANGUAGES = {"fun-asr-nano": ("zh", "en", "ja")}
COMPONENT_LABELS = {"audio_encoder": "audio encoder (SAN-M)", "audio_adaptor": "audio adaptor",
                    "llm": "LLM (Qwen3, without embeddings)", "embeddings": "embeddings / tied LM head"}  # fmt: skip


def model_files(model_dir: Path) -> list[Path]:
    """The files that define the model (weights, config, tokenizer): not the card nor the report."""
    return sorted(p for p in model_dir.rglob("*") if p.is_file() and p.relative_to(model_dir).parts[0] not in
                  (CARD, EVAL_JSON_NAME, ".cache"))  # fmt: skip


def identity(model_dir: Path) -> dict:
    """What eval.json's `model` block must match for the report to describe this model."""
    from .evaluate import _model

    model = _model(model_dir)
    return {k: v for k, v in model.items() if k not in ("name", "path")}


def check_report(model_dir: str | Path, eval_json: str | Path) -> dict:
    """eval.json's contents, after checking it exists, is newer than the model files and describes
    this very model (its size and provenance blocks); a UserError says what is wrong."""
    model_dir, eval_json = Path(model_dir), Path(eval_json)
    if not eval_json.is_file():
        raise UserError(f"no evaluation report {eval_json}: evaluate the model first "
                        f"(funasr-nano-mlx evaluate {model_dir} --set ... --report DIR; card --eval DIR)")  # fmt: skip
    try:
        report = json.loads(eval_json.read_text())
        recorded = {k: v for k, v in report["model"].items() if k not in ("name", "path")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{eval_json} is not an evaluation report: {err}") from None
    newest = max(model_files(model_dir), key=lambda p: p.stat().st_mtime)
    if eval_json.stat().st_mtime < newest.stat().st_mtime:
        raise UserError(f"{eval_json} is older than {newest}: the model changed after its evaluation; evaluate it again")
    mine = identity(model_dir)
    if recorded != mine:
        differs = sorted(k for k in mine.keys() | recorded.keys() if mine.get(k) != recorded.get(k))
        raise UserError(f"{eval_json} evaluated another model ({', '.join(differs)} differ from {model_dir}): "
                        "evaluate this one")  # fmt: skip
    return report


def _num(value, spec: str = "", suffix: str = "") -> str:
    return NOT_MEASURED if value is None else f"{value:{spec}}{suffix}"


def _pct(value) -> str:
    return _num(None if value is None else 100 * value, ".2f", "%")


def _bytes(value) -> str:
    return _num(None if value is None else value / 1e6, ",.1f", " MB")


def _source(config: dict, recipe: dict | None) -> tuple[str | None, str | None]:
    """(hub repo id or None for a local source, revision or None)."""
    if recipe and recipe.get("source"):
        repo, revision = recipe["source"], recipe.get("revision")
    else:
        repo, _, revision = str(config.get("conversion", {}).get("source", "")).partition("@")
        revision = revision or None
    return (repo if REPO_ID.fullmatch(repo or "") else None), revision


def family_of(source: str) -> str:
    """'FunAudioLLM/Fun-ASR-Nano-2512' -> 'fun-asr-nano' (the name without its release number)."""
    name = Path(source.partition("@")[0]).name.lower()
    return re.sub(r"-\d+$", "", name)


def _components(config: dict) -> list[dict]:
    summary, dtype = config.get("quantization_summary"), config.get("conversion", {}).get("dtype")
    rows = []
    for key, label in COMPONENT_LABELS.items():
        part = (summary or {}).get("components", {}).get(key)
        quant = part and part.get("quantization") and part.get("quantized_layers") and part["quantization"]
        bpw = part.get("bits_per_weight") if part else DTYPE_BITS.get(dtype)
        rows.append({"name": label, "quantized": bool(quant), "dtype": dtype or NOT_MEASURED,
                     "bits": quant["bits"] if quant else NOT_MEASURED if not dtype else DTYPE_BITS.get(dtype, dtype),
                     "group_size": quant["group_size"] if quant else "-", "mode": quant["mode"] if quant else "-",
                     "layers": f"{part['quantized_layers']}/{part['layers']}" if part else "-",
                     "bits_per_weight": _num(bpw, "g")})  # fmt: skip
    return rows


def context(model_dir: str | Path, report: dict | None = None, recipe=None) -> dict:
    """Everything the template shows, formatted, from config.json, eval.json and the recipe."""
    from .convert import package_version
    from .quantize import WEIGHT_FILES
    from .transcribe import LANGUAGES, read_config

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    recipe_block = config.get("recipe") or (recipe.provenance() if recipe is not None else None)
    conversion, summary = config.get("conversion", {}), config.get("quantization_summary")
    source, revision = _source(config, recipe_block)
    family = family_of(source or conversion.get("source") or model_dir.name)
    size = (summary or {}).get("size_bytes") or ((report or {}).get("model") or {}).get("size_bytes") \
        or sum(f.stat().st_size for f in model_dir.glob(WEIGHT_FILES[0])) or None  # fmt: skip
    components = _components(config)
    sets, evaluated_languages = [], []
    for name, data in ((report or {}).get("sets") or {}).items():
        definition = data.get("definition", {})
        if definition.get("language"):
            evaluated_languages.append(definition["language"])
        comparison = (data.get("comparison") or {}).get("scores", {})
        for metric, scores in data.get("scores", {}).items() or [("-", {})]:
            cmp = comparison.get(metric)
            sets.append({"name": name, "dataset": definition.get("dataset") or definition.get("path") or name,
                         "split": definition.get("split"), "config": definition.get("config"),
                         "revision": definition.get("revision"), "metric": metric.upper(),
                         "metric_key": metric, "value": scores.get("error_rate"),
                         "error_rate": _pct(scores.get("error_rate")), "utterances": _num(scores.get("utterances")),
                         "baseline": _pct(cmp["baseline"]) if cmp else NOT_MEASURED,
                         "delta": f"{100 * cmp['delta']:+.2f} [{100 * cmp['delta_ci95'][0]:+.2f}, "
                                  f"{100 * cmp['delta_ci95'][1]:+.2f}]" if cmp else NOT_MEASURED,
                         "rtf": _num(data.get("real_time_factor"), ".3f"),
                         "tokens_per_second": _num(data.get("tokens_per_second"), ".1f"),
                         "peak_memory": _num(data["peak_memory_bytes"] / 2**30, ".2f", " GiB")
                         if data.get("peak_memory_bytes") else NOT_MEASURED})  # fmt: skip
    machine = (report or {}).get("machine") or {}
    quantized = [c for c in components if c["quantized"]]
    return {
        "model_name": (recipe_block or {}).get("target", "").split("/")[-1] or model_dir.name,
        "recipe": recipe_block,
        "source": source, "revision": revision or NOT_MEASURED, "family": family,
        "source_label": conversion.get("source", NOT_MEASURED),
        "model_pt_sha256": conversion.get("model_pt_sha256", NOT_MEASURED),
        "dtype": conversion.get("dtype", NOT_MEASURED),
        "package_version": conversion.get("package_version", package_version()),
        "conversion_notes": conversion.get("notes", []),
        "quantized": bool(quantized),
        "mlx_audio": not any(c["quantized"] for c in components[:2]),  # quantized only under llm.model
        "components": components,
        "bits_per_weight": _num((summary or {}).get("bits_per_weight") or (DTYPE_BITS.get(conversion.get("dtype"))
                                                                           if not summary else None), "g"),
        "size": _bytes(size),
        "skipped_layers": (summary or {}).get("skipped", []),
        "mixed": (summary or {}).get("mixed", []),
        "languages": list(FAMILY_LANGUAGES.get(family, ())) or sorted(set(evaluated_languages)) or None,
        "all_languages": ", ".join(FAMILY_LANGUAGES.get(family, ())) or NOT_MEASURED,
        "known_languages": ", ".join(LANGUAGES),
        "evaluated": bool(sets),
        "sets": sets,
        "speed": list({s["name"]: s for s in sets}.values()),  # speed is per set, not per metric
        "baseline": (report or {}).get("baseline"),
        "eval_date": (report or {}).get("date", NOT_MEASURED),
        "eval_settings": (report or {}).get("settings", {}),
        "eval_package_version": (report or {}).get("package_version", NOT_MEASURED),
        "machine": ", ".join(str(machine[k]) for k in ("device_name", "device", "platform") if machine.get(k))
        or NOT_MEASURED,
        "mlx_version": machine.get("mlx", NOT_MEASURED),
    }


def render(model_dir: str | Path, report: dict | None = None, recipe=None, repo_id: str | None = None) -> str:
    """The card's text: Hub metadata (ModelCardData, EvalResult) and the template's body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    values = context(model_dir, report, recipe)
    values["repo_id"] = repo_id or ((values["recipe"] or {}).get("target") or f"mlx-community/{values['model_name']}")
    results = [EvalResult(task_type="automatic-speech-recognition", task_name="Speech Recognition",
                          dataset_type=s["dataset"], dataset_name=s["name"], dataset_split=s["split"],
                          dataset_config=s["config"], dataset_revision=s["revision"],
                          metric_type=s["metric_key"], metric_name=s["metric"], metric_value=round(100 * s["value"], 4))
               for s in values["sets"] if s["value"] is not None]  # fmt: skip
    extra = {"base_model_relation": "quantized"} if values["quantized"] and values["source"] else {}
    data = ModelCardData(library_name="mlx", license="apache-2.0", pipeline_tag="automatic-speech-recognition",
                         tags=["mlx", "speech-recognition", values["family"]], base_model=values["source"],
                         language=values["languages"], model_name=values["model_name"],
                         eval_results=results or None, **extra)  # fmt: skip
    card = ModelCard.from_template(data, template_path=str(TEMPLATE), **values)
    return str(card)


def write_card(model_dir: str | Path, recipe: str | None = None, report_dir: str | Path | None = None) -> Path:
    """Write MODEL_DIR/README.md; with `report_dir`, first copy its eval.json into MODEL_DIR (keeping
    its time, which publish checks against the model files). Returns the card's path."""
    from .recipe import Recipe
    from .transcribe import read_config

    model_dir = Path(model_dir)
    read_config(model_dir)
    loaded = Recipe.load(recipe) if recipe else None
    target = model_dir / EVAL_JSON_NAME
    if report_dir is not None:
        check_report(model_dir, Path(report_dir) / EVAL_JSON_NAME)
        shutil.copy2(Path(report_dir) / EVAL_JSON_NAME, target)
    report = check_report(model_dir, target) if target.exists() else None
    text = render(model_dir, report, loaded)
    tmp = model_dir / (CARD + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, model_dir / CARD)
    return model_dir / CARD
