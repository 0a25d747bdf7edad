"""Evaluation sets: their definitions and the readers of their rows. A set is a Hugging Face
dataset streamed with `datasets` at a pinned commit (eval_sets/NAME.yaml names it, its files or
config, its columns, its language and the SHA-256 of files where one is published), a local folder
with `metadata.csv` (file_name and one transcript column: text, transcription or sentence; an
optional language), as the HF audiofolder docs lay it out, or a JSONL manifest ({"audio": path,
"text": ..., "language"?: ...}). A set YAML may also point at a local folder or manifest (`path`)
and name its columns.

`open_set` gives a set's rows as `Item`s, after every check that needs no model: the set exists, a
hub set is pinned and its pinned files have their SHA-256, the columns are there. A row that cannot
be scored (missing audio, unknown language) carries its reason in `problem`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path


from .errors import UserError
from .files import printable
from .hub import COMMIT, hub_errors, one_line
from .packaged import EVAL_SETS_DIR, packaged_names
from .strict_yaml import StrictMapping, check, read_utf8, short

# Columns when a set's definition names none (every local format also takes an optional `language`).
HUB_COLUMNS = ("audio", "text")
LOCAL_AUDIO_COLUMN = {"metadata.csv": "file_name", ".jsonl": "audio"}
# metadata.csv as people lay it out: the Hugging Face audiofolder docs show both `text` and
# `transcription`, Common Voice writes `sentence`. Exactly one of them must be present, or be named.
TRANSCRIPT_COLUMNS = ("text", "transcription", "sentence")
JSONL_TEXT_COLUMN = "text"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: a hub dataset (`dataset`) or a local one (`path`)."""

    name: str
    dataset: str | None = None  # HF dataset id (or a local directory that `datasets` reads)
    config: str | None = None
    split: str = "test"
    revision: str | None = None  # 40-hex commit; a hub dataset is read only at a pinned commit
    data_files: str | None = None  # path or glob in the repo: these parquet files, not the repo's configs
    sha256: dict[str, str] | None = None  # path in the repo (matched by data_files) -> its SHA-256
    audio_column: str | None = None  # None: HUB_COLUMNS / LOCAL_AUDIO_COLUMN
    text_column: str | None = None  # None: HUB_COLUMNS, JSONL_TEXT_COLUMN, or one of TRANSCRIPT_COLUMNS
    id_column: str | None = None
    path: str | None = None  # local set: a folder with metadata.csv, or a .jsonl manifest
    language: str | None = None  # ISO code for every row; a local row's own `language` wins
    itn: bool = True  # False asks the model for unnormalized text (references with numbers in words)
    traditional_to_simplified: bool = False
    description: str = ""

    @classmethod
    def load(cls, name_or_path: str | Path) -> EvalSet:
        """A set by name (eval_sets/NAME.yaml), a set YAML file, a local folder or a JSONL manifest."""
        path = Path(name_or_path)
        if path.is_dir() or (path.is_file() and path.suffix == ".jsonl"):
            # The name labels the report's tables and plot: printable (escaped) where the file name is not UTF-8
            return cls(name=printable(path.name if path.is_dir() else path.stem), path=str(path))
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(path)
        if (EVAL_SETS_DIR / f"{name_or_path}.yaml").is_file():
            return cls.from_yaml(EVAL_SETS_DIR / f"{name_or_path}.yaml")
        known = ", ".join(packaged_names(EVAL_SETS_DIR))
        raise UserError(
            f"no evaluation set {str(name_or_path)!r}: give a folder with metadata.csv, a .jsonl "
            f"manifest, a set YAML file, or one of: {known}"
        )

    @classmethod
    def from_yaml(cls, file: Path) -> EvalSet:
        """A set definition, read as strictly as a recipe: errors name the file, line and field."""
        top = StrictMapping.read(file, file.read_bytes(), "set")
        types = {"bool": (bool,), "dict[str, str] | None": (dict,)}  # otherwise text
        data = {
            f.name: top.take(f.name, types.get(f.type, (str,)), required=False, default=f.default)
            for f in fields(cls)
            if f.name != "name"
        }
        top.finish()
        if data.get("path"):  # relative to the YAML file, like a manifest's audio paths
            data["path"] = str(file.parent / data["path"])
        evalset = cls(name=file.stem, **data)
        if (evalset.dataset is None) == (evalset.path is None):
            raise top.error("give either `dataset` (a hub dataset) or `path` (a local set)")
        check(
            top,
            "data_files",
            not evalset.data_files or evalset.data_files.endswith(".parquet"),
            f"{evalset.data_files!r} names no .parquet files; they are read with the parquet builder (leave "
            "it out to read the repo's config and split)",
        )
        evalset._check_sha256_fields(file)
        from .languages import resolve_language

        resolve_language(evalset.language)  # a bad language fails before anything runs
        return evalset

    def _check_sha256_fields(self, file: Path) -> None:
        """Each pin is a 64-hex digest of a file the set reads: one that `data_files` names (the files
        that a repo's configs would pick are not known before the hub is asked)."""
        for path, digest in (self.sha256 or {}).items():
            if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):  # YAML reads 123... as a number
                raise UserError(
                    f"{file}: sha256: {path}: expected 64 lower-case hex digits (quoted if all are "
                    f"digits), found {digest!r}"
                )
            if not self.data_files or not fnmatch.fnmatchcase(str(path), self.data_files):
                raise UserError(
                    f"{file}: sha256: {path} is not a file this set reads (data_files: "
                    f"{self.data_files or 'none'}): pin the files that data_files names"
                )

    @property
    def is_hub(self) -> bool:
        return self.dataset is not None and not Path(self.dataset).exists()

    @property
    def data_files_url(self) -> str:
        """`data_files` where `datasets` reads them: in the hub repo at the pinned commit, or in the
        local dataset folder."""
        assert self.dataset is not None and self.data_files is not None
        if self.is_hub:
            return f"hf://datasets/{self.dataset}@{self.revision}/{self.data_files}"
        return str(Path(self.dataset) / self.data_files)

    @property
    def label(self) -> str:
        which = f" files {self.data_files}" if self.data_files else f" ({self.config})" if self.config else ""
        return f"dataset {self.dataset}{which} split {self.split}"

    def require_pin(self) -> None:
        """A hub dataset is read only at a pinned commit."""
        if self.is_hub and not COMMIT.fullmatch(self.revision or ""):
            named = EVAL_SETS_DIR / f"{self.name}.yaml"
            where = f"in {named}" if named.is_file() else "in its definition"
            raise UserError(
                f"set {self.name}: {self.label} is not pinned to a commit (revision: {self.revision or 'none'}); "
                f"write its 40-hex commit as `revision` {where}, or evaluate other sets: nothing unpinned "
                "is evaluated"
            )

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class Item:
    """One row of a set before inference; `problem` says why it cannot be scored, when known early."""

    index: int
    id: str
    reference: str
    language: str | None
    audio: Path | bytes | None  # a file, or an encoded file's bytes (hub sets)
    suffix: str = ".wav"
    problem: str | None = None


def _require_columns(available: Sequence[str], wanted: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise UserError(
            f"{where}: no column {', '.join(map(repr, missing))}; the columns are: {', '.join(available) or '(none)'}"
        )


def _require_rows(rows: list, file: Path) -> None:
    if not rows:  # an evaluation of nothing would print no error rate and pass every bound
        raise UserError(f"{file}: the set has no rows")


def _local_item(index: int, audio, text, language, base: Path, evalset: EvalSet) -> Item:
    from .languages import resolve_language

    # A JSONL row may hold any JSON value: a number or a list where text belongs is this row's problem.
    wrong = [
        f"{name} {short(value)} is not a string"
        for name, value in (("audio", audio), ("text", text), ("language", language))
        if value is not None and not isinstance(value, str)
    ]
    if wrong:
        return Item(index, f"row {index}", "", None, None, problem="; ".join(wrong))
    audio_path = base / str(audio) if audio else None
    item = Item(index, str(audio or f"row {index}"), str(text or ""), language or evalset.language, audio_path)
    try:
        resolve_language(item.language)
    except UserError:
        item.problem = f"unknown language {item.language!r}"
    if audio_path is None:
        item.problem = "no audio path"
    elif not audio_path.is_file():
        from .audio import check_audio_path

        try:  # what it is instead (missing, a folder, a pipe, a link to nothing), as `transcribe` says
            check_audio_path(audio_path)
        except UserError as err:
            item.problem = str(err)
    return item


def _transcript_column(columns: Sequence[str], evalset: EvalSet, where: str) -> str:
    """The column of a metadata.csv that holds the transcripts: the one the set's definition names,
    else the one of TRANSCRIPT_COLUMNS present. None of them, or several: which one is meant is not
    known, and guessing would score against the wrong text."""
    if evalset.text_column:
        _require_columns(columns, [evalset.text_column], where)
        return evalset.text_column
    found = [c for c in TRANSCRIPT_COLUMNS if c in columns]
    if len(found) == 1:
        return found[0]
    problem = (
        f"{' and '.join(found)}: which is the transcript?"
        if found
        else f"no transcript column ({', '.join(TRANSCRIPT_COLUMNS)})"
    )
    raise UserError(
        f"{where}: {problem} the columns are: {', '.join(columns) or '(none)'}; keep one, or name it "
        "as text_column in a set YAML whose path is this folder"
    )


def _csv_items(folder: Path, evalset: EvalSet) -> Iterator[Item]:
    file = folder / "metadata.csv"
    if not file.is_file():
        raise UserError(
            f"{folder} has no metadata.csv (columns: file_name and one of {', '.join(TRANSCRIPT_COLUMNS)} [,language])"
        )
    reader = csv.DictReader(io.StringIO(read_utf8(file, file.read_bytes()), newline=""))  # as open(newline="")
    try:
        columns = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as err:  # e.g. a field longer than csv.field_size_limit() (128 KiB)
        # line_num counts the lines of the records read whole: the failing record starts on the next one
        raise UserError(f"{file}:{reader.line_num + 1}: not valid CSV: {err}") from None
    twice = next((c for c in columns if columns.count(c) > 1), None)
    if twice is not None:  # DictReader would keep the last silently: which one is meant is not known
        raise UserError(f"{file}:1: column {twice!r} is given twice; the columns are: {', '.join(columns)}")
    audio = evalset.audio_column or LOCAL_AUDIO_COLUMN[file.name]
    _require_columns(columns, [audio], str(file))
    text = _transcript_column(columns, evalset, str(file))
    _require_rows(rows, file)
    return (_local_item(i, row[audio], row[text], row.get("language"), folder, evalset) for i, row in enumerate(rows))


def _jsonl_items(file: Path, evalset: EvalSet) -> Iterator[Item]:
    lines = [line for line in read_utf8(file, file.read_bytes()).splitlines() if line.strip()]
    _require_rows(lines, file)
    rows, not_json = [], {}  # a line that is not JSON: its row is None and its problem kept apart
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as err:
            rows.append(None)
            not_json[i] = f"not valid JSON: {err}"
    first = next((row for row in rows if isinstance(row, dict)), {})
    audio = evalset.audio_column or LOCAL_AUDIO_COLUMN[".jsonl"]
    text = evalset.text_column or JSONL_TEXT_COLUMN
    _require_columns(list(first), [audio, text], str(file))

    def items():
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                yield Item(i, f"line {i + 1}", "", None, None, problem=not_json.get(i, "not an object"))
            else:
                yield _local_item(i, row.get(audio), row.get(text), row.get("language"), file.parent, evalset)

    return items()


# A pinned SHA-256 is checked against the hub's own record of the file at the pinned commit, not
# against the bytes read. Streaming reads a file's footer and a few row groups, never all of it: the
# bytes cannot be hashed without first downloading hundreds of MB per set. The record is the file's
# LFS pointer (its oid is the SHA-256 of the content), which is part of the commit's tree: one
# paths-info request, before any row is read, shows that the pinned commit holds the very file that
# public listings describe, and refuses a definition whose revision or path does not. What it cannot
# show is that the storage behind the hub served those bytes (no streamed read can). A local dataset
# folder's files are hashed in full: they are on disk already.
def _recorded_sha256(evalset: EvalSet) -> dict[str, str | None]:
    """path -> the SHA-256 of each pinned file present (None: the hub records none, not an LFS file)."""
    from .files import sha256

    paths = list(evalset.sha256 or {})
    if not evalset.is_hub:
        return {p: sha256(Path(evalset.dataset) / p) for p in paths if (Path(evalset.dataset) / p).is_file()}
    from huggingface_hub import HfApi

    with hub_errors("check the SHA-256 of its files", subject=f"set {evalset.name}"):
        infos = HfApi().get_paths_info(evalset.dataset, paths, revision=evalset.revision, repo_type="dataset")
    return {i.path: i.lfs.sha256 if getattr(i, "lfs", None) else None for i in infos if hasattr(i, "blob_id")}


def check_sha256(evalset: EvalSet) -> None:
    """Refuse the set, in one line, unless every pinned file has its pinned SHA-256 (see above)."""
    if not evalset.sha256:
        return
    recorded = _recorded_sha256(evalset)
    where = f"{evalset.dataset}" + (f"@{evalset.revision}" if evalset.is_hub else "")
    for path, expected in evalset.sha256.items():
        found = recorded.get(path, "absent")
        if found != expected:
            what = {"absent": "there is no such file", None: "it has no SHA-256 (not an LFS file)"}.get(
                found, f"its SHA-256 is {found}"
            )
            raise UserError(
                f"set {evalset.name}: {path} in {where}: {what}, the definition pins {expected}: "
                "nothing is evaluated against other data than the pinned file"
            )


def _stream(evalset: EvalSet):
    from datasets import load_dataset

    if evalset.data_files:
        # The named files, with the parquet builder, at the pinned commit: the repo's configs and any
        # loading script are not consulted (datasets 5 refuses a repo with a script, as google/fleurs's
        # main is), and these are the files whose SHA-256 a definition can pin.
        return load_dataset(
            "parquet", data_files={evalset.split: evalset.data_files_url}, split=evalset.split, streaming=True
        )
    return load_dataset(
        evalset.dataset,
        evalset.config,
        split=evalset.split,
        streaming=True,
        revision=evalset.revision if evalset.is_hub else None,
    )


def _hub_items(evalset: EvalSet) -> Iterator[Item]:
    from datasets import Audio

    label = evalset.label
    evalset.require_pin()
    check_sha256(evalset)
    try:
        with hub_errors(f"open {label}", subject=f"set {evalset.name}"):  # a missing dataset is an OSError
            stream = _stream(evalset)
            columns = stream.column_names or list(next(iter(stream)))
    except (ValueError, StopIteration) as err:
        raise UserError(f"set {evalset.name}: cannot open {label}: {one_line(err) or 'it has no rows'}") from None
    audio_column, text_column = evalset.audio_column or HUB_COLUMNS[0], evalset.text_column or HUB_COLUMNS[1]
    wanted = [c for c in (audio_column, text_column, evalset.id_column) if c]
    _require_columns(columns, wanted, f"set {evalset.name}: {label}")
    # Undecoded: our own loader reads the bytes, as for local files (and no torchcodec is needed).
    stream = stream.cast_column(audio_column, Audio(decode=False))

    def items():
        with hub_errors(f"read {label}", subject=f"set {evalset.name}"):  # rows stream in as they are read
            yield from rows()

    def rows():
        for i, row in enumerate(stream):
            audio = row[audio_column] or {}
            name = audio.get("path") or ""
            data = audio.get("bytes") or (Path(name) if name and Path(name).is_file() else None)
            item = Item(
                i,
                str(row[evalset.id_column]) if evalset.id_column else name or str(i),
                str(row[text_column] or ""),
                evalset.language,
                data,
                Path(name).suffix or ".wav",
            )
            item.problem = None if data is not None else "no audio in the row"
            yield item

    return items()


def open_set(evalset: EvalSet) -> Iterator[Item]:
    """The set's rows, in their stored order. A missing set or column fails here, before any inference."""
    if evalset.path is None:
        return _hub_items(evalset)
    path = Path(evalset.path)
    if path.is_dir():
        return _csv_items(path, evalset)
    if path.is_file():
        return _jsonl_items(path, evalset)
    raise UserError(f"set {evalset.name}: {path} is neither a folder with metadata.csv nor a .jsonl manifest")


def check_sets(sets: Sequence[str]) -> list[EvalSet]:
    """The sets, loaded, after the checks that need no data: each exists, hub sets are pinned, names
    are distinct. `run` calls it before any stage, `evaluate` before the model loads."""
    evalsets = [EvalSet.load(s) for s in sets]
    if len({s.name for s in evalsets}) < len(evalsets) or not evalsets:
        raise UserError(f"give one or more sets with distinct names (got {[s.name for s in evalsets]})")
    for evalset in evalsets:
        evalset.require_pin()
    return evalsets


def set_files(name_or_path: str) -> list[Path]:
    """The local files a set's definition is read from (metadata.csv, the manifest, the set YAML): a
    report made before one of them changed is stale. Audio files are not watched."""
    path = Path(name_or_path)
    if path.is_dir():
        return [path / "metadata.csv"] if (path / "metadata.csv").is_file() else []
    if path.is_file() and path.suffix in (".yaml", ".yml"):  # and the local set it points at, if any
        local = EvalSet.from_yaml(path).path
        return [path] + (set_files(local) if local and Path(local).exists() else [])
    if path.is_file():
        return [path]
    named = EVAL_SETS_DIR / f"{name_or_path}.yaml"
    return [named] if named.is_file() else []
