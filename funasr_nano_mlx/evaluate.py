"""Evaluate a converted model on speech sets: error rates, speed and memory, a comparison with a
baseline variant, and a report (hypotheses.jsonl, eval.json, and through report.py summary.md and a
PNG plot).

The sets and their rows come from evalsets.py. A row that cannot be scored (missing or unreadable
audio, audio too short, empty reference) stays in the report as a skipped row with its reason.

Every number in eval.json is computed from the per-utterance rows (`aggregate`, `compare`), so a
merge of shards, which only gathers rows, gives exactly the counts of an unsharded run; only the
timings and the peak memory come from other processes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .decoding import DEFAULT_BATCH_SIZE, check_max_new_tokens, describe_budget
from .errors import UserError
from .files import check_destination, json_text, package_version, staged_output
from .modeldir import ModelDir, find_model
from .normalize import normalize, scoring_for
from .report import OPTIONAL, PLOT, REPORT_SHAPE, percent, plot_reports, render_summary, shape_problem
from .scoring import Row, aggregate, compare, score
from .evalsets import EvalSet, Item, check_sets, open_set
from .strict_yaml import parse_json, read_utf8

HYPOTHESES, COMPARISON, EVAL_JSON, SUMMARY = "hypotheses.jsonl", "comparison.jsonl", "eval.json", "summary.md"
REPORT_FORMAT = 1
ROWS_PER_BATCH = 4  # rows read per decoding call, in batches: enough for length-sorted batches to fill
# -- set definitions ------------------------------------------------------------------------------


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n; None -> (0, 1). Row k of a set belongs to shard k mod n."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match:
            raise UserError(f"--shard {shard!r}: expected i/n, e.g. 0/4 (shards are numbered from 0)")
        shard = int(match[1]), int(match[2])
    index, count = shard
    if count < 1:
        raise UserError(f"--shard {index}/{count}: n must be at least 1 (the number of shards)")
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: i must be in 0..{count - 1} (shards are numbered from 0)")
    return index, count


def load_samples(item: Item) -> np.ndarray:
    """16 kHz mono samples of the row's audio; a UserError says why they cannot be had."""
    # audio and transcribe load MLX: imported where used, so merge-reports and plot-reports start at once.
    from .audio import check_duration, read_audio

    if isinstance(item.audio, bytes):  # through a file, so that one loader reads every format
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / f"audio{item.suffix}"
            file.write_bytes(item.audio)
            try:
                samples = _whole(read_audio(file))
            except UserError as err:
                raise UserError(str(err).replace(str(file), item.id)) from None
    else:
        samples = _whole(read_audio(item.audio))
    check_duration(samples, item.id)
    return samples


def _whole(audio) -> np.ndarray:
    """The samples of a file read to its end: a cut-off file, scored against the whole reference,
    would count the missing words as deletions, so its row is skipped, saying why."""
    if audio.cut_short:  # a low sample rate, say, is scored as it is: that is the set
        raise UserError(audio.cut_short)
    return audio.samples


def decode(
    model,
    tokenizer,
    samples: list[np.ndarray],
    language: str | None,
    evalset: EvalSet,
    max_new_tokens: int | None,
    batch_size: int,
) -> list:
    """The one transcription call of an evaluation, the path users run: `transcribe.Transcription`s
    of these rows' audio (segmented if long, batched)."""
    from .transcribe import transcribe_many

    # No CTC timestamps: error rates do not use them, and speed figures stay comparable across variants.
    return list(
        transcribe_many(
            model,
            tokenizer,
            samples,
            language=language,
            itn=evalset.itn,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            timestamps=False,
        )
    )


def _prepared(item: Item, evalset: EvalSet) -> tuple[Row, np.ndarray | None]:
    """The row for an item and its samples, or the row marked skipped (and None) saying why."""
    row = Row(evalset.name, item.index, item.id, item.language, item.reference)
    row.skipped = item.problem or (None if item.reference.strip() else "empty reference")
    if row.skipped is None:  # checked before decoding: such a row costs no inference
        normalizer = scoring_for(item.language, item.reference)[1]
        if not normalize(item.reference, normalizer, evalset.traditional_to_simplified):
            row.skipped = "reference is empty after normalization"
    if row.skipped:
        return row, None
    try:
        return row, load_samples(item)
    except UserError as err:  # unreadable or too short: this row only
        row.skipped = str(err)
        return row, None


def transcribe_items(
    model, tokenizer, items: list[Item], evalset: EvalSet, max_new_tokens: int | None, batch_size: int
) -> list[Row]:
    """Rows for these items, decoded together `batch_size` segments at a time (one call per language)."""
    from .audio import SAMPLE_RATE

    prepared = [_prepared(item, evalset) for item in items]
    languages = {row.language for row, samples in prepared if samples is not None}
    for language in sorted(languages, key=str):
        todo = [(row, samples) for row, samples in prepared if samples is not None and row.language == language]
        results = decode(
            model, tokenizer, [samples for _, samples in todo], language, evalset, max_new_tokens, batch_size
        )
        for (row, samples), result in zip(todo, results):
            timings = result.timings  # this row's share of its batches' time
            row.audio_seconds = len(samples) / SAMPLE_RATE
            row.seconds = sum(timings.get(stage, 0.0) for stage in ("frontend", "encoder", "prefill", "decode"))
            row.generation_seconds = timings.get("prefill", 0.0) + timings.get("decode", 0.0)
            row.hypothesis, row.token_ids = result.text, result.token_ids
            row.hit_token_limit, row.repetition = result.hit_token_limit, result.repetition
            scores = score(row.reference, result.text, row.language, evalset.traditional_to_simplified)
            for key, value in scores.items():
                setattr(row, key, value)
    return [row for row, _ in prepared]


# -- reports ----------------------------------------------------------------------------------------


def _machine() -> dict:
    import mlx.core as mx

    info = mx.device_info()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        **{k: info[k] for k in ("device_name", "architecture", "memory_size") if k in info},
    }


def model_info(model_dir: Path | ModelDir) -> dict:
    """Identity and size of the evaluated model, with the provenance blocks its config.json carries."""
    model = ModelDir.of(model_dir)
    model_dir, config = model.path, model.config
    identity = {
        "name": (model.recipe or {}).get("name") or model_dir.name,
        "path": str(model_dir),
        "size_bytes": model.weights_size,
    }
    return identity | {key: config[key] for key in ("conversion", "quantization_summary", "recipe") if key in config}


def plot(report_dirs: Sequence, png) -> Path:
    """Error rate against model size for the variants whose reports are given, as a PNG."""
    check_destination(png, directory=False, exists_ok=True)
    return plot_reports([read_report(d)[0] for d in report_dirs], Path(png))


# A line of hypotheses.jsonl: Row's fields, by their annotations (one home: the dataclass).
_ROW_TYPES = {
    "str": str,
    "int": int,
    "float": (float, int),
    "bool": bool,
    "str | None": (str, type(None)),
    "list[int]": [int],
}
ROW_SHAPE = {
    f.name + ("" if f.default is MISSING and f.default_factory is MISSING else OPTIONAL): _ROW_TYPES[f.type]
    for f in fields(Row)
}


def _text(file: Path, report_dir: Path) -> str:
    try:
        return read_utf8(file, file.read_bytes())
    except OSError as err:
        raise UserError(
            f"{report_dir} is not an evaluation report (a directory `evaluate --report` wrote): {err.strerror}: {file}"
        ) from None


def read_eval_json(file: Path, report_dir: Path | None = None) -> dict:
    """eval.json, refused in one line naming the file (and line or key) unless it has REPORT_SHAPE."""
    report = parse_json(file, _text(file, report_dir or file.parent))
    if problem := shape_problem(report, REPORT_SHAPE):
        raise UserError(f"{file}: {problem}")
    return report


def read_report(report_dir: str | Path) -> tuple[dict, list[Row]]:
    """eval.json and the rows of hypotheses.jsonl; anything else is refused naming FILE:LINE and the key."""
    report_dir = Path(report_dir)
    report, rows = read_eval_json(report_dir / EVAL_JSON, report_dir), []
    file = report_dir / HYPOTHESES
    for number, line in enumerate(_text(file, report_dir).splitlines(), 1):
        if line.strip():
            data = parse_json(file, line, number)
            problem = shape_problem(data, ROW_SHAPE, "row")
            unknown = set(data) - {f.name for f in fields(Row)} if isinstance(data, dict) else set()
            if problem or unknown:
                raise UserError(f"{file}:{number}: {problem or f'unknown key {sorted(unknown)[0]!r}'}")
            rows.append(Row(**data))
    return report, rows


def _rows(limit: int | None) -> str:
    return "every row" if limit is None else f"the first {limit} rows"


def read_baseline(baseline, max_new_tokens: int | None, limit: int | None) -> tuple[dict, list[Row]]:
    """The baseline's report, which must have been decoded with the same token budget, and on the same
    rows (--limit), to be comparable: a comparison on a subset would check a bound on that subset."""
    report, rows = read_report(baseline)
    if report["settings"].get("limit") != limit:
        raise UserError(
            f"baseline {baseline} evaluated {_rows(report['settings'].get('limit'))} of each set, this "
            f"evaluation {_rows(limit)}: evaluate both alike"
        )
    if report["settings"]["max_new_tokens"] != max_new_tokens:
        theirs = describe_budget(report["settings"]["max_new_tokens"])
        raise UserError(
            f"baseline {baseline} was decoded with {theirs}, this evaluation with "
            f"{describe_budget(max_new_tokens)}: evaluate both alike"
        )
    return report, rows


def _write_report(report_dir: Path, header: dict, sets: dict, rows: list[Row], peaks: dict, baseline) -> dict:

    report = {**header, "sets": {}, "baseline": None}
    for name, definition in sets.items():
        set_rows = [r for r in rows if r.set == name]
        report["sets"][name] = {"definition": definition, **aggregate(set_rows), "peak_memory_bytes": peaks.get(name)}
    lines, reports = [], [report]
    if baseline is not None:
        base_report, base_rows = read_baseline(
            baseline, header["settings"]["max_new_tokens"], header["settings"]["limit"]
        )
        per_set, lines = compare(rows, base_rows)
        report["baseline"] = {
            "name": base_report["model"]["name"],
            "path": str(baseline),
            "size_bytes": base_report["model"]["size_bytes"],
        }
        for name, comparison in per_set.items():
            report["sets"][name]["comparison"] = comparison
        reports.insert(0, base_report)
    # A path with bytes that are not UTF-8 (a set's folder) is held as lone surrogates: the JSON files
    # write them as json_text does (read back as the same path), the summary as the same \udcXX escapes.
    with staged_output(Path(report_dir)) as out:
        (out / HYPOTHESES).write_text("".join(json_text(asdict(r)) + "\n" for r in rows), encoding="utf-8")
        if lines:
            (out / COMPARISON).write_text("".join(json_text(x) + "\n" for x in lines), encoding="utf-8")
        (out / EVAL_JSON).write_text(json_text(report, indent=2) + "\n", encoding="utf-8")
        plot_reports(reports, out / PLOT)
        (out / SUMMARY).write_text(render_summary(report), encoding="utf-8", errors="backslashreplace")
    return report


def evaluate(
    model,
    sets: Sequence[str],
    report_dir,
    limit: int | None = None,
    shard=None,
    baseline=None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    revision: str | None = None,
) -> dict:
    """Transcribe the first `limit` rows of each set (those of shard i/n only) with `model` (a model
    directory, or a hub repo id at `revision`), score them and write the report to `report_dir` (all or nothing); `baseline` is the
    report of the variant to compare with (the bf16 one of the same source). Decoding is transcribe's:
    long rows segmented, `batch_size` segments at a time, `max_new_tokens` None for budgets scaled to
    each segment's length (the scores do not depend on the batch size beyond float rounding).
    Returns eval.json's dict."""
    import mlx.core as mx
    from .transcribe import load

    index, count = parse_shard(shard)
    report_dir = Path(report_dir)
    evalsets = check_sets(sets)
    check_destination(report_dir)  # not after hours of decoding
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if baseline is not None:
        read_baseline(baseline, max_new_tokens, limit)  # fail now, not after hours of decoding
    model_dir = find_model(model, revision)
    opened = {s.name: open_set(s) for s in evalsets}  # every set and column is checked before the model loads
    positions = ModelDir.read(model_dir).config["text_config"]["max_position_embeddings"]
    check_max_new_tokens(max_new_tokens, positions)  # and the token budget
    model, tokenizer = load(model_dir)
    rows, peaks = [], {}
    for evalset in evalsets:
        mx.reset_peak_memory()
        mine = (item for item in islice(opened[evalset.name], limit) if item.index % count == index)
        with tqdm(desc=evalset.name, unit="utt", disable=None) as bar:
            while chunk := list(islice(mine, ROWS_PER_BATCH * batch_size)):
                rows += transcribe_items(model, tokenizer, chunk, evalset, max_new_tokens, batch_size)
                bar.update(len(chunk))
        peaks[evalset.name] = mx.get_peak_memory()
        done = aggregate([r for r in rows if r.set == evalset.name])
        rates = ", ".join(f"{m.upper()} {percent(s['error_rate'])}" for m, s in done["scores"].items())
        print(
            f"[evaluate] {evalset.name}: {done['utterances']} scored, {len(done['skipped'])} skipped"
            + (f"; {rates}" if rates else ""),
            file=sys.stderr,
            flush=True,
        )
    if count == 1:  # one shard of a set may hold only skipped rows; the merge checks the whole set
        require_scored(rows, [s.name for s in evalsets], "evaluate")
    header = {
        "format": REPORT_FORMAT,
        "model": model_info(model_dir),
        "package_version": package_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": {"max_new_tokens": max_new_tokens, "limit": limit, "shard": index, "shards": count},
    }
    return _write_report(report_dir, header, {s.name: s.describe() for s in evalsets}, rows, peaks, baseline)


def require_scored(rows: list[Row], set_names: list[str], command: str) -> None:
    """Refuse a report in which a set has no scored row: it would measure nothing, and a card or an
    acceptance check reading it would have no error rate to show."""
    for name in set_names:
        reasons = [row.skipped for row in rows if row.set == name]
        if all(reasons):
            first = reasons[0] if reasons else "the set has no rows"
            raise UserError(f"{command}: set {name}: no row was scored (the first was skipped: {first})")


def merge(shard_report_dirs: Sequence, out_dir, baseline=None) -> dict:
    """One report from the reports of shards 0..n-1 of one evaluation: the rows of all shards in set
    order, every number recomputed from them (peak memory: the largest of the shards')."""
    check_destination(Path(out_dir))
    shards = [read_report(d) for d in shard_report_dirs]
    if not shards:
        raise UserError("merge: give the report directories of the shards")
    for (report, _), directory in zip(shards, shard_report_dirs):
        if report["settings"]["shard"] is None:
            raise UserError(f"merge: {directory} is a merged report, not one shard's: give the shards' reports")
    first = shards[0][0]
    count = first["settings"]["shards"]
    found = sorted(report["settings"]["shard"] for report, _ in shards if report["settings"]["shards"] == count)
    if found != list(range(count)):
        raise UserError(f"merge: expected shards 0..{count - 1} of {count} once each, found {found}")
    for (report, _), directory in zip(shards, shard_report_dirs):
        same = ("model", "name"), ("model", "size_bytes"), ("settings", "max_new_tokens"), ("settings", "limit")
        differs = [f"{a}.{b}" for a, b in same if report[a][b] != first[a][b]]
        if differs or {n: s["definition"] for n, s in report["sets"].items()} != {
            n: s["definition"] for n, s in first["sets"].items()
        }:
            raise UserError(
                f"merge: {directory} is not a shard of the same evaluation ({', '.join(differs) or 'sets'} differ)"
            )
    order = {name: i for i, name in enumerate(first["sets"])}
    rows = sorted((row for _, shard_rows in shards for row in shard_rows), key=lambda r: (order[r.set], r.index))
    peaks = {name: max(report["sets"][name]["peak_memory_bytes"] or 0 for report, _ in shards) for name in order}
    require_scored(rows, list(order), "merge")
    header = {key: value for key, value in first.items() if key not in ("sets", "baseline")}
    header["settings"] = {**first["settings"], "shard": None, "merged_from": [str(d) for d in shard_report_dirs]}
    return _write_report(
        Path(out_dir), header, {n: s["definition"] for n, s in first["sets"].items()}, rows, peaks, baseline
    )


def answers(
    report_dir, sets: Sequence[str], limit: int | None = None, max_new_tokens: int | None = None, baseline=None
) -> bool:
    """Whether the report in `report_dir` is the evaluation asked for now: an unsharded run of these
    sets (as defined now), with this row limit and token limit, against this baseline report."""
    try:
        report = json.loads((Path(report_dir) / EVAL_JSON).read_text())
        recorded = {name: data["definition"] for name, data in report["sets"].items()}
        settings, base = report["settings"], report["baseline"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted = {s.name: json.loads(json.dumps(s.describe())) for s in map(EvalSet.load, sets)}
    return (
        recorded == wanted
        and list(recorded) == list(wanted)
        and settings.get("shards") == 1
        and settings.get("limit") == limit
        and settings.get("max_new_tokens") == max_new_tokens
        and (base and Path(base["path"]).resolve()) == (baseline and Path(baseline).resolve())
    )
