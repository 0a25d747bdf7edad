"""Scoring, pure: one utterance's error counts (normalized text aligned with jiwer), a set's numbers
from its rows, and the comparison of a variant with its baseline (token agreement, error-rate delta
with a paired bootstrap interval). numpy and jiwer only: no model, no files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UserError
from .normalize import normalize, scoring_for

BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 0  # seeded: the same rows always give the same interval
CHANGED_MOST = 10  # utterances listed per set where the variant and its baseline differ most


@dataclass
class Row:
    """One utterance's result: a line of hypotheses.jsonl."""

    set: str
    index: int  # position in the set, the key that merges and comparisons join on
    id: str
    language: str | None
    reference: str
    metric: str = ""  # "wer" or "cer"; "" when skipped before scoring
    hypothesis: str = ""
    normalized_reference: str = ""  # the scoring tokens, space-separated
    normalized_hypothesis: str = ""
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    token_ids: list[int] = field(default_factory=list)
    hit_token_limit: bool = False
    repetition: bool = False  # decoding was stopped by the repetition guard (a loop cut to one copy)
    audio_seconds: float = 0.0
    seconds: float = 0.0  # wall time of transcribe: frontend, encoder, prefill, decode
    generation_seconds: float = 0.0  # prefill + decode
    skipped: str | None = None  # why the row was not scored

    TIMING_FIELDS = ("seconds", "generation_seconds")

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_tokens(self) -> int:
        return self.substitutions + self.deletions + self.hits


def score(reference: str, hypothesis: str, language: str | None, traditional_to_simplified: bool = False) -> dict:
    """Normalize both texts for `language` and align them with jiwer: metric, tokens, S/D/I/hits."""
    import jiwer

    metric, normalizer = scoring_for(language, reference)
    ref, hyp = (normalize(text, normalizer, traditional_to_simplified) for text in (reference, hypothesis))
    counts = jiwer.process_words(ref, hyp)
    return {
        "metric": metric,
        "normalized_reference": ref,
        "normalized_hypothesis": hyp,
        "substitutions": counts.substitutions,
        "deletions": counts.deletions,
        "insertions": counts.insertions,
        "hits": counts.hits,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def aggregate(rows: list[Row]) -> dict:
    """A set's numbers from its rows: micro error rate per metric (total errors / total reference
    tokens), skipped rows, audio hours, real-time factor and generated tokens per second."""
    scored = [r for r in rows if r.skipped is None]
    scores = {}
    for metric in sorted({r.metric for r in scored}):
        group = [r for r in scored if r.metric == metric]
        counts = {
            key: sum(getattr(r, key) for r in group) for key in ("substitutions", "deletions", "insertions", "hits")
        }
        tokens = sum(r.reference_tokens for r in group)
        scores[metric] = {
            "error_rate": _ratio(sum(r.errors for r in group), tokens),
            **counts,
            "reference_tokens": tokens,
            "utterances": len(group),
        }
    audio = sum(r.audio_seconds for r in scored)
    return {
        "rows": len(rows),
        "utterances": len(scored),
        "audio_hours": audio / 3600,
        "scores": scores,
        "real_time_factor": _ratio(sum(r.seconds for r in scored), audio),
        "tokens_per_second": _ratio(sum(len(r.token_ids) for r in scored), sum(r.generation_seconds for r in scored)),
        "hit_token_limit": sum(r.hit_token_limit for r in scored),
        "repetition": sum(r.repetition for r in scored),
        "skipped": [{"index": r.index, "id": r.id, "reason": r.skipped} for r in rows if r.skipped],
    }


def token_agreement(baseline: list[int], variant: list[int]) -> float:
    """Aligned identical tokens over the longer sequence: 1.0 for the same tokens, 0.0 for nothing alike."""
    import jiwer

    if not baseline or not variant:
        return float(baseline == variant)
    hits = jiwer.process_words(" ".join(map(str, baseline)), " ".join(map(str, variant))).hits
    return hits / max(len(baseline), len(variant))


def bootstrap_interval(base_errors: np.ndarray, errors: np.ndarray, tokens: np.ndarray) -> list[float]:
    """95% interval of (variant - baseline) micro error rate, resampling utterances in pairs."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, len(tokens), size=(BOOTSTRAP_SAMPLES, len(tokens)))
    deltas = (errors[picks].sum(axis=1) - base_errors[picks].sum(axis=1)) / tokens[picks].sum(axis=1)
    return [float(x) for x in np.percentile(deltas, [2.5, 97.5])]


def compare(rows: list[Row], baseline_rows: list[Row]) -> tuple[dict, list[dict]]:
    """Per set: token agreement, error-rate delta with its bootstrap interval and the utterances that
    changed most; and one line per compared utterance. Rows join on (set, index)."""
    baseline = {(r.set, r.index): r for r in baseline_rows if r.skipped is None}
    per_set, lines = {}, []
    for name in dict.fromkeys(r.set for r in rows):
        pairs = [
            (baseline[(r.set, r.index)], r)
            for r in rows
            if r.set == name and r.skipped is None and (r.set, r.index) in baseline
        ]
        if not pairs:
            continue
        for base, row in pairs:
            if base.reference != row.reference:
                raise UserError(
                    f"the baseline's set {name} differs at row {row.index} ({row.id}): compare reports "
                    "made on the same set revision and --limit"
                )
        agreement = [token_agreement(b.token_ids, r.token_ids) for b, r in pairs]
        lines += [
            {
                "set": name,
                "index": r.index,
                "id": r.id,
                "token_agreement": a,
                "baseline_errors": b.errors,
                "errors": r.errors,
            }
            for (b, r), a in zip(pairs, agreement)
        ]
        scores = {}
        for metric in sorted({r.metric for _, r in pairs}):
            group = [(b, r, a) for (b, r), a in zip(pairs, agreement) if r.metric == metric]
            base_errors = np.array([b.errors for b, _, _ in group])
            errors = np.array([r.errors for _, r, _ in group])
            tokens = np.array([r.reference_tokens for _, r, _ in group])
            scores[metric] = {
                "utterances": len(group),
                "baseline": float(base_errors.sum() / tokens.sum()),
                "variant": float(errors.sum() / tokens.sum()),
                "delta": float((errors.sum() - base_errors.sum()) / tokens.sum()),
                "delta_ci95": bootstrap_interval(base_errors, errors, tokens),
                "token_agreement": float(np.mean([a for _, _, a in group])),
                "identical": sum(b.token_ids == r.token_ids for b, r, _ in group) / len(group),
            }
        # Largest change in errors first, then lowest agreement.
        changed = sorted(
            ((b, r, a) for (b, r), a in zip(pairs, agreement) if b.token_ids != r.token_ids),
            key=lambda c: (-abs(c[1].errors - c[0].errors), c[2]),
        )
        per_set[name] = {
            "utterances": len(pairs),
            "not_compared": sum(1 for r in rows if r.set == name) - len(pairs),
            "token_agreement": float(np.mean(agreement)),
            "identical": sum(b.token_ids == r.token_ids for b, r in pairs) / len(pairs),
            "scores": scores,
            "changed_most": [
                {
                    "index": r.index,
                    "id": r.id,
                    "reference": r.reference,
                    "baseline": b.hypothesis,
                    "variant": r.hypothesis,
                    "baseline_errors": b.errors,
                    "errors": r.errors,
                    "token_agreement": a,
                }
                for b, r, a in changed[:CHANGED_MOST]
            ],
        }
    return per_set, lines
