"""Stages under faults: an input changed after a build, two writers of one place, a destination that
cannot be written, and promises kept exactly (the commit a branch resolved to, a dry run). Each case:
exit status 2 and one line, or a rebuild; no traceback; nothing left that a later run would take for
complete. The CLI runs in this process (invoke_cli) except where a second process or a hub is the point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from funasr_nano_mlx.files import sha256
from tests.helpers import SENTENCES, assert_user_error, files_of, invoke_cli, local_set, run_cli

REPO_ROOT = Path(__file__).resolve().parent.parent


def leftovers(folder: Path) -> list[str]:
    """Partials and half-removed stages: nothing of the kind may stay after a failure."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".stale")))


def rewrite_in_place(path: Path, data: bytes) -> None:
    """New bytes in the same file (same inode, links follow), its times set back to what they were:
    as `cp --preserve=timestamps`, an editor or a restore can leave it. Make's rule sees no change."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def other_checkpoint(model_pt: Path) -> bytes:
    """model.pt with one weight changed: still a valid checkpoint, of other bytes."""
    import io

    import torch

    state = torch.load(model_pt, weights_only=True)
    tensors = state["state_dict"]
    key = next(k for k in tensors if k.endswith("down_proj.weight"))
    tensors[key] = tensors[key] + 1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def source(tiny_upstream, tmp_path) -> Path:
    """A local upstream directory of our own, to change."""
    return Path(shutil.copytree(tiny_upstream, tmp_path / "upstream"))


def run_args(source: Path, work: Path, *more) -> list:
    return ["run", "bf16", "--work", work, "--source", source, "--until", "convert", *more]


# -- 1. a stage trusts inputs that changed ----------------------------------------------------------


def changed_source(source, work, old):
    rewrite_in_place(source / "model.pt", other_checkpoint(source / "model.pt"))
    return run_args(source, work), ("download: building", "convert: building"), sha256(source / "model.pt")


def changed_source_with_the_old_pin(source, work, old):
    rewrite_in_place(source / "model.pt", other_checkpoint(source / "model.pt"))
    return run_args(source, work, "--sha256", old), f"but recipe bf16 expects {old}", None


def changed_download_copy(source, work, old):
    downloaded = work / "bf16/download/model.pt"
    rewrite_in_place(downloaded, other_checkpoint(downloaded))
    return run_args(source, work), ("download: building", "convert: building"), old


def changed_download_copy_convert_rebuilt_under_the_old_pin(source, work, old):
    downloaded = work / "bf16/download/model.pt"
    rewrite_in_place(downloaded, other_checkpoint(downloaded))
    shutil.rmtree(work / "bf16/convert")
    return run_args(source, work, "--sha256", old), ("download: building", "convert: building"), old


def changed_config_yaml(source, work, old):
    config = source / "config.yaml"
    rewrite_in_place(config, config.read_bytes() + b"\n# edited\n")
    return run_args(source, work), ("download: building", "convert: building"), old


def converted_from_other_bytes(source, work, old):
    config = work / "bf16/convert/config.json"
    data = json.loads(config.read_text())
    data["conversion"]["model_pt_sha256"] = "0" * 64
    rewrite_in_place(config, json.dumps(data).encode())
    return run_args(source, work), ("download: up to date", "convert: building"), old


def direct_convert_with_a_pin_of_other_bytes(source, work, old):
    rewrite_in_place(source / "model.pt", other_checkpoint(source / "model.pt"))
    return ["convert", source, work / "direct", "--sha256", old], "has SHA-256", None


CHANGES = [
    changed_source,
    changed_source_with_the_old_pin,
    changed_download_copy,
    changed_download_copy_convert_rebuilt_under_the_old_pin,
    changed_config_yaml,
    converted_from_other_bytes,
    direct_convert_with_a_pin_of_other_bytes,
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__ for c in CHANGES])
def test_a_changed_input_is_rebuilt_or_refused_never_up_to_date(change, source, tmp_path):
    """After a build, an input is rewritten in place with its times kept: the next run rebuilds what
    read it (and converts the bytes it pinned), or refuses in one line; a direct conversion checks its
    --sha256 on the bytes it converts."""
    work, old = tmp_path / "work", sha256(source / "model.pt")
    assert invoke_cli(*run_args(source, work)).returncode == 0
    args, expected, converted_sha = change(source, work, old)
    done = invoke_cli(*args)
    if isinstance(expected, str):  # refused
        assert_user_error(done, expected, alone=args[0] == "convert")
        assert "nothing was converted" in done.stderr
        assert leftovers(tmp_path) == [] and not (work / "direct").exists()
        return
    assert done.returncode == 0, done.stderr
    assert all(line in done.stderr for line in expected), done.stderr
    conversion = json.loads((work / "bf16/convert/config.json").read_text())["conversion"]
    assert conversion["model_pt_sha256"] == converted_sha == sha256(work / "bf16/download/model.pt")
    again = invoke_cli(*run_args(source, work))
    assert "download: up to date" in again.stderr and "convert: up to date" in again.stderr


def test_a_checkpoint_changed_during_conversion_is_refused(source, tmp_path, monkeypatch):
    import funasr_nano_mlx.convert as convert_module

    read = convert_module.read_checkpoint

    def read_then_change(path):
        state = read(path)
        with open(path, "ab") as f:  # another writer, while the tensors are being read
            f.write(b"\0")
        return state

    monkeypatch.setattr(convert_module, "read_checkpoint", read_then_change)
    done = invoke_cli("convert", source, tmp_path / "out")
    assert_user_error(done, "changed while it was being converted")  # after the progress bar
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# -- 2. two writers of one place ----------------------------------------------------------------------


def a_run_while_another_holds_the_work_directory(source, tmp_path, monkeypatch):
    import fcntl

    work = tmp_path / "work"
    work.mkdir()
    holder = os.open(work, os.O_RDONLY)  # as a run in another process holds it
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = invoke_cli(*run_args(source, work))
    finally:
        os.close(holder)
    assert_user_error(done, "is in use by another run", alone=True)
    assert "another --work" in done.stderr and list(work.iterdir()) == []


def the_destination_appears_while_converting(source, tmp_path, monkeypatch):
    import funasr_nano_mlx.convert as convert_module

    dst, save = tmp_path / "out", convert_module.save_config

    def other_writer_finishes_first(config, path):
        dst.mkdir()
        (dst / "theirs.txt").write_text("theirs")
        save(config, path)

    monkeypatch.setattr(convert_module, "save_config", other_writer_finishes_first)
    done = invoke_cli("convert", source, dst)
    assert_user_error(done, "written meanwhile by another process")  # after the progress bar
    assert sorted(files_of(dst)) == ["theirs.txt"] and leftovers(tmp_path) == []


def partials_of_live_and_dead_writers(source, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = tmp_path / f"out.{os.getppid()}.tmp"  # another writer of the same destination, still running
    abandoned = tmp_path / f"out.{dead.pid}.tmp"  # left by a writer that was killed
    for partial in (live, abandoned):
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"half")
    assert invoke_cli("convert", source, dst).returncode == 0
    assert live.is_dir() and (live / "model.safetensors").read_bytes() == b"half"
    assert not abandoned.exists() and (dst / "config.json").is_file()


def a_partial_whose_writer_lives_in_another_container(source, tmp_path, monkeypatch):
    """Its PID means nothing here (it names no process, or another one), but it holds its partial's lock."""
    import fcntl

    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    theirs = tmp_path / f"out.{dead.pid}.tmp"
    theirs.mkdir()
    (theirs / "model.safetensors").write_bytes(b"half")
    holder = os.open(theirs, os.O_RDONLY)  # as their writer holds it, in this process for the test
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert invoke_cli("convert", source, tmp_path / "out").returncode == 0
    finally:
        os.close(holder)
    assert (theirs / "model.safetensors").read_bytes() == b"half"
    assert (tmp_path / "out" / "config.json").is_file()


WRITERS = [a_run_while_another_holds_the_work_directory, the_destination_appears_while_converting]
WRITERS += [partials_of_live_and_dead_writers, a_partial_whose_writer_lives_in_another_container]


@pytest.mark.parametrize("case", WRITERS, ids=[c.__name__ for c in WRITERS])
def test_no_writer_touches_another_writers_output(case, source, tmp_path, monkeypatch):
    case(source, tmp_path, monkeypatch)


def test_two_runs_started_together_on_one_work_directory(source, tmp_path, tiny_bf16, clips):
    """Started together: one builds, the other waits its turn or is refused in one line; neither prints a
    traceback, and what is left is the model one run alone builds: it gives that model's tokens."""
    work = tmp_path / "work"
    command = [sys.executable, "-m", "funasr_nano_mlx", *map(str, run_args(source, work))]
    runs = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [r.communicate(timeout=300) for r in runs]
    done = [subprocess.CompletedProcess(command, r.returncode, *out) for r, out in zip(runs, outputs)]
    assert all("Traceback" not in d.stderr for d in done), [d.stderr for d in done]
    assert 0 in [d.returncode for d in done]
    for refused in (d for d in done if d.returncode != 0):
        assert_user_error(refused, "is in use by another run", alone=True)
    assert sorted(p.name for p in (work / "bf16").iterdir()) == ["convert", "download"]
    from funasr_nano_mlx.transcribe import load, transcribe

    def tokens(model_dir: Path) -> list[int]:
        return transcribe(*load(model_dir), clips["1s"], max_new_tokens=8).token_ids

    # tiny_bf16 is the same checkpoint converted alone to the recipe's dtype
    assert tokens(work / "bf16/convert") == tokens(tiny_bf16)


# -- 7. destinations: checked before the work, failures at the end in one line ----------------------


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_upstream, tiny_bf16):
    """Places that cannot be written, and what the commands need to get that far: a regular file to
    put things under, a name too long for any filesystem, a directory where a file goes, a model, a
    WAV clip, a set."""
    from tests.helpers import local_set

    tmp = tmp_path_factory.mktemp("places")
    (tmp / "file").write_text("a regular file")
    sf.write(str(tmp / "clip.wav"), np.zeros(1600, np.float32), 16000)
    card_model = Path(shutil.copytree(tiny_bf16, tmp / "card-model"))
    (card_model / "README.md").mkdir()
    (tmp / "out" / "clip.txt").mkdir(parents=True)
    local_set(tmp / "set")
    (tmp / NOT_UTF8).mkdir()
    (tmp / NOT_UTF8 / "upstream").symlink_to(tiny_upstream)
    (tmp / NOT_UTF8 / "model").symlink_to(tiny_bf16)
    (tmp / "nowhere").symlink_to(tmp / "missing")  # a link to nothing: exists() is False, yet nothing fits there
    (tmp / "loop").symlink_to(tmp / "loop2")
    (tmp / "loop2").symlink_to(tmp / "loop")
    return tmp, tiny_upstream, tiny_bf16


NOT_UTF8 = os.fsdecode(b"not \xff utf-8")  # a folder name Linux takes; MLX and torch cannot open it
DESTINATIONS = {  # (args, the line's fragment) from (tmp, upstream, model)
    "convert under a file": lambda t, u, m: (["convert", u, t / "file" / "dst"], "is not a directory"),
    "convert name too long": lambda t, u, m: (["convert", u, t / ("n" * 300)], "longer than 255 bytes"),
    "quantize under a file": lambda t, u, m: (["quantize", m, t / "file/a/q", "--recipe", "4bit-llm"], "not a dir"),
    "quantize name too long": lambda t, u, m: (["quantize", m, t / ("n" * 256) / "q", "--recipe", "bf16"], "longer"),
    "evaluate under a file": lambda t, u, m: (
        ["evaluate", m, "--set", t / "set", "--report", t / "file" / "r"],
        "is not a directory",
    ),
    "merge-reports under a file": lambda t, u, m: (["merge-reports", t / "r", "--out", t / "file/m"], "not a dir"),
    "plot-reports under a file": lambda t, u, m: (["plot-reports", t / "r", "--out", t / "file/p.png"], "not a dir"),
    "card onto a directory": lambda t, u, m: (["card", t / "card-model", "--recipe", "bf16"], "README.md: it is a dir"),
    "transcribe into a file": lambda t, u, m: (
        ["transcribe", m, t / "clip.wav", "--output-dir", t / "file" / "o"],
        "is not a directory",
    ),
    "transcribe onto a directory": lambda t, u, m: (
        ["transcribe", m, t / "clip.wav", "--output-dir", t / "out"],
        "clip.txt: it is a directory",
    ),
    "run's work under a file": lambda t, u, m: (
        ["run", "bf16", "--work", t / "file" / "w", "--source", u, "--until", "download"],
        "is not a directory",
    ),
    "convert onto a link to nothing": lambda t, u, m: (
        ["convert", u, t / "nowhere"],
        "it is a symbolic link to nothing",
    ),
    "quantize onto a link loop": lambda t, u, m: (["quantize", m, t / "loop", "--recipe", "bf16"], "symbolic link to"),
    "evaluate under a link to nothing": lambda t, u, m: (
        ["evaluate", m, "--set", t / "set", "--report", t / "nowhere" / "r"],
        "nowhere is a symbolic link to nothing",
    ),
    "transcribe into a link to nothing": lambda t, u, m: (
        ["transcribe", m, t / "clip.wav", "--output-dir", t / "nowhere"],
        "nowhere: it is a symbolic link to nothing",
    ),
    "convert into a path not UTF-8": lambda t, u, m: (["convert", u, t / NOT_UTF8 / "c"], "is not valid UTF-8"),
    "convert from a path not UTF-8": lambda t, u, m: (["convert", t / NOT_UTF8 / "upstream", t / "c"], "not valid UTF"),
    "convert-vad into a path not UTF-8": lambda t, u, m: (["convert-vad", u, t / NOT_UTF8 / "v"], "is not valid UTF-8"),
    "quantize into a path not UTF-8": lambda t, u, m: (
        ["quantize", m, t / NOT_UTF8 / "q", "--recipe", "4bit-llm"],
        "is not valid UTF-8",
    ),
    "quantize from a path not UTF-8": lambda t, u, m: (
        ["quantize", t / NOT_UTF8 / "model", t / "q", "--recipe", "4bit-llm"],
        "is not valid UTF-8",
    ),
    "transcribe with a model at a path not UTF-8": lambda t, u, m: (
        ["transcribe", t / NOT_UTF8 / "model", t / "clip.wav"],
        "is not valid UTF-8",
    ),
    "run's work at a path not UTF-8": lambda t, u, m: (
        ["run", "bf16", "--work", t / NOT_UTF8 / "w", "--source", u, "--until", "download"],
        "is not valid UTF-8",
    ),
}


@pytest.mark.parametrize("case", DESTINATIONS)
def test_an_unusable_destination_is_refused_before_the_work(case, places):
    """One line before any work (no model loaded, nothing decoded or converted), nothing left."""
    args, fragment = DESTINATIONS[case](*places)
    assert_user_error(invoke_cli(*args), fragment, alone=True)
    assert leftovers(places[0]) == []


def test_a_report_of_a_set_whose_path_is_not_utf8_is_written_and_read_back(tiny_bf16, tmp_path):
    """A set in a folder whose name is not UTF-8: the report is written (the name escaped, as JSON reads
    it back), and merge-reports reads it."""
    from tests.helpers import local_set

    folder = local_set(tmp_path / "set").rename(tmp_path / NOT_UTF8)  # soundfile writes only UTF-8 names
    done = invoke_cli("evaluate", tiny_bf16, "--set", folder, "--report", tmp_path / "r", "--max-new-tokens", "2")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads((tmp_path / "r" / "eval.json").read_text(encoding="utf-8"))
    assert [s["definition"]["path"] for s in report["sets"].values()] == [str(folder)]
    assert invoke_cli("merge-reports", tmp_path / "r", "--out", tmp_path / "m").returncode == 0


@pytest.mark.parametrize(
    "what, fragment",
    [
        ("a set not UTF-8", "metadata.csv:1: not valid UTF-8"),
        ("a set with a field past the CSV limit", "metadata.csv:2: not valid CSV"),
        ("a set without rows", "the set has no rows"),
        ("a benchmark record that is not one", "is not a benchmark record"),
        ("a token budget past the LLM's positions", "max_new_tokens must be in 1..37420"),
    ],
)
def test_run_refuses_a_broken_local_set_or_benchmark_before_any_stage(what, fragment, source, tmp_path):
    """Read as evaluate and card will read them, before download and convert are built: not after. (A
    token budget is checked against the LLM's config in the local source.)"""
    (tmp_path / "set").mkdir()
    metadata = {
        "a set not UTF-8": "file_name,text\n".encode("utf-16"),
        "a set with a field past the CSV limit": b"file_name,text\na.wav," + b"x" * 200_000 + b"\n",
        "a set without rows": b"file_name,text\n",
    }.get(what)
    if what == "a token budget past the LLM's positions":
        local_set_args = ["--set", local_set(tmp_path / "good-set", SENTENCES[:1])]
        more = ["--max-new-tokens", "100000", "--until", "evaluate"]
    elif metadata is None:
        local_set_args = ["--set", "librispeech-test-clean"]
        (tmp_path / "bench.json").write_text('{"recipe": "bf16"}')
        more = ["--benchmark", tmp_path / "bench.json", "--until", "card"]
    else:
        (tmp_path / "set" / "metadata.csv").write_bytes(metadata)
        local_set_args, more = ["--set", tmp_path / "set"], ["--until", "evaluate"]
    work = tmp_path / "work"
    done = invoke_cli("run", "bf16", "--work", work, "--source", source, *local_set_args, *more)
    assert_user_error(done, fragment, alone=True)
    assert not work.exists()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def short_weights(save):
    """MLX's writer on a full disk: it writes what fits and raises nothing."""

    def save_model(folder, *args, **kwargs):
        save(folder, *args, **kwargs)
        weights = Path(folder) / "model.safetensors"
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)

    return save_model


def onto_a_full_disk(save):
    """MLX's own writer on a full disk: every write to /dev/full fails (ENOSPC), and MLX raises a
    RuntimeError that has no errno."""

    def save_model(folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").symlink_to("/dev/full")
        save(folder, *args, **kwargs)

    return save_model


FAULTS = {
    "save_config": lambda save: no_space,
    "save_model": short_weights,
    "save_model onto /dev/full": onto_a_full_disk,
}


@pytest.mark.parametrize(
    "target, writer, fragment",
    [
        ("convert", "save_config", "No space left on device"),
        ("convert", "save_model", "bytes short (disk full?)"),
        ("quantize", "save_model", "bytes short (disk full?)"),
        ("convert", "save_model onto /dev/full", "Unable to write"),
        ("quantize", "save_model onto /dev/full", "Unable to write"),
        ("text", "write_bytes", "No space left on device"),
    ],
)
def test_a_write_that_fails_at_the_end_is_one_line_and_leaves_nothing(
    target, writer, fragment, source, tiny_bf16, tmp_path, monkeypatch
):
    import funasr_nano_mlx.convert as convert_module
    import funasr_nano_mlx.quantize as quantize_module

    module = {"convert": convert_module, "quantize": quantize_module}.get(target)
    if target == "text":  # transcribe --output-dir, card, the plot: files.write_text_atomic
        monkeypatch.setattr(Path, "write_bytes", no_space)
        wav = tmp_path / "clip.wav"
        sf.write(str(wav), np.zeros(1600, np.float32), 16000)
        done = invoke_cli("transcribe", tiny_bf16, wav, "--output-dir", tmp_path / "out", "--max-new-tokens", "2")
        out = tmp_path / "out"
        assert not out.exists() or list(out.iterdir()) == []
    else:
        name = writer.split()[0]  # the function of `module` to wrap
        monkeypatch.setattr(module, name, FAULTS[writer](getattr(module, name)))
        args = (
            [source, tmp_path / "dst"] if target == "convert" else [tiny_bf16, tmp_path / "dst", "--recipe", "4bit-llm"]
        )
        done = invoke_cli(target, *args)
        assert not (tmp_path / "dst").exists()
    assert_user_error(done, fragment)
    assert "nothing was left behind" in done.stderr and leftovers(tmp_path) == []


def test_a_text_write_interrupted_midway_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while `transcribe --output-dir`, a report or a card writes a file: no NAME.PID.tmp stays
    (only staged_output clears a dead process's partials, and it never looks at these)."""
    from funasr_nano_mlx.files import write_text_atomic

    write = Path.write_bytes

    def interrupted(self, data):
        write(self, data[:2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(tmp_path / "clip.txt", "a transcript")
    assert list(tmp_path.iterdir()) == []


# -- 9. promises kept exactly --------------------------------------------------------------------------


def a_dry_run_from_nothing(source, tmp_path):
    work = tmp_path / "work"
    done = invoke_cli(*dry_run(source, tmp_path))
    assert done.returncode == 0, done.stderr
    assert all(f"[bf16] {stage}: dry run: would build" in done.stderr for stage in ("download", "card", "publish"))
    assert not work.exists()


def a_dry_run_after_a_partial_build(source, tmp_path):
    """Every file stays as it was (times included); each stage is named up to date or to be built."""
    work = tmp_path / "work"
    assert invoke_cli(*run_args(source, work)).returncode == 0
    before = {name: path.stat().st_mtime_ns for name, path in files_of(work).items()}
    done = invoke_cli(*dry_run(source, tmp_path))
    assert done.returncode == 0, done.stderr
    assert "[bf16] convert: up to date" in done.stderr and "[bf16] quantize: dry run: would build" in done.stderr
    assert {name: path.stat().st_mtime_ns for name, path in files_of(work).items()} == before
    assert sorted(p.name for p in (work / "bf16").iterdir()) == ["convert", "download"]


def a_hub_conversion_without_revision(source, tmp_path):
    """The commit `main` resolved to: said on stderr in one line, recorded as the source's."""
    from tests.hub_server import HubServer

    with HubServer() as server:
        commit = server.seed("FunAudioLLM/Fun-ASR-Nano-2512", files_of(source))
        env = server.client_env(tmp_path / "hf")
        done = run_cli("convert", "FunAudioLLM/Fun-ASR-Nano-2512", tmp_path / "mlx", env=env)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "resolved to commit" in line]
    assert said == [
        f"note: FunAudioLLM/Fun-ASR-Nano-2512 main resolved to commit {commit}; pass --revision {commit} "
        "to convert exactly this again"
    ]
    conversion = json.loads((tmp_path / "mlx/config.json").read_text())["conversion"]
    assert conversion["source"] == f"FunAudioLLM/Fun-ASR-Nano-2512@{commit}"


def dry_run(source: Path, tmp_path: Path) -> list:
    from tests.helpers import local_set

    speech = tmp_path / "speech" if (tmp_path / "speech").exists() else local_set(tmp_path / "speech")
    return [
        "run",
        "bf16",
        "--work",
        tmp_path / "work",
        "--source",
        source,
        "--set",
        speech,
        "--repo",
        "a/b",
        "--dry-run",
    ]


PROMISES = [a_dry_run_from_nothing, a_dry_run_after_a_partial_build, a_hub_conversion_without_revision]


@pytest.mark.parametrize("case", PROMISES, ids=[c.__name__ for c in PROMISES])
def test_what_is_promised_is_done_exactly(case, source, tmp_path):
    case(source, tmp_path)
