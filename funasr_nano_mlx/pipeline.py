"""`run`: build the variant a recipe describes, stage by stage: download -> convert -> quantize ->
evaluate -> card -> publish. Each stage writes `<work>/<recipe>/<stage>` all-or-nothing and is skipped
when that directory is newer than its inputs (as Make would) and agrees with what is asked now (the
source, the sets, the card's text...). A quantized variant is evaluated against its bfloat16 baseline,
which this run resolves once and builds first, in the same work directory.

The only module that imports every stage; the recipe schema it runs is recipe.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from .card import card_dir, is_current, read_benchmark
from .convert import CHECKPOINT, UPSTREAM_FILES, convert
from .decoding import check_max_new_tokens
from .errors import UserError
from .evalsets import check_sets, open_set, set_files
from .evaluate import answers, evaluate
from .files import (
    copy_hashed,
    exclusive,
    link_or_copy,
    read_json_object,
    require_utf8_path,
    same_content,
    sha256,
    stamp,
    staged_output,
)
from .hub import COMMIT, check_repo_id
from .hub import download as fetch
from .hub import download_from_modelscope, remote_file
from .modeldir import TOKENIZER_DIR
from .publish import publish
from .quantize import quantize
from .recipe import STAGES, Recipe, baseline_for, require_pin

SOURCE_RECORD = "source.json"  # in the download stage: what was fetched, so an overridden source is noticed
PUBLISH_RECORD = "publish.json"  # the publish stage's output: repo, commit, URL and the files sent
LLM_CONFIG = f"{TOKENIZER_DIR}/config.json"  # among the upstream files: the Qwen3 config


def log(recipe: Recipe, message: str) -> None:
    print(f"[{recipe.name}] {message}", file=sys.stderr, flush=True)


def _commit_pin(recipe: Recipe) -> str | None:
    return recipe.revision if COMMIT.fullmatch(recipe.revision or "") else None


def _fetch(recipe: Recipe) -> Path:
    if recipe.is_local:
        return Path(recipe.source)
    if recipe.hub == "modelscope":
        return download_from_modelscope(recipe.source, recipe.revision, UPSTREAM_FILES)
    return fetch(recipe.source, recipe.revision, UPSTREAM_FILES)


def download(recipe: Recipe, dst: Path) -> Path:
    """The upstream files conversion needs, from the recipe's hub at the pinned revision (through the hub
    client's cache, so a re-run or another recipe of the same source downloads nothing) or from a local
    directory (as `modelscope download` or `hf download` leave one); model.pt's SHA-256 is checked
    before any later stage can see it. Every file's SHA-256 and stamp are recorded, so that a later run
    notices a change to what was fetched (`_same_source`) and conversion reads exactly those bytes."""
    require_pin(recipe)
    src = _fetch(recipe)
    with staged_output(dst) as out:
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        hashes, stamps = {}, {}
        for name in filter_repo_objects(files, allow_patterns=UPSTREAM_FILES):
            if recipe.is_local:  # the user's folder can be rewritten in place: a link would follow it
                hashes[name] = copy_hashed(src / name, out / name)
                stamps[name] = stamp(out / name)  # our copy, written once
            else:  # the hub cache's blobs are written once, named by their content: a link costs no space
                # (an edit through it is still noticed: the SHA-256 recorded here is checked by later runs,
                # and the stamp is taken before hashing, so a write during the hash makes them hash again)
                link_or_copy(src / name, out / name)
                stamps[name] = stamp(out / name)
                hashes[name] = sha256(out / name)
        if CHECKPOINT not in hashes:
            raise UserError(f"{recipe.source_label} has no {CHECKPOINT}")
        digest = hashes[CHECKPOINT]
        if recipe.model_pt_sha256 is None:
            log(recipe, f"download: {CHECKPOINT} SHA-256 {digest} (not checked: none expected for this source)")
        elif digest != recipe.model_pt_sha256:
            raise UserError(
                f"{CHECKPOINT} of {recipe.source_label} has SHA-256 {digest}, but recipe "
                f"{recipe.name} expects {recipe.model_pt_sha256}: corrupt download or wrong pin; "
                "nothing was converted"
            )
        # The Hugging Face cache names a snapshot folder by its commit: what a branch resolved to is kept.
        # ModelScope's does not: there only a commit pin is known, a pin by content records none.
        commit = None if recipe.is_local else src.name if recipe.hub == "huggingface" else _commit_pin(recipe)
        record = {
            "source": recipe.source,
            "revision": recipe.revision,
            "commit": commit,
            "model_pt_sha256": digest,
            "files": hashes,
            "stamps": stamps,
            "source_stamps": {name: stamp(src / name) for name in hashes} if recipe.is_local else None,
        }
        (out / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dst


def _source_record(download_dir: Path) -> dict:
    return read_json_object(download_dir / SOURCE_RECORD)


def _unchanged(folder: Path, hashes: dict, stamps) -> bool:
    stamps = stamps if isinstance(stamps, dict) else {}
    return all(same_content(folder / name, sha, stamps.get(name)) for name, sha in hashes.items())


def _same_source(recipe: Recipe, download_dir: Path) -> bool:
    """The download was of this source and revision, and its files (and, for a local source, the
    source's files) still hold the bytes it recorded: a file rewritten in place, whatever its time,
    makes the stage stale."""
    record = _source_record(download_dir)
    expected = recipe.model_pt_sha256 or record.get("model_pt_sha256")
    asked = {"source": recipe.source, "revision": recipe.revision, "model_pt_sha256": expected}
    hashes = record.get("files")  # none in a download stage of an older version: it is made again
    if {key: record.get(key) for key in asked} != asked or not isinstance(hashes, dict):
        return False
    if hashes.get(CHECKPOINT) != expected:
        return False
    if recipe.is_local and not _unchanged(Path(recipe.source), hashes, record.get("source_stamps")):
        return False
    return _unchanged(download_dir, hashes, record.get("stamps"))


def downloaded_label(recipe: Recipe, download_dir: Path) -> str:
    """The source as conversion records it: SOURCE@COMMIT with the commit the download resolved (the
    recipe's own pin, or what its branch pointed at for a pin by content)."""
    commit = _source_record(download_dir).get("commit")
    return recipe.source if recipe.is_local or not commit else f"{recipe.source}@{commit}"


@dataclass(frozen=True)
class Options:
    """What `run` is asked besides the recipe: settings of the stages after quantize, none of which
    changes the variant itself."""

    sets: tuple[str, ...] = ()  # evaluate on these instead of the recipe's evaluation sets
    limit: int | None = None  # evaluate only the first N rows of each set
    max_new_tokens: int | None = None  # per utterance; None: evaluate's default
    benchmark: Path | None = None  # a benchmark record of this variant, for the card
    repo: str | None = None  # publish (and name in the card) this repo instead of the recipe's target
    private: bool = False  # create the repo private
    dry_run: bool = False  # list what publish would upload; send nothing, write no publish stage


@dataclass(frozen=True)
class Job:
    """One recipe being built in one work directory, with its options and the job of its bf16
    baseline (resolved once, when the job is made; None for a baseline itself)."""

    recipe: Recipe
    work: Path
    options: Options = Options()
    baseline: Job | None = None

    @classmethod
    def of(cls, recipe: Recipe, work: Path, options: Options = Options()) -> Job:
        """The job with its baseline: the bf16 recipe of the same source, evaluated on the same sets."""
        base = baseline_for(recipe)
        sets = options.sets or recipe.evaluation
        return cls(recipe, work, options, None if base is None else cls(base, work, replace(options, sets=sets)))

    def dir(self, stage: str) -> Path:
        return self.work / self.recipe.name / stage

    @property
    def sets(self) -> tuple[str, ...]:
        return self.options.sets or self.recipe.evaluation

    @property
    def repo(self) -> str:
        return self.options.repo or self.recipe.target

    @property
    def baseline_report(self) -> Path | None:
        return self.baseline.dir("evaluate") if self.baseline else None


def _download_needs(job: Job) -> list[Path]:
    """A local source's checkpoint: replaced by a newer download, it is fetched again (hub snapshots
    of a commit never change)."""
    checkpoint = Path(job.recipe.source) / CHECKPOINT
    return [checkpoint] if job.recipe.is_local and checkpoint.is_file() else []


def _download(job: Job, src: None, dst: Path) -> Path:
    return download(job.recipe, dst)


def _convert(job: Job, src: Path, dst: Path) -> Path:
    """Conversion of the downloaded files, checked against the SHA-256 the download recorded (and
    pinned): what is converted is what was verified. model.pt is hashed again only if its stamp moved
    since the download hashed it."""
    record = _source_record(src)
    stamps = record.get("stamps") if isinstance(record.get("stamps"), dict) else {}
    return convert(
        src,
        dst,
        dtype=job.recipe.dtype,
        source_id=downloaded_label(job.recipe, src),
        expected_sha256=record.get("model_pt_sha256"),
        hashed_stamp=stamps.get(CHECKPOINT),
    )


def _convert_agrees(job: Job, out: Path) -> bool:
    """Converted from the bytes the download stage holds now."""
    conversion = read_json_object(out / "config.json").get("conversion")
    recorded = _source_record(job.dir("download")).get("model_pt_sha256")
    return isinstance(conversion, dict) and recorded is not None and conversion.get("model_pt_sha256") == recorded


def _quantize(job: Job, src: Path, dst: Path) -> Path:
    return quantize(src, dst, job.recipe)


def _evaluate_check(job: Job) -> None:
    if not job.sets:
        raise UserError(f"recipe {job.recipe.name} names no evaluation sets: give some with --set NAME_OR_PATH")
    for evalset in check_sets(job.sets):
        if not evalset.is_hub:  # its files are read now (encoding, columns, rows), not after the stages before
            open_set(evalset)
    if job.options.max_new_tokens is not None:
        positions = _llm_positions(job)
        if positions is not None:  # else evaluate checks it when it loads the model
            check_max_new_tokens(job.options.max_new_tokens, positions)


def _llm_positions(job: Job) -> int | None:
    """The LLM's max_position_embeddings before any stage runs: from a local source, a download stage of
    an earlier run, or on a first run from the Hugging Face hub its one small file (not after gigabytes of
    download); None from ModelScope, whose client fetches no single file."""
    recipe = job.recipe
    configs = ([Path(recipe.source)] if recipe.is_local else []) + [job.dir("download")]
    configs = [folder / LLM_CONFIG for folder in configs]
    if not recipe.is_local and recipe.hub == "huggingface" and recipe.revision and not configs[-1].exists():
        configs.append(remote_file(recipe.source, LLM_CONFIG, recipe.revision))
    for config in filter(None, configs):
        positions = read_json_object(config).get("max_position_embeddings")
        if isinstance(positions, int) and not isinstance(positions, bool):
            return positions
    return None


def _evaluate_needs(job: Job) -> list[Path]:
    """The sets' local files, and the baseline's report."""
    return [file for entry in job.sets for file in set_files(entry)] + ([job.baseline_report] if job.baseline else [])


def _evaluate(job: Job, src: Path, dst: Path) -> Path:
    if job.baseline is not None:
        log(job.recipe, f"evaluate: compared with {job.baseline.recipe.name}, the bfloat16 variant of the same source")
    elif job.recipe.is_plain:
        log(job.recipe, "evaluate: this is the unquantized baseline of its source: no comparison")
    else:
        log(
            job.recipe,
            "evaluate: no unquantized bfloat16 recipe of the same source in recipes/: no comparison "
            "(an acceptance bound cannot be checked without one)",
        )
    evaluate(
        src,
        job.sets,
        dst,
        limit=job.options.limit,
        max_new_tokens=job.options.max_new_tokens,
        baseline=job.baseline_report,
    )
    return dst


def _evaluate_agrees(job: Job, out: Path) -> bool:
    return answers(out, job.sets, job.options.limit, job.options.max_new_tokens, job.baseline_report)


def _card_check(job: Job) -> None:
    if job.options.benchmark is None:
        return
    if not Path(job.options.benchmark).is_file():
        raise UserError(f"--benchmark {job.options.benchmark}: no such file")
    read_benchmark(Path(job.options.benchmark), {"name": job.recipe.name})  # as the card will, before the stages


def _card_needs(job: Job) -> list[Path]:
    return [job.dir("quantize")] + ([job.options.benchmark] if job.options.benchmark else [])


def _card(job: Job, src: Path, dst: Path) -> Path:
    return card_dir(job.dir("quantize"), src, dst, job.recipe, job.repo, job.options.benchmark)


def _card_agrees(job: Job, out: Path) -> bool:
    return is_current(out, job.recipe, job.repo, job.options.benchmark)


def _publish_check(job: Job) -> None:
    check_repo_id(job.repo, "--repo")


def _publish(job: Job, src: Path, dst: Path) -> Path:
    published = publish(src, job.repo, private=job.options.private, dry_run=job.options.dry_run, recipe=job.recipe)
    if published is None:
        log(job.recipe, f"publish: dry run: nothing was sent, {dst} is not written")
        return src
    with staged_output(dst) as out:
        (out / PUBLISH_RECORD).write_text(json.dumps(published.record(), indent=2) + "\n")
    log(job.recipe, f"publish: {published.url}")
    return dst


def _publish_agrees(job: Job, out: Path) -> bool:
    try:
        return json.loads((out / PUBLISH_RECORD).read_text())["repo"] == job.repo
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class Stage:
    """How a stage builds WORK/RECIPE/STAGE from the previous stage's output (returning what it made:
    a dry run makes nothing and returns its input); what it refuses before any stage runs (`check`);
    what other jobs' stages must be built before it (`first`, e.g. the baseline's evaluation) and what
    else it reads (`needs`); what its existing output must agree with to count as up to date. A dry
    run builds none of them: a stage that `previews` (publish: what it would send) is still called in a
    dry run, once every stage before it is up to date, to say what it would do; its build writes nothing
    then and returns its input."""

    build: Callable[[Job, Path | None, Path], Path]
    check: Callable[[Job], None] = lambda job: None
    first: Callable[[Job], list[tuple[Job, str]]] = lambda job: []
    needs: Callable[[Job], list[Path]] = lambda job: []
    agrees: Callable[[Job, Path], bool] = lambda job, out: True
    previews: bool = False


PIPELINE = {
    "download": Stage(_download, needs=_download_needs, agrees=lambda job, out: _same_source(job.recipe, out)),
    "convert": Stage(_convert, agrees=_convert_agrees),
    "quantize": Stage(_quantize),
    "evaluate": Stage(
        _evaluate,
        _evaluate_check,
        lambda job: [(job.baseline, "evaluate")] if job.baseline else [],
        _evaluate_needs,
        _evaluate_agrees,
    ),
    "card": Stage(_card, _card_check, needs=_card_needs, agrees=_card_agrees),
    "publish": Stage(_publish, _publish_check, agrees=_publish_agrees, previews=True),
}
assert tuple(PIPELINE) == STAGES


def up_to_date(output: Path, inputs: list[Path]) -> bool:
    """Make's rule: the output exists and is not older than any input. A stage directory appears only
    when complete (it is renamed from `.tmp`), and its mtime is when its last entry was written."""
    return output.is_dir() and all(p.exists() and output.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs)


def _discard(output: Path) -> None:
    """Remove a stale stage output so that no half-deleted directory can look complete."""
    if output.exists():
        stale = output.with_name(output.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        output.rename(stale)
        shutil.rmtree(stale)


def _build(job: Job, stages: tuple[str, ...]) -> tuple[Path, str | None]:
    """Build `stages` of `job` in order, each after what it needs first; returns the last one's output,
    and in a dry run the first stage it would have built (None: all up to date). A dry run builds
    nothing: it says which stages are up to date and which it would build."""
    previous, stale = None, None
    for stage in stages:
        spec, output = PIPELINE[stage], job.dir(stage)
        for other, until in spec.first(job):
            log(job.recipe, f"{stage}: needs {other.recipe.name} up to {until} first")
            other_stale = _build(other, STAGES[: STAGES.index(until) + 1])[1]
            stale = stale or (other_stale and f"{other.recipe.name} {other_stale}")
        inputs = [job.recipe.file] + ([previous] if previous else []) + spec.needs(job)
        if stale is None and up_to_date(output, inputs) and spec.agrees(job, output):
            log(job.recipe, f"{stage}: up to date, skipped ({output})")
            previous = output
        elif job.options.dry_run and spec.previews and stale is None:
            previous = spec.build(job, previous, output)
        elif job.options.dry_run:
            after = f" after {stale}" if stale else ""
            log(job.recipe, f"{stage}: dry run: would build {output}{after}; nothing is written")
            previous, stale = (previous if spec.previews else output), stale or stage
        else:
            _discard(output)
            log(job.recipe, f"{stage}: building {output}")
            previous = spec.build(job, previous, output)
    return previous, stale


def run(recipe: Recipe, work: str | Path = "work", until: str | None = None, options: Options = Options()) -> Path:
    """Build the recipe's stages in order up to `until` (default: the last one) under work/<recipe>/,
    skipping each stage whose output is up to date; returns the last stage's output (for a dry run of
    publish, the directory that would be uploaded). Everything that can be refused without building
    (an unpinned source, unusable sets, a bad repo id or benchmark file, a work directory that cannot
    be written or that another run is using) is refused first. A dry run writes nothing at all."""
    if until is not None and until not in STAGES:
        raise UserError(f"unknown stage {until!r}: the stages are {', '.join(STAGES)}")
    require_pin(recipe)  # before anything is logged or created
    require_utf8_path(work)  # every stage's files are read or written by MLX or torch
    job = Job.of(recipe, Path(work), options)
    stages = STAGES[: STAGES.index(until or STAGES[-1]) + 1]
    for stage in stages:
        PIPELINE[stage].check(job)
    if options.dry_run:
        return _build(job, stages)[0]
    busy = (
        f"work directory {work} is in use by another run (it holds the directory's lock): wait for that run "
        "to finish, or give this one another --work"
    )
    with exclusive(Path(work), busy):
        return _build(job, stages)[0]
