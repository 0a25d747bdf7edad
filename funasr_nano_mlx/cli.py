"""The `funasr-nano-mlx` command: each subcommand is a thin layer over one library call."""

from __future__ import annotations

import functools
import math
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import click
from click.exceptions import NoArgsIsHelpError

from .decoding import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, MAX_SEGMENT_SECONDS, MIN_SEGMENT_SECONDS, describe_budget
from .errors import UserError

FORMATS = ("text", "json", "srt", "vtt")
FORMAT_SUFFIX = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}
REVISION_HELP = "With a hub repo id: the commit to download (pin it for a reproducible build). Default: main."


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without nan and inf: nan passes every comparison, so a range alone lets it in."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


max_new_tokens_option = click.option(
    "--max-new-tokens",
    default=None,
    type=click.IntRange(min=1),
    help=f"Stop each segment after this many tokens. Default: {describe_budget(None)}.",
)
model_revision_option = click.option(
    "--revision", default=None, help="With a hub repo id as MODEL: the commit to use. Default: main."
)
limit_option = click.option(
    "--limit",
    type=click.IntRange(1, sys.maxsize),  # the rows are taken with itertools.islice, which takes no more
    help="Evaluate only the first N rows of each set.",
)
batch_size_option = click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, MAX_BATCH_SIZE),
    help="Segments decoded together; the results do not depend on it beyond float rounding.",
)


def user_errors(command):
    """Problems the user can fix: one line on stderr, exit status 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:  # flattened: a library's message (MLX, transformers) may span lines
            from .hub import one_line

            click.echo(f"error: {one_line(err)}", err=True)
            sys.exit(2)

    return wrapper


def refuse_closed_stdout(hint: str = "") -> None:
    """click.echo writes nothing, silently, where standard output is closed (`>&-`): one UserError line instead."""
    if sys.stdout is None:
        raise UserError(f"standard output is closed: nothing could be printed (redirect it to a file{hint})")


def print_out(text: str, nl: bool = True) -> None:
    """Write to standard output: closed (`refuse_closed_stdout`), or a failed write (a full disk), which would
    be a traceback, is one UserError line. A reader that stopped reading (`| head`) ends the command quietly,
    as it ends cat."""
    refuse_closed_stdout()
    try:
        click.echo(text, nl=nl)
    except OSError as err:
        with suppress(OSError, ValueError):  # Python flushes standard output again at exit: not a second complaint
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(err, BrokenPipeError):
            sys.exit(1)
        raise UserError(f"cannot write standard output: {err.strerror or err}") from None


def print_result(made) -> None:
    """Print what a command made (a path, a URL) once its work is done; a failed write says it is done."""
    try:
        print_out(made)
    except UserError as err:
        raise UserError(f"{err}; the work is done: {made}") from None


def prints_its_result(command):
    """A command that prints what it made at the end (`print_result`): with standard output closed, that
    line would be lost after all the work, so the command is refused before it."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        refuse_closed_stdout()
        return command(*args, **kwargs)

    return wrapper


class UsageLine(click.ClickException):
    """A usage error (bad value, missing argument, unknown option or command) as one line, like a
    UserError: click would print the usage block and a hint around it."""

    exit_code = 2

    def __init__(self, err: click.UsageError):
        where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
        super().__init__(" ".join(err.format_message().split()) + where)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@contextmanager
def _one_line_usage():
    try:
        yield
    except NoArgsIsHelpError:  # the bare command: its help, as click shows it
        raise
    except click.UsageError as err:  # BadParameter, MissingParameter, NoSuchOption are UsageErrors
        raise UsageLine(err) from None


class Main(click.Group):
    """The command group: usage errors of the group and of every subcommand (parsed within the group's
    invoke) become one line; --help and --version are untouched."""

    def make_context(self, info_name, args, *rest, **kwargs):
        with _one_line_usage():
            if "" in args:  # Path("") is the current directory: `transcribe M "$UNSET"` would read every file here
                after = " ".join(args[: args.index("")])
                raise click.UsageError(f"an empty argument was given{f' after {after!r}' if after else ''}")
            return super().make_context(info_name, args, *rest, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage():
            return super().invoke(ctx)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funasr-nano-mlx")
def main():
    """Fun-ASR-Nano speech recognition on MLX: convert, quantize, evaluate, publish, transcribe."""


@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float32"]),
    default="bfloat16",
    show_default=True,
    help="Weight dtype of the converted model (float16 is refused: Qwen3 overflows in it).",
)
@click.option("--revision", default=None, help=REVISION_HELP)
@click.option(
    "--sha256",
    "model_pt_sha256",
    default=None,
    help="Expected SHA-256 of model.pt: anything else is refused, checked on the bytes converted.",
)
@user_errors
@prints_its_result
def convert(src, dst, dtype, revision, model_pt_sha256):
    """Convert an upstream checkpoint to MLX.

    SRC is a directory laid out like the upstream repo (model.pt, config.yaml, Qwen3-0.6B/) or a hub
    repo id such as FunAudioLLM/Fun-ASR-Nano-2512. DST must not exist; it appears only when complete.
    """
    from .convert import convert as run_convert

    print_result(run_convert(src, dst, dtype=dtype, revision=revision, expected_sha256=model_pt_sha256))


@main.command("convert-vad")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--revision", default=None, help=REVISION_HELP)
@user_errors
@prints_its_result
def convert_vad(src, dst, revision):
    """Convert FunASR's FSMN-VAD (fsmn-vad) to MLX.

    SRC is a directory laid out like the upstream repo (model.pt, config.yaml, am.mvn) or a hub repo
    id such as funasr/fsmn-vad. DST must not exist; it appears only when complete.
    """
    from .convert import convert_vad as run_convert_vad

    print_result(run_convert_vad(src, dst, revision=revision))


def output_file(output_dir, path: Path, fmt: str) -> Path:
    # The output's name keeps the input's bytes (Path holds them): writable wherever the input was.
    return Path(output_dir) / f"{path.stem}.{FORMAT_SUFFIX[fmt]}"


def check_outputs(files: list[Path], fmt: str, output_dir) -> None:
    """Refuse outputs that would clash or cannot be written, before the model loads."""
    from .files import check_destination

    if output_dir is None:
        refuse_closed_stdout(", or give --output-dir")
    if fmt in ("srt", "vtt") and len(files) > 1 and output_dir is None:
        raise UserError(f"{len(files)} inputs: give --output-dir to write one .{fmt} file each")
    stems = [path.stem for path in files]
    if output_dir is not None and len(set(stems)) < len(stems):
        clash = next(stem for stem in stems if stems.count(stem) > 1)
        raise UserError(f"several inputs are named {clash!r}: their outputs would overwrite each other in {output_dir}")
    if output_dir is not None:
        check_destination(output_dir, exists_ok=True)
        for path in files:
            check_destination(output_file(output_dir, path, fmt), directory=False, exists_ok=True)


def write_results(files: list[Path], results, render, fmt: str, output_dir) -> list:
    """Print each result (or write it under `output_dir`) with its warnings on stderr, as it comes;
    return the failures, for the caller to name after every good result is out."""
    from .files import printable, write_text_atomic
    from .transcribe import Failure

    failures = []
    for path, result in zip(files, results):
        if isinstance(result, Failure):
            failures.append(result)
            continue
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        for segment in result.segments:
            if segment.hit_token_limit or segment.repetition:
                why = "hit its token budget" if segment.hit_token_limit else "was stopped repeating itself"
                click.echo(f"warning: {printable(path)} {segment.start:.2f}-{segment.end:.2f} s {why}", err=True)
        if output_dir is None:
            print_out(render(result), nl=False)
        else:
            write_text_atomic(output_file(output_dir, path, fmt), render(result))
    return failures


@main.command()
@click.argument("model")
@click.argument("audio", nargs=-1, required=True, type=click.Path())
@click.option(
    "--language",
    default=None,
    help="Language of the speech: an ISO code (zh, en, ja, yue, ...) or the model's own name "
    "(中文, 英文, 日文, ...). Default: none given, the model decides ('auto').",
)
@click.option("--hotword", "hotwords", multiple=True, help="A word or phrase to favour; repeat for several.")
@click.option("--no-itn", is_flag=True, help="Ask for unnormalized text (no inverse text normalization).")
@max_new_tokens_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: one line per file; json: one object per file with text, token_ids, segments (start, "
    "end, text, flags), timings and, with timestamps, `timestamps` and `words`; srt / vtt: subtitles.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write one file per input (NAME.txt, .json, .srt or .vtt) here instead of printing; "
    "a file of that name already there is replaced.",
)
@batch_size_option
@click.option(
    "--vad",
    default=None,
    help="A converted FSMN-VAD (`convert-vad`; a directory or hub repo id) to cut every file into speech segments. Default: files "
    "up to --max-segment-seconds are decoded whole, longer ones cut at pauses by signal energy.",
)
@click.option(
    "--max-segment-seconds",
    default=30.0,
    show_default=True,
    type=FiniteFloatRange(MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS),
    help="The longest piece decoded at once (upstream advises 30 s).",
)
@click.option("--no-segment", is_flag=True, help="Decode every file whole, however long (upstream without a VAD).")
@click.option(
    "--no-repetition-guard",
    is_flag=True,
    help="Let a segment that repeats one phrase over and over run to its token budget.",
)
@model_revision_option
@click.option("--vad-revision", default=None, help="With a hub repo id as --vad: the commit to use. Default: main.")
@click.option(
    "--timestamps/--no-timestamps",
    default=None,
    help="Token and word times from the CTC head (JSON `timestamps`, `words`; subtitles cut at sentences). "
    "Default: on when the model has the head; --timestamps with a model without one is an error.",
)
@user_errors
def transcribe(
    model,
    audio,
    language,
    hotwords,
    no_itn,
    max_new_tokens,
    fmt,
    output_dir,
    batch_size,
    vad,
    max_segment_seconds,
    no_segment,
    no_repetition_guard,
    revision,
    vad_revision,
    timestamps,
):
    """Transcribe AUDIO files or directories (wav, flac, mp3, ogg; any rate, mono or stereo) with MODEL.

    MODEL (and --vad) is a converted model directory or a hub repo id such as
    mlx-community/Fun-ASR-Nano-2512-4bit-llm, downloaded once into the Hugging Face cache (only the
    files a model needs; HF_HUB_OFFLINE=1 works once cached).

    Long recordings are cut into segments at pauses, and segments of all files are decoded in batches.
    A segment that stopped at its token budget or in a repetition loop is flagged in the JSON output
    (hit_token_limit, repetition) and reported on stderr. A file that ends before its header says (cut
    off) is transcribed as far as it goes, with a warning on stderr and in the JSON `warnings`.

    A file that cannot be transcribed (unreadable, shorter than 25 ms, NaN or infinite samples) does not
    stop the others: every other file's result is written, each bad file is named in one `error:` line
    at the end, and the exit status is 2.
    """
    from .audio import audio_files
    from .decoding import hotword_list
    from .files import json_text
    from .hub import one_line
    from .languages import resolve_language
    from .modeldir import find_model
    from .subtitles import timed_cues, to_srt, to_vtt

    if no_segment and vad:
        raise UserError("--no-segment and --vad contradict each other: choose one")
    if vad_revision and not vad:
        raise UserError("--vad-revision needs --vad")
    resolve_language(language)  # reject bad input before the model loads
    hotword_list(hotwords)
    files = audio_files(audio)
    check_outputs(files, fmt, output_dir)
    model_dir = find_model(model, revision)  # a hub failure is told before MLX is even imported
    segmenter = None if no_segment else "auto"
    if vad:
        from .vad import load_vad

        segmenter = load_vad(vad, vad_revision)
    from .transcribe import load, transcribe_many

    loaded, tokenizer = load(model_dir)
    if timestamps is None and not loaded.has_ctc and fmt != "text":
        click.echo(f"note: {model} has no CTC head: no timestamps, subtitles have one cue per segment", err=True)
    render = {
        "text": lambda r: r.text.strip() + "\n",
        "srt": lambda r: to_srt(timed_cues(r)),
        "vtt": lambda r: to_vtt(timed_cues(r)),
        "json": lambda r: json_text(r.to_dict()) + "\n",
    }[fmt]
    results = transcribe_many(
        loaded,
        tokenizer,
        files,
        language=language,
        hotwords=hotwords,
        itn=not no_itn,
        max_new_tokens=max_new_tokens,
        segmenter=segmenter,
        max_segment_seconds=max_segment_seconds,
        stop_loops=not no_repetition_guard,
        batch_size=batch_size,
        progress=None,
        timestamps=timestamps,
        keep_going=True,
    )
    failures = [result.error for result in write_results(files, results, render, fmt, output_dir)]
    if failures:  # named after every good result is out, so that none is lost to a bad file
        for error in failures:
            click.echo(f"error: {one_line(error)}", err=True)
        sys.exit(2)


@main.command()
@click.argument("model")
@model_revision_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback exposes the server: set an API key.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option(
    "--api-key",
    envvar="FUNASR_NANO_MLX_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every request. Prefer the FUNASR_NANO_MLX_API_KEY "
    "environment variable: a command line is visible to other users.",
)
@click.option(
    "--vad",
    default=None,
    help="A converted FSMN-VAD (`convert-vad`; a directory or hub repo id) to cut every upload into "
    "speech segments, as transcribe --vad.",
)
@click.option("--vad-revision", default=None, help="With a hub repo id as --vad: the commit to use. Default: main.")
@click.option(
    "--max-batch",
    default=16,
    show_default=True,
    type=click.IntRange(1, MAX_BATCH_SIZE),
    help="Segments decoded together, from all requests in flight.",
)
@click.option(
    "--batch-wait-ms",
    default=100.0,
    show_default=True,
    type=FiniteFloatRange(min=0),
    help="After a batch shared by several requests, wait up to this long for their clients' next "
    "requests to fill the next batch (0: never wait). A lone client never waits.",
)
@click.option(
    "--max-upload-mb",
    default=25.0,
    show_default=True,
    type=FiniteFloatRange(min=0, min_open=True),
    help="Largest audio file accepted (413 beyond).",
)
@click.option(
    "--max-audio-seconds",
    default=1800.0,
    show_default=True,
    type=FiniteFloatRange(min=1),
    help="Longest audio accepted (400 beyond).",
)
@click.option(
    "--request-timeout",
    default=600.0,
    show_default=True,
    type=FiniteFloatRange(min=0, min_open=True),
    help="Seconds a request may take, upload to answer (then 504, and its work is dropped).",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests in the server at once, uploading, waiting or decoding (429 beyond).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@user_errors
def serve(
    model,
    revision,
    host,
    port,
    api_key,
    vad,
    vad_revision,
    max_batch,
    batch_wait_ms,
    max_upload_mb,
    max_audio_seconds,
    request_timeout,
    max_queue,
    log_level,
):
    """Serve MODEL over OpenAI's transcription API (POST /v1/audio/transcriptions), batching requests together.

    MODEL is a converted model directory or a hub repo id (as for transcribe). Needs the [serve] extra. Every response equals `transcribe` on that file alone; the segments of all
    requests in flight share the encoder and decoder batches.
    """
    try:
        from .serve import Limits
        from .serve import serve as run_server
    except ImportError as err:
        raise UserError(f"serve needs the [serve] extra (pip install 'funasr-nano-mlx[serve]'): {err}") from None

    if vad_revision and not vad:
        raise UserError("--vad-revision needs --vad")
    limits = Limits(round(max_upload_mb * 1024 * 1024), max_audio_seconds, request_timeout, max_queue)
    run_server(
        model,
        revision=revision,
        host=host,
        port=port,
        api_key=api_key,
        vad=vad,
        vad_revision=vad_revision,
        max_batch=max_batch,
        batch_wait=batch_wait_ms / 1000,
        limits=limits,
        log_level=log_level,
    )


# -- recipes ------------------------------------------------------------------------------------------
from .recipe import STAGES  # noqa: E402  (a light module: --until's choices are needed at import)


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path(file_okay=False))
@click.option(
    "--recipe",
    required=True,
    help="A recipe name (recipes/NAME.yaml, e.g. 4bit-llm) or the path of a recipe YAML file.",
)
@user_errors
@prints_its_result
def quantize(src, dst, recipe):
    """Quantize a converted model per component, as a recipe says.

    SRC is a model made by `convert` in the recipe's dtype. Linear and embedding layers are quantized
    as the recipe's quantization block says (norms and convolutions never are; a layer whose input size
    does not divide the group size is skipped and listed). DST must not exist; it appears only when
    complete, with the quantization and a quantization_summary in its config.json.
    """
    from .quantize import quantize as run_quantize
    from .recipe import Recipe

    print_result(run_quantize(src, dst, Recipe.load(recipe)))


@main.command()
@click.argument("recipe")
@click.option(
    "--work",
    default="work",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Stage outputs go to WORK/RECIPE/STAGE.",
)
@click.option("--until", type=click.Choice(STAGES), help="Stop after this stage (default: the last one).")
@click.option("--source", help="Build from another source: a hub repo id or a local upstream directory.")
@click.option("--revision", help="Download this 40-hex commit instead of the recipe's pin.")
@click.option(
    "--sha256",
    "model_pt_sha256",
    help="Expected SHA-256 of model.pt. The recipe's own applies to its own source and revision only.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME_OR_PATH",
    help="Evaluate on this set instead of the recipe's evaluation sets (as `evaluate --set`); repeat for "
    "several. The baseline variant is evaluated on the same sets.",
)
@limit_option
@max_new_tokens_option
@click.option(
    "--benchmark",
    type=click.Path(dir_okay=False),
    help="A benchmark record of this variant (JSON: recipe, machine, date, command, results) for the card.",
)
@click.option("--repo", help="Publish to this repo ORG/NAME (and name it in the card) instead of the recipe's target.")
@click.option("--private", is_flag=True, help="Create the repository private (for staging).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write and send nothing: say which stages are up to date and which would be built, and list what "
    "publish would upload once the card is built.",
)
@user_errors
@prints_its_result
def run(
    recipe,
    work,
    until,
    source,
    revision,
    model_pt_sha256,
    sets,
    limit,
    max_new_tokens,
    benchmark,
    repo,
    private,
    dry_run,
):
    """Build the variant a RECIPE describes: download, convert, quantize, evaluate, card, publish.

    RECIPE is a name (recipes/NAME.yaml) or a recipe file. Each stage writes WORK/RECIPE/STAGE all at
    once and is skipped when that directory is newer than its inputs (the recipe file, the stage
    before) and agrees with this run's options, and the files it read still hold the bytes it recorded
    (their SHA-256), so an interrupted run resumes where it stopped. One run at a time uses a WORK
    directory (it holds the directory's lock): a second is refused at once; wait for the first to
    finish, or give it another --work. The
    evaluate stage first builds the recipe's bfloat16 baseline up to its own evaluate stage in WORK and
    compares with it; card and publish refuse a delta outside the recipe's acceptance bound. A recipe
    without a pinned revision, or an unpinned hub set, is refused: nothing unpinned is ever used.
    """
    from .pipeline import Options
    from .pipeline import run as run_recipe
    from .recipe import Recipe

    loaded = Recipe.load(recipe)
    if source or revision or model_pt_sha256:
        loaded = loaded.override(source, revision, model_pt_sha256)
    options = Options(
        tuple(sets), limit, max_new_tokens, Path(benchmark) if benchmark else None, repo, private, dry_run
    )
    print_result(run_recipe(loaded, work, until, options))


# -- evaluation ---------------------------------------------------------------------------------------


@main.command()
@click.argument("model", type=click.Path())
@click.option(
    "--set",
    "sets",
    multiple=True,
    required=True,
    help="An evaluation set: a name (eval_sets/NAME.yaml, e.g. librispeech-test-clean), a set YAML "
    "file, a folder with metadata.csv (file_name,text[,language]) or a .jsonl manifest "
    '({"audio", "text", "language"?}). Repeat for several.',
)
@click.option(
    "--report",
    required=True,
    type=click.Path(file_okay=False),
    help="Write the report here (it must not exist): eval.json, summary.md, hypotheses.jsonl, a PNG plot.",
)
@limit_option
@click.option(
    "--shard",
    metavar="I/N",
    help="Evaluate only shard I of N (numbered from 0; row k is in shard k mod N); join the shard "
    "reports with merge-reports.",
)
@click.option(
    "--baseline",
    type=click.Path(file_okay=False),
    help="Compare with this report: the bf16 variant of the same source, on the same sets and --limit.",
)
@max_new_tokens_option
@batch_size_option
@model_revision_option
@user_errors
@prints_its_result
def evaluate(model, sets, report, limit, shard, baseline, max_new_tokens, batch_size, revision):
    """Evaluate a converted MODEL (a directory or a hub repo id): WER/CER with S/D/I counts, speed and
    memory per set, and the change against a baseline variant. Rows that cannot be scored are listed in
    the report, never dropped."""
    from .evaluate import SUMMARY
    from .evaluate import evaluate as run_evaluate

    run_evaluate(
        model,
        sets,
        report,
        limit=limit,
        shard=shard,
        baseline=baseline,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        revision=revision,
    )
    print_result(f"{report}/{SUMMARY}")


@main.command("merge-reports")
@click.argument("shards", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The merged report (must not exist).")
@click.option(
    "--baseline",
    type=click.Path(file_okay=False),
    help="Compare with this report: the bf16 variant of the same source, on the same sets and --limit.",
)
@user_errors
@prints_its_result
def merge_reports(shards, out, baseline):
    """Merge the reports of shards 0..N-1 of one evaluation (made with --shard I/N) into the report an
    unsharded run writes: same rows, same counts; only timings differ."""
    from .evaluate import SUMMARY, merge

    merge(shards, out, baseline=baseline)
    print_result(f"{out}/{SUMMARY}")


@main.command("plot-reports")
@click.argument("reports", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The PNG file to write (replaced if it exists)."
)
@user_errors
@prints_its_result
def plot_reports(reports, out):
    """Plot error rate against model size for the variants whose evaluation REPORTS are given."""
    from .evaluate import plot

    print_result(plot(reports, out))


# -- model card and publishing -------------------------------------------------------------------------


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--recipe",
    help="The recipe (name or YAML file) the model was built with, when its config.json "
    "does not name one (an unquantized conversion).",
)
@click.option(
    "--eval",
    "report",
    type=click.Path(file_okay=False),
    help="An evaluation report of this model: its eval.json is copied into MODEL_DIR and the card shows it.",
)
@click.option(
    "--benchmark",
    type=click.Path(dir_okay=False),
    help="A benchmark record of this variant (JSON: recipe, machine, date, command, results), copied "
    "into MODEL_DIR as benchmark.json for the card's speed section.",
)
@click.option(
    "--repo",
    help="The repo ORG/NAME the card is for (its usage examples name it); default: the "
    "recipe's target. publish checks that the card names the repo it uploads to.",
)
@user_errors
@prints_its_result
def card(model_dir, recipe, report, benchmark, repo):
    """Write MODEL_DIR/README.md, the model card, from config.json, eval.json, the benchmark record and
    model_cards/ (figures missing from them are shown as "not measured"). Refused, writing nothing, when
    an error-rate delta is outside the recipe's acceptance bound."""
    from .card import write_card

    print_result(write_card(model_dir, recipe, report, repo, benchmark))


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--repo", required=True, help="The hub repository ORG/NAME (created when missing).")
@click.option("--private", is_flag=True, help="Create the repository private (for staging).")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; send nothing.")
@click.option("--recipe", help="The recipe the card was written with (`card --recipe`), when config.json names none.")
@user_errors
@prints_its_result
def publish(model_dir, repo, private, dry_run, recipe):
    """Upload MODEL_DIR (with its card and eval.json) in one commit, then verify it: download the repo at
    that commit, compare every file's SHA-256, load it and transcribe one clip. Refused when README.md
    is not the card as it renders now for REPO, or a figure is outside the recipe's acceptance bound.
    The token comes from HF_TOKEN or `hf auth login`."""
    from .publish import publish as run_publish

    published = run_publish(model_dir, repo, private=private, dry_run=dry_run, recipe=recipe)
    if published:
        print_result(published.url)
