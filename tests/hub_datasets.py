"""The dataset repos that the shipped evaluation sets read, on the fake hub (tests/hub_server.py).

Each repo is laid out as the real one is at the commit the set definitions pin, under that very
commit id: google/fleurs (a loading script beside parquet-data/<config>/test-00000-of-00001.parquet at
one commit, <config>/test-00000-of-00001.parquet at the other), openslr/librispeech_asr (README configs
clean/other/all over clean/test/, other/test/, all/test.clean/...), TwinkStart/AISHELL-1 (README config
default over data/test-*). The file names under a config's folder are the hub's usual ones where public
listings do not show them (clean/test/0000.parquet, data/test-00000-of-00001.parquet).

The rows are a few synthetic spoken sentences (espeak-ng through tests/speech.py), in parquet files
with the `audio` struct of `bytes` and `path` that the real files have. A file whose SHA-256 a
definition pins is served under that declared hash (HubServer.seed's `declared`): the real file is
hundreds of MB and cannot be rebuilt from its hash, so these bytes are a stand-in that the hub's
records describe as the real file, which is what the evaluation's SHA-256 check reads.

    with HubServer() as hub:
        rows = seed_eval_sets(hub, ["fleurs-en", "librispeech-test-clean"])
        subprocess.run([..., "evaluate", model, "--set", "fleurs-en", ...], env=hub.client_env(home))
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from funasr_nano_mlx.evalsets import EvalSet
from tests.hub_server import HubServer
from tests.speech import synthesize

ROWS = 2  # rows per set: the evaluation test scores these end to end

# What the real repos hold besides the data files, at the pinned commits.
FLEURS_FILES = {
    "fleurs.py": b"# the loading script that datasets 5 refuses to run\n",
    "README.md": b"---\nlicense: cc-by-4.0\n---\n# FLEURS\n",
}
LIBRISPEECH_README = b"""---
license: cc-by-4.0
configs:
- config_name: clean
  data_files:
  - split: test
    path: clean/test/*
- config_name: other
  data_files:
  - split: test
    path: other/test/*
- config_name: all
  data_files:
  - split: test.clean
    path: all/test.clean/*
  - split: test.other
    path: all/test.other/*
---
# LibriSpeech
"""
AISHELL_README = b"""---
configs:
- config_name: default
  data_files:
  - split: test
    path: data/test-*
---
# AISHELL-1
"""
REPO_FILES = {
    "google/fleurs": FLEURS_FILES,
    "openslr/librispeech_asr": {"README.md": LIBRISPEECH_README},
    "TwinkStart/AISHELL-1": {"README.md": AISHELL_README},
}
# The file of each config's split that the READMEs above list (datasets resolves every config of a
# repo, so each must have its file). Sets read through a config read the one named here.
CONFIG_FILES = {
    ("openslr/librispeech_asr", "clean", "test"): "clean/test/0000.parquet",
    ("openslr/librispeech_asr", "other", "test"): "other/test/0000.parquet",
    ("openslr/librispeech_asr", "all", "test.clean"): "all/test.clean/0000.parquet",
    ("openslr/librispeech_asr", "all", "test.other"): "all/test.other/0000.parquet",
    ("TwinkStart/AISHELL-1", "default", "test"): "data/test-00000-of-00001.parquet",
}

# Spoken rows per language: (espeak-ng voice, sentence as written). The references of each set are
# written as that set writes them (see `_columns`).
SENTENCES = {
    "en": ("en", ["The quick brown fox jumps over the lazy dog.", "Please call Stella at five o'clock."]),
    "zh": ("cmn", ["今天天气很好。", "我们一起去公园散步。"]),
    "ja": ("ja", ["今日はいい天気です。", "駅はどこですか。"]),
    "ko": ("ko", ["오늘은 날씨가 좋습니다.", "역이 어디에 있습니까?"]),
    "vi": ("vi", ["Hôm nay trời đẹp.", "Nhà ga ở đâu?"]),
    "ar": ("ar", ["الطقس جميل اليوم.", "أين المحطة؟"]),
}


def _audio(text: str, voice: str, folder: Path, suffix: str) -> dict:
    """The `audio` struct of one row: the encoded file's bytes and its name."""
    samples, rate = sf.read(str(synthesize(text, folder / "clip.wav", voice)), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=suffix.upper())
    return {"bytes": buffer.getvalue(), "path": f"{abs(hash(text))}.{suffix}"}


def _columns(evalset: EvalSet, index: int, text: str, audio: dict) -> dict:
    """One row with the columns of the real set: FLEURS keeps the written sentence and its own lower
    case, punctuation-free normalization; LibriSpeech writes upper case without punctuation; AISHELL
    separates characters by spaces."""
    if evalset.dataset == "google/fleurs":
        plain = "".join(c for c in text.lower() if c.isalnum() or c.isspace())
        return {"id": 1000 + index, "audio": audio, "transcription": plain, "raw_transcription": text}
    if evalset.dataset == "openslr/librispeech_asr":
        words = "".join(c if c.isalnum() or c in " '" else " " for c in text.upper()).split()
        return {"file": audio["path"], "audio": audio, "text": " ".join(words), "id": f"1089-134686-{index:04d}"}
    return {"audio": audio, "text": " ".join(c for c in text if not c.isspace() and c not in "。，")}


def _parquet(rows: list[dict]) -> bytes:
    """The rows as the hub's parquet files store them (with datasets' feature metadata)."""
    from datasets import Audio, Dataset

    dataset = Dataset.from_list(rows).cast_column("audio", Audio(decode=False))
    buffer = io.BytesIO()
    dataset.to_parquet(buffer)
    return buffer.getvalue()


def data_file(evalset: EvalSet) -> str:
    """The path in its repo of the one file a shipped set reads."""
    if evalset.data_files:
        assert not any(c in evalset.data_files for c in "*?["), f"{evalset.name}: name the file, not a glob"
        return evalset.data_files
    return CONFIG_FILES[(evalset.dataset, evalset.config, evalset.split)]


def seed_eval_sets(hub: HubServer, names: Iterable[str], declared: dict[str, str] | None = None) -> dict[str, list]:
    """Seed on `hub` the dataset repos that the shipped sets `names` read, each at the commit its
    definition pins, with ROWS spoken rows per set. Every pinned file declares the definition's
    SHA-256, except the paths in `declared` (path -> another hash, to test a mismatch). Call it once
    per server, with every set the test needs: a pinned commit is made once. Returns set name -> its
    rows as served (for checking references)."""
    with tempfile.TemporaryDirectory() as folder:  # espeak-ng's wav files, read back at once
        return _seed(hub, [EvalSet.load(name) for name in names], Path(folder), declared or {})


def _seed(hub: HubServer, evalsets: list[EvalSet], folder: Path, declared: dict[str, str]) -> dict[str, list]:
    commits: dict[tuple[str, str], dict] = {}  # (repo, revision) -> {"files": {...}, "declared": {...}}
    rows_by_set = {}
    for evalset in evalsets:
        assert evalset.revision, f"{evalset.name} is not pinned: nothing to seed"
        voice, texts = SENTENCES[evalset.language]
        suffix = "flac" if evalset.dataset == "openslr/librispeech_asr" else "wav"
        rows = [_columns(evalset, i, text, _audio(text, voice, folder, suffix)) for i, text in enumerate(texts[:ROWS])]
        commit = commits.setdefault(
            (evalset.dataset, evalset.revision), {"files": dict(REPO_FILES[evalset.dataset]), "declared": {}}
        )
        commit["files"][data_file(evalset)] = _parquet(rows)
        commit["declared"].update(evalset.sha256 or {})
        rows_by_set[evalset.name] = rows
    for (repo, revision), commit in commits.items():
        some_rows = next(data for path, data in commit["files"].items() if path.endswith(".parquet"))
        for path in (path for (owner, *_), path in CONFIG_FILES.items() if owner == repo):
            commit["files"].setdefault(path, some_rows)  # a config no set here reads: any valid rows
        pins = {**commit["declared"], **{p: h for p, h in declared.items() if p in commit["files"]}}
        hub.seed(repo, commit["files"], f"data at {revision[:7]}", repo_type="dataset", sha=revision, declared=pins)
    return rows_by_set
