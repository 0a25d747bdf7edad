"""Rendering of evaluation reports: the Markdown summary (scores, the comparison with a baseline,
skipped rows) and the plot of error rate against model size. Pure formatting over eval.json's dict;
evaluate.py computes and writes the numbers.
"""

from __future__ import annotations

import io
from pathlib import Path

from .decoding import describe_budget
from .files import write_bytes_atomic
from .scoring import BOOTSTRAP_SAMPLES
from .strict_yaml import short

PLOT = "error_rate_vs_size.png"  # beside summary.md, which shows it

# The shape of eval.json as this package reads it back (merge-reports, plot-reports, --baseline, card):
# a report edited or cut short is refused naming its first wrong key, instead of failing deep in the
# rendering. Written by hand: no dependency validates JSON, and the shape is small.
EACH = "*"  # every key of a mapping
OPTIONAL = "?"  # a key so suffixed may be absent
NUMBER, MAYBE_NUMBER, MAYBE_INT = (int, float), (int, float, type(None)), (int, type(None))
SCORES = {
    "error_rate": MAYBE_NUMBER,
    **dict.fromkeys(("substitutions", "deletions", "insertions", "reference_tokens", "utterances"), int),
}
COMPARISON = {
    "scores": {EACH: {"baseline": NUMBER, "variant": NUMBER, "delta": NUMBER, "delta_ci95": [NUMBER]}},
    "changed_most": [dict],
}
REPORT_SHAPE = {
    "model": {"name": str, "size_bytes": int},
    "package_version": str,
    "date": str,
    "machine": {"platform": str, "device": str, "mlx": str},
    "settings": {"max_new_tokens": MAYBE_INT, "limit": MAYBE_INT, "shard": MAYBE_INT, "shards": int},
    "sets": {
        EACH: {
            "definition": dict,
            "scores": {EACH: SCORES},
            "skipped": [{"index": int, "id": str, "reason": str}],
            "audio_hours": NUMBER,
            "real_time_factor": MAYBE_NUMBER,
            "tokens_per_second": MAYBE_NUMBER,
            "hit_token_limit": int,
            "peak_memory_bytes": MAYBE_INT,
            "comparison" + OPTIONAL: (COMPARISON, type(None)),
        }
    },
    "baseline": ({"name": str, "size_bytes": int}, type(None)),
}


def shape_problem(value, shape, where: str = "") -> str | None:
    """`where: problem` for the first place `value` departs from `shape` (None: it fits). A shape is a
    type or tuple of them (exact: `true` is not a count), a dict of keys (EACH: every key), a one-item
    list (every item), or a tuple of alternatives that may hold a dict shape."""
    alternatives = shape if isinstance(shape, tuple) else (shape,)
    if all(isinstance(one, type) for one in alternatives):
        if type(value) in alternatives:
            return None
        wanted = " or ".join(one.__name__.replace("NoneType", "null") for one in alternatives)
        return f"{where}: expected {wanted}, found {short(value)}"
    problems = [_one_shape_problem(value, one, where) for one in alternatives]
    return None if None in problems else next(p for p in problems if p)


def _one_shape_problem(value, shape, where: str) -> str | None:
    if isinstance(shape, list):
        if type(value) is not list:
            return f"{where}: expected a list, found {short(value)}"
        items = ((item, f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for item, path in items if (p := shape_problem(item, shape[0], path))), None)
    if not isinstance(shape, dict):
        return shape_problem(value, shape, where)
    if type(value) is not dict:
        return f"{where or 'the file'}: expected an object, found {short(value)}"
    keys = [(key, shape[EACH], False) for key in value] if EACH in shape else []
    keys += [(key.removesuffix(OPTIONAL), sub, key.endswith(OPTIONAL)) for key, sub in shape.items() if key != EACH]
    for key, sub, optional in keys:
        path = f"{where}.{key}" if where else key
        if key not in value:
            if optional:
                continue
            return f"{path}: is missing"
        if problem := shape_problem(value[key], sub, path):
            return problem
    return None


def plot_reports(reports: list[dict], png: Path) -> Path:
    # No pyplot: no global state, no display needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    series: dict[str, list[tuple[float, float]]] = {}
    for report in reports:
        size = report["model"]["size_bytes"] / 1e6
        for name, data in report["sets"].items():
            for metric, scores in data["scores"].items():
                if scores["error_rate"] is not None:
                    series.setdefault(f"{name} ({metric.upper()})", []).append((size, 100 * scores["error_rate"]))
    for label, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=label)
    sizes = {report["model"]["size_bytes"] / 1e6: report["model"]["name"] for report in reports}
    ax.set_xticks(list(sizes), [f"{name}\n{size:,.0f} MB" for size, name in sizes.items()], fontsize=8)
    ax.set_xlabel("model size (weights)")
    ax.set_ylabel("error rate (%)")
    ax.set_title("Error rate against model size")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    write_bytes_atomic(png, image.getvalue())  # all or nothing, a failed write in one line
    return png


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_summary(report: dict) -> str:
    model, settings, machine = report["model"], report["settings"], report["machine"]
    shard = (
        f", shard {settings['shard']}/{settings['shards']}"
        if settings["shard"] is not None and settings["shards"] > 1
        else ""
    )
    merged = f", merged from {len(settings['merged_from'])} shards" if settings.get("merged_from") else ""
    out = [
        f"# Evaluation of {model['name']}",
        "",
        f"{model['size_bytes'] / 1e6:,.0f} MB of weights; funasr-nano-mlx {report['package_version']}; "
        f"{report['date']}; {machine.get('device_name', machine['platform'])} ({machine['device']}, MLX {machine['mlx']}); "
        + describe_budget(settings["max_new_tokens"])
        + (f", first {settings['limit']} rows per set" if settings["limit"] else "")
        + shard
        + merged
        + ".",
        "",
        "| set | metric | error rate | S | D | I | ref. tokens | utterances | skipped | audio h | RTF | tokens/s | peak memory | hit token limit | loop stopped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in report["sets"].items():
        speed = (
            f"{data['real_time_factor']:.3f}" if data["real_time_factor"] is not None else "n/a",
            f"{data['tokens_per_second']:.1f}" if data["tokens_per_second"] is not None else "n/a",
        )
        memory = f"{data['peak_memory_bytes'] / 2**30:.2f} GiB" if data["peak_memory_bytes"] else "n/a"
        for metric, s in data["scores"].items() or [("-", None)]:
            counts = (
                [s[k] for k in ("substitutions", "deletions", "insertions", "reference_tokens", "utterances")]
                if s
                else [""] * 5
            )
            out.append(
                f"| {name} | {metric.upper()} | {percent(s and s['error_rate'])} | "
                + " | ".join(map(str, counts))
                + f" | {len(data['skipped'])} | {data['audio_hours']:.3f} | {speed[0]} | {speed[1]} | {memory} | "
                f"{data['hit_token_limit']} | {data.get('repetition', 0)} |"
            )
    if report["baseline"]:
        out += _render_comparison(report)
    skipped = [(name, s) for name, data in report["sets"].items() for s in data["skipped"]]
    out += ["", f"## Skipped rows ({len(skipped)})", ""]
    out += [f"- {name} row {s['index']} ({cell(s['id'])}): {cell(s['reason'])}" for name, s in skipped] or ["None."]
    out += ["", f"![error rate against model size]({PLOT})", ""]
    return "\n".join(out)


def _render_comparison(report: dict) -> list[str]:
    base = report["baseline"]
    out = [
        "",
        f"## Against {base['name']} ({base['size_bytes'] / 1e6:,.0f} MB)",
        "",
        (
            "Token agreement: aligned identical tokens over the longer sequence, averaged over utterances; delta: "
            f"this variant minus the baseline, with a paired bootstrap 95% interval ({BOOTSTRAP_SAMPLES} resamples)."
        ),
        "",
        "| set | metric | baseline | this variant | delta, points [95% interval] | token agreement | identical | compared |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    changed = []
    for name, data in report["sets"].items():
        comparison = data.get("comparison")
        if not comparison:
            continue
        for metric, s in comparison["scores"].items():
            low, high = s["delta_ci95"]
            out.append(
                f"| {name} | {metric.upper()} | {percent(s['baseline'])} | {percent(s['variant'])} | "
                f"{100 * s['delta']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | {100 * s['token_agreement']:.1f}% | "
                f"{100 * s['identical']:.1f}% | {s['utterances']} |"
            )
        changed += [(name, c) for c in comparison["changed_most"]]
    out += ["", "### Utterances that changed most", ""]
    if not changed:
        return out + ["None: every compared utterance has the baseline's tokens."]
    out += [
        "| set | row | reference | baseline | this variant | errors | agreement |",
        "|---|---|---|---|---|---:|---:|",
    ]
    return out + [
        f"| {name} | {c['index']} | {cell(c['reference'])} | {cell(c['baseline'])} | {cell(c['variant'])} | "
        f"{c['baseline_errors']} → {c['errors']} | {100 * c['token_agreement']:.0f}% |"
        for name, c in changed
    ]
