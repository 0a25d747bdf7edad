"""The model card (README.md of a published repo), rendered from model_cards/template.md with
huggingface_hub's `ModelCard.from_template`, from the model's config.json, its evaluation report, its
benchmark record (when there is one) and the upstream published figures (model_cards/upstream_figures.yaml).

Every measured figure comes from config.json (`conversion`, `quantization_summary`, `recipe`),
eval.json or benchmark.json; a figure that is missing is shown as "not measured". A card is refused
when a figure falls outside the recipe's acceptance bound. This module only gathers, checks and
formats values: all text about a variant lives in the template.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import yaml

from .decoding import describe_budget
from .errors import UserError
from .files import check_destination, link_or_copy, package_version, staged_output, write_text_atomic
from .hub import COMMIT, REPO_ID
from .languages import LANGUAGES
from .modeldir import ModelDir
from .packaged import MODEL_CARDS_DIR
from .recipe import Acceptance, Recipe
from .report import shape_problem
from .strict_yaml import parse_json, read_utf8

TEMPLATE = MODEL_CARDS_DIR / "template.md"
FIGURES = MODEL_CARDS_DIR / "upstream_figures.yaml"
CARD, EVAL_JSON_NAME, BENCHMARK = "README.md", "eval.json", "benchmark.json"
NOT_MEASURED = "not measured"
DTYPE_BITS = {"bfloat16": 16, "float32": 32}
# Languages each source family was trained on (the official model cards); others: the evaluated ones.
FAMILY_LANGUAGES = {"fun-asr-nano": ("zh", "en", "ja")}
COMPONENT_LABELS = {
    "audio_encoder": "audio encoder (SAN-M)",
    "audio_adaptor": "audio adaptor",
    "llm": "LLM (Qwen3, without embeddings)",
    "embeddings": "embeddings / tied LM head",
}
CTC_LABEL = "CTC timestamp head"  # a row of its own where the model has one
# A benchmark record's per-clip figures (bench/speed.py's JSON lines): key -> (label, format).
BENCHMARK_FIGURES = {
    "audio_s": ("audio", "g", " s"),
    "ttft_ms": ("time to first token", ".1f", " ms"),
    "decode_ms_per_token": ("decode", ".2f", " ms/token"),
    "total_ms": ("total", ".0f", " ms"),
    "tokens": ("tokens", "d", ""),
    "peak_mem_gb": ("peak memory", ".2f", " GB"),
}


def model_files(model_dir: Path) -> list[Path]:
    """The files that define the model (weights, config, tokenizer): not the card, report or benchmark."""
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.relative_to(model_dir).parts[0] not in (CARD, EVAL_JSON_NAME, BENCHMARK, ".cache")
    )


def identity(model_dir: Path | ModelDir) -> dict:
    """What eval.json's `model` block must match for the report to describe this model."""
    from .evaluate import model_info

    return {k: v for k, v in model_info(model_dir).items() if k not in ("name", "path")}


def check_report(model_dir: str | Path | ModelDir, eval_json: str | Path) -> dict:
    """eval.json's contents, after checking it exists, is newer than the model files and describes
    this very model (its size and provenance blocks); a UserError says what is wrong."""
    model = ModelDir.of(model_dir)
    model_dir, eval_json = model.path, Path(eval_json)
    if not eval_json.is_file():
        raise UserError(
            f"no evaluation report {eval_json}: evaluate the model first "
            f"(funasr-nano-mlx evaluate {model_dir} --set ... --report DIR; card --eval DIR)"
        )
    from .evaluate import read_eval_json

    report = read_eval_json(eval_json)
    recorded = {k: v for k, v in report["model"].items() if k not in ("name", "path")}
    newest = max(model_files(model_dir), key=lambda p: p.stat().st_mtime)
    if eval_json.stat().st_mtime < newest.stat().st_mtime:
        raise UserError(
            f"{eval_json} is older than {newest}: the model changed after its evaluation; evaluate it again"
        )
    mine = identity(model)
    if recorded != mine:
        differs = sorted(k for k in mine.keys() | recorded.keys() if mine.get(k) != recorded.get(k))
        raise UserError(
            f"{eval_json} evaluated another model ({', '.join(differs)} differ from {model_dir}): evaluate this one"
        )
    return report


# What a benchmark record holds; the figures of each row are read leniently (a missing one is "not measured").
BENCHMARK_SHAPE = {"recipe": str, "machine": str, "date": str, "command": str, "results": [dict]}


def read_benchmark(file: Path, recipe_block: dict | None) -> dict:
    """A benchmark record of this variant: {"recipe", "machine", "date", "command", "results": [per-clip
    figures as bench/speed.py prints them]}, read strictly: anything else is refused in one line naming
    the file and the key (or line). One of another recipe is refused: a figure is never carried over
    from another variant."""
    file = Path(file)
    not_one = f"{file} is not a benchmark record ({{recipe, machine, date, command, results}})"
    try:
        data = file.read_bytes()
    except OSError as err:
        raise UserError(f"{not_one}: {err.strerror}") from None
    record = parse_json(file, read_utf8(file, data))
    if problem := shape_problem(record, BENCHMARK_SHAPE):
        raise UserError(f"{not_one}: {problem}")
    fields = {key: record[key] for key in ("recipe", "machine", "date", "command")}
    results = [row for row in record["results"] if row.get("impl", "ours") == "ours"]
    if not all(fields.values()) or not results:
        raise UserError(
            f"{file}: recipe, machine, date and command must not be empty, and results must hold this "
            'package\'s figures (impl absent or "ours")'
        )
    mine = (recipe_block or {}).get("name")
    if fields["recipe"] != mine:
        raise UserError(
            f"{file} is a benchmark of recipe {fields['recipe']}, but this model was built "
            f"{f'by recipe {mine}' if mine else 'without a recipe'}: benchmark this variant"
        )
    return {**fields, "results": results}


def check_acceptance(recipe_block: dict | None, report: dict | None) -> None:
    """Refuse a report with an error-rate delta against the bf16 baseline outside the recipe's
    acceptance bound (config.json's recipe block carries it), or one that cannot show the delta."""
    if not (recipe_block or {}).get("acceptance"):
        return
    name, acceptance = recipe_block.get("name"), Acceptance.from_dict(recipe_block["acceptance"])
    if report is None:
        raise UserError(
            f"recipe {name} has an acceptance bound, and there is no evaluation report to check it: "
            "evaluate the model first"
        )
    outside = []
    for set_name, data in report["sets"].items():
        bound, where = acceptance.bound_for(set_name), acceptance.field_for(set_name)
        if bound is None:
            continue
        scores = (data.get("comparison") or {}).get("scores")
        if not scores:
            raise UserError(
                f"acceptance: set {set_name} has no comparison with the bf16 baseline in eval.json, so "
                f"recipe {name}'s bound of {bound:g} points ({where}) cannot be checked: evaluate it "
                "against the baseline's report (run does)"
            )
        for metric, s in scores.items():
            if 100 * s["delta"] > bound + 1e-9:
                outside.append(
                    f"set {set_name} {metric.upper()} is {100 * s['delta']:+.2f} points against "
                    f"{report['baseline']['name']} ({100 * s['baseline']:.2f}% -> {100 * s['variant']:.2f}%), "
                    f"outside recipe {name}'s bound of {bound:g} points ({where})"
                )
    if outside:
        raise UserError("acceptance: " + "; ".join(outside))


def published_figures(source: str | None) -> tuple[list[dict], list[dict]]:
    """The upstream published figures for `source` (a hub repo id) and the sources they cite, from
    model_cards/upstream_figures.yaml: ([{set, value, metric, eval_set, note}], [{id, citation, url}])."""
    data = yaml.safe_load(FIGURES.read_text(encoding="utf-8"))
    model = (data.get("models") or {}).get(source or "") or {}
    figures = model.get("figures", [])
    cited = list(dict.fromkeys(f["source"] for f in figures))
    sources = [{"id": i + 1, **data["sources"][key]} for i, key in enumerate(cited)]
    notes = {key: i + 1 for i, key in enumerate(cited)}
    rows = [
        {
            "set": f["set"],
            "value": f"{f['value']}",
            "metric": model["metric"],
            "model": model["model"],
            "eval_set": f.get("eval_set"),
            "note": notes[f["source"]],
        }
        for f in figures
    ]
    return rows, sources


def _num(value, spec: str = "", suffix: str = "") -> str:
    return NOT_MEASURED if value is None else f"{value:{spec}}{suffix}"


def _pct(value) -> str:
    return _num(None if value is None else 100 * value, ".2f", "%")


def _bytes(value) -> str:
    return _num(None if value is None else value / 1e6, ",.1f", " MB")


def _source(config: dict, recipe: dict | None) -> tuple[str | None, str | None]:
    """(hub repo id or None for a local source, commit or None). The commit is the recipe's pin, or for
    a pin by content (a branch and model.pt's SHA-256) the one its download resolved, which conversion
    recorded as SOURCE@COMMIT."""
    converted_repo, _, converted_revision = str(config.get("conversion", {}).get("source", "")).partition("@")
    repo = (recipe or {}).get("source") or converted_repo
    revision = (recipe or {}).get("revision")
    if not COMMIT.fullmatch(revision or ""):
        revision = converted_revision or revision
    return (repo if REPO_ID.fullmatch(repo or "") else None), revision


def family_of(source: str) -> str:
    """'FunAudioLLM/Fun-ASR-Nano-2512' -> 'fun-asr-nano' (the name without its release number)."""
    name = Path(source.partition("@")[0]).name.lower()
    return re.sub(r"-\d+$", "", name)


def _components(config: dict) -> list[dict]:
    summary, converted = config.get("quantization_summary"), config.get("conversion", {}).get("dtype")
    labels = COMPONENT_LABELS | ({"ctc": CTC_LABEL} if config.get("timestamps") else {})
    rows = []
    for key, label in labels.items():
        dtype = "float32" if key == "ctc" and converted else converted  # the head is kept in float32 (convert.py)
        part = (summary or {}).get("components", {}).get(key)
        quant = part and part.get("quantization") and part.get("quantized_layers") and part["quantization"]
        bpw = part.get("bits_per_weight") if part else DTYPE_BITS.get(dtype)
        rows.append(
            {
                "name": label,
                "quantized": bool(quant),
                "dtype": dtype or NOT_MEASURED,
                "bits": quant["bits"] if quant else NOT_MEASURED if not dtype else DTYPE_BITS.get(dtype, dtype),
                "group_size": quant["group_size"] if quant else "-",
                "mode": quant["mode"] if quant else "-",
                "layers": f"{part['quantized_layers']}/{part['layers']}" if part else "-",
                "bits_per_weight": _num(bpw, "g"),
            }
        )
    return rows


def _benchmark(record: dict | None) -> dict | None:
    if record is None:
        return None
    rows = [
        {
            key: _num(
                row.get(key) if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]) else None,
                spec,
                suffix,
            )
            for key, (_, spec, suffix) in BENCHMARK_FIGURES.items()
        }
        for row in record["results"]
    ]
    labels = [label for label, _, _ in BENCHMARK_FIGURES.values()]
    return {
        **{k: record[k] for k in ("machine", "date", "command")},
        "labels": labels,
        "rows": [list(row.values()) for row in rows],
    }


def _acceptance(recipe_block: dict | None) -> dict | None:
    acceptance = (recipe_block or {}).get("acceptance")
    if not acceptance:
        return None
    default = acceptance.get("max_error_rate_delta")
    return {
        "default": None if default is None else f"{default:g}",
        "sets": [
            (name, f"{bound['max_error_rate_delta']:g}") for name, bound in (acceptance.get("sets") or {}).items()
        ],
    }


def context(
    model_dir: str | Path | ModelDir,
    report: dict | None = None,
    recipe=None,
    repo_id: str | None = None,
    benchmark: dict | None = None,
) -> dict:
    """Everything the template shows, formatted, from config.json, eval.json, the benchmark record,
    the recipe and the published figures; `repo_id` is where the card is published (default: the
    recipe's target)."""

    model = ModelDir.of(model_dir)
    model_dir, config = model.path, model.config
    recipe_block = model.recipe or (recipe.provenance() if recipe is not None else None)
    conversion, summary = model.conversion, model.quantization_summary
    source, revision = _source(config, recipe_block)
    family = family_of(source or conversion.get("source") or model_dir.name)
    size = (
        (summary or {}).get("size_bytes")
        or ((report or {}).get("model") or {}).get("size_bytes")
        or model.weights_size
        or None
    )
    components = _components(config)
    published, published_sources = published_figures(source)
    published_by_set = {f["eval_set"]: f for f in published if f["eval_set"]}
    sets, evaluated_languages = [], []
    for name, data in ((report or {}).get("sets") or {}).items():
        definition = data.get("definition", {})
        if definition.get("language"):
            evaluated_languages.append(definition["language"])
        comparison = (data.get("comparison") or {}).get("scores", {})
        upstream = published_by_set.get(name)
        for metric, scores in data.get("scores", {}).items() or [("-", {})]:
            cmp = comparison.get(metric)
            sets.append(
                {
                    "name": name,
                    "dataset": definition.get("dataset") or definition.get("path") or name,
                    "split": definition.get("split"),
                    "config": definition.get("config"),
                    "revision": definition.get("revision"),
                    "metric": metric.upper(),
                    "metric_key": metric,
                    "value": scores.get("error_rate"),
                    "error_rate": _pct(scores.get("error_rate")),
                    "utterances": _num(scores.get("utterances")),
                    "baseline": _pct(cmp["baseline"]) if cmp else NOT_MEASURED,
                    "delta": f"{100 * cmp['delta']:+.2f} [{100 * cmp['delta_ci95'][0]:+.2f}, "
                    f"{100 * cmp['delta_ci95'][1]:+.2f}]"
                    if cmp
                    else NOT_MEASURED,
                    "published": f"{upstream['value']}% [{upstream['note']}]" if upstream else "-",
                    "rtf": _num(data.get("real_time_factor"), ".3f"),
                    "tokens_per_second": _num(data.get("tokens_per_second"), ".1f"),
                    "peak_memory": _num(data["peak_memory_bytes"] / 2**30, ".2f", " GiB")
                    if data.get("peak_memory_bytes")
                    else NOT_MEASURED,
                }
            )
    machine = (report or {}).get("machine") or {}
    quantized = [c for c in components if c["quantized"]]
    repo_id = repo_id or (recipe_block or {}).get("target") or None
    model_name = repo_id.split("/")[-1] if repo_id else model_dir.name
    return {
        "repo_id": repo_id or f"mlx-community/{model_name}",
        "model_name": model_name,
        "recipe": recipe_block,
        "source": source,
        "revision": revision or NOT_MEASURED,
        "family": family,
        "source_label": conversion.get("source", NOT_MEASURED),
        "model_pt_sha256": conversion.get("model_pt_sha256", NOT_MEASURED),
        "dtype": conversion.get("dtype", NOT_MEASURED),
        "package_version": conversion.get("package_version", package_version()),
        "conversion_notes": conversion.get("notes", []),
        "quantized": bool(quantized),
        "is_baseline": not quantized and conversion.get("dtype") == "bfloat16",
        "mlx_audio": not any(c["quantized"] for c in components[:2]),  # quantized only under llm.model
        "timestamps": bool(config.get("timestamps")),  # the CTC head was kept at conversion
        "components": components,
        "bits_per_weight": _num(
            (summary or {}).get("bits_per_weight")
            or (DTYPE_BITS.get(conversion.get("dtype")) if not summary else None),
            "g",
        ),
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
        "acceptance": _acceptance(recipe_block),
        "published": published,
        "published_sources": published_sources,
        "published_beside": any(s["published"] != "-" for s in sets),
        "benchmark": _benchmark(benchmark),
        "eval_date": (report or {}).get("date", NOT_MEASURED),
        "eval_settings": (report or {}).get("settings", {}),
        "eval_budget": describe_budget((report or {}).get("settings", {}).get("max_new_tokens")),
        "eval_package_version": (report or {}).get("package_version", NOT_MEASURED),
        "machine": ", ".join(str(machine[k]) for k in ("device_name", "device", "platform") if machine.get(k))
        or NOT_MEASURED,
        "mlx_version": machine.get("mlx", NOT_MEASURED),
    }


def render(
    model_dir: str | Path | ModelDir,
    report: dict | None = None,
    recipe=None,
    repo_id: str | None = None,
    benchmark: dict | None = None,
) -> str:
    """The card's text: Hub metadata (ModelCardData, EvalResult) and the template's body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    values = context(model_dir, report, recipe, repo_id, benchmark)
    results = [
        EvalResult(
            task_type="automatic-speech-recognition",
            task_name="Speech Recognition",
            dataset_type=s["dataset"],
            dataset_name=s["name"],
            dataset_split=s["split"],
            dataset_config=s["config"],
            dataset_revision=s["revision"],
            metric_type=s["metric_key"],
            metric_name=s["metric"],
            metric_value=round(100 * s["value"], 4),
        )
        for s in values["sets"]
        if s["value"] is not None
    ]
    extra = {"base_model_relation": "quantized"} if values["quantized"] and values["source"] else {}
    data = ModelCardData(
        library_name="mlx",
        license="apache-2.0",
        pipeline_tag="automatic-speech-recognition",
        tags=["mlx", "speech-recognition", values["family"]],
        base_model=values["source"],
        language=values["languages"],
        model_name=values["model_name"],
        eval_results=results or None,
        **extra,
    )
    card = ModelCard.from_template(data, template_path=str(TEMPLATE), **values)
    return str(card)


def _recipe(recipe, config: dict):
    """The Recipe given for a card (a name, a file or a Recipe), which must be the one config.json names."""
    if recipe is None:
        return None
    loaded = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)
    built = config.get("recipe")
    if built and (built.get("name"), built.get("file_sha256")) != (loaded.name, loaded.file_sha256):
        raise UserError(
            f"this model was built by recipe {built.get('name')} (file SHA-256 {built.get('file_sha256')}), "
            f"not by {loaded.name} ({loaded.file_sha256}): leave --recipe out, its config.json names it"
        )
    return loaded


def recipe_block(config: dict, recipe=None) -> dict | None:
    """The recipe's provenance block: config.json's, else that of the recipe given for the card."""
    loaded = _recipe(recipe, config)
    return config.get("recipe") or (loaded.provenance() if loaded else None)


def _inputs(model: ModelDir, recipe=None) -> tuple[object, dict | None, dict | None]:
    """(recipe, report, benchmark) of a model directory as the card reads them."""
    loaded = _recipe(recipe, model.config)
    block = recipe_block(model.config, loaded)
    folder = model.path
    report = check_report(model, folder / EVAL_JSON_NAME) if (folder / EVAL_JSON_NAME).exists() else None
    benchmark = read_benchmark(folder / BENCHMARK, block) if (folder / BENCHMARK).exists() else None
    return loaded, report, benchmark


def write_card(
    model_dir: str | Path | ModelDir,
    recipe=None,
    report_dir: str | Path | None = None,
    repo_id: str | None = None,
    benchmark: str | Path | None = None,
) -> Path:
    """Write MODEL_DIR/README.md for publishing to `repo_id` (default: the recipe's target). With
    `report_dir`, its eval.json is copied into MODEL_DIR first, keeping its time (which publish checks
    against the model files); with `benchmark`, that record becomes MODEL_DIR/benchmark.json. Refused,
    with nothing written, when a figure is outside the recipe's acceptance bound. Returns the card's path."""
    model = ModelDir.of(model_dir)
    model_dir = model.path
    loaded = _recipe(recipe, model.config)
    block = recipe_block(model.config, loaded)
    if repo_id is not None and not REPO_ID.fullmatch(repo_id):
        raise UserError(f"--repo {repo_id!r}: expected ORG/NAME")
    # Everything is checked before anything is written.
    check_destination(model_dir / CARD, directory=False, exists_ok=True)
    report_file = Path(report_dir) / EVAL_JSON_NAME if report_dir is not None else model_dir / EVAL_JSON_NAME
    report = check_report(model, report_file) if report_dir is not None or report_file.exists() else None
    if benchmark is not None:
        read_benchmark(Path(benchmark), block)
    check_acceptance(block, report)
    if report_dir is not None:
        shutil.copy2(report_file, model_dir / EVAL_JSON_NAME)
    if benchmark is not None:
        shutil.copy2(benchmark, model_dir / BENCHMARK)
    _, report, record = _inputs(model, loaded)
    write_text_atomic(model_dir / CARD, render(model, report, loaded, repo_id, record))
    return model_dir / CARD


def check_card(model_dir: str | Path | ModelDir, recipe=None, repo_id: str | None = None) -> None:
    """README.md must be exactly the card that renders now from the files beside it for `repo_id`:
    not edited by hand, and not stale (report, benchmark, template, figures or repo changed since)."""
    folder = model_dir.path if isinstance(model_dir, ModelDir) else Path(model_dir)
    card = folder / CARD
    if not card.is_file():
        raise UserError(f"{folder} has no {CARD}: write the card first (funasr-nano-mlx card {folder} --eval REPORT)")
    model = ModelDir.of(model_dir)
    loaded, report, record = _inputs(model, recipe)
    fresh = render(model, report, loaded, repo_id, record).splitlines()
    mine = card.read_text(encoding="utf-8").splitlines()
    if mine != fresh:
        line = next((i for i, (a, b) in enumerate(zip(mine, fresh)) if a != b), min(len(mine), len(fresh))) + 1
        repo = repo_id or (model.recipe or {}).get("target") or "ORG/NAME"
        raise UserError(
            f"{card} is not the card that renders now from {folder} for {repo} (first difference at "
            f"line {line}): it was edited, or is stale; write it again (funasr-nano-mlx card {folder} "
            f"--repo {repo}) and change the template, not the card"
        )


def is_current(model_dir: Path, recipe=None, repo_id: str | None = None, benchmark: Path | None = None) -> bool:
    """Whether a card directory is what the card stage would write now (for `run`'s up-to-date check)."""
    try:
        check_card(model_dir, recipe, repo_id)
    except UserError:
        return False
    mine = Path(model_dir) / BENCHMARK
    return (
        not mine.exists() if benchmark is None else mine.is_file() and mine.read_bytes() == Path(benchmark).read_bytes()
    )


def card_dir(
    model_dir: str | Path,
    report_dir: str | Path,
    dst: str | Path,
    recipe=None,
    repo_id: str | None = None,
    benchmark: str | Path | None = None,
) -> Path:
    """The card stage: DST (all or nothing) holds what is published: the model's files (hard links
    where possible), eval.json from `report_dir`, benchmark.json when given, and README.md."""
    model_dir, dst = Path(model_dir), Path(dst)
    with staged_output(dst) as out:
        for path in model_files(model_dir):
            link_or_copy(path, out / path.relative_to(model_dir))
        write_card(out, recipe, report_dir, repo_id, benchmark)
    return dst
