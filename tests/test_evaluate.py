"""Evaluation: exact error counts, local and hub-style sets, bad rows, shards and their merge, the
variant comparison and the report, end to end with the tiny random model (its transcripts are
gibberish, so these tests check the machinery, not accuracy)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.evalsets import EvalSet, check_sets, open_set, set_files
from funasr_nano_mlx.evaluate import (
    EVAL_JSON,
    HYPOTHESES,
    SUMMARY,
    answers,
    evaluate,
    merge,
    parse_shard,
    plot,
    read_report,
)
from funasr_nano_mlx.packaged import EVAL_SETS_DIR, RECIPES_DIR
from funasr_nano_mlx.report import PLOT
from funasr_nano_mlx.scoring import Row, score
from tests.helpers import assert_user_error, hub_style_dataset, invoke_cli
from tests.speech import synthesize

MAX_NEW_TOKENS = 16  # random weights rarely stop by themselves: keep decoding short
ENGLISH = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "twenty one people came to the meeting",
    "please call me back after five o'clock",
    "the weather is nice today",
    "I can't find my keys anywhere",
]
MANDARIN = ["今天天气很好", "我们一起去公园散步", "请把门关上", "这本书非常有意思", "明天早上八点开会", "我喜欢喝绿茶"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- exact counts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference, hypothesis, language, expected",
    [
        # (substitutions, deletions, insertions, hits)
        ("The cat sat on the mat.", "the cat sat on a mat", "en", (1, 0, 0, 5)),
        ("one two three", "1 2 3 4", "en", (0, 0, 1, 3)),
        ("It's twenty-one degrees!", "its 21 degrees", "en", (0, 0, 0, 3)),
        ("hello big world", "hello world", "en", (0, 1, 0, 2)),
        ("今天天气很好", "今天天汽很好啊", "zh", (1, 0, 1, 5)),
        ("今天天气很好。", "今天很好", "zh", (0, 2, 0, 4)),
        ("我们用Python写代码", "我们用 python 写码", "zh", (0, 1, 0, 6)),  # an English word is one token
        ("打开WiFi设置", "打开 Wi-Fi 设置", "zh", (1, 0, 1, 4)),  # wifi -> wi + fi
        ("请打开 Bluetooth 然后播放音乐", "请打开蓝牙然后播放 music", "zh", (2, 1, 1, 7)),  # 音乐 -> music: S + D
        ("東京へ行きます。", "東京に行きます", "ja", (1, 0, 0, 6)),
        ("ＧＰＴ４很强！", "gpt4很强", "zh", (0, 0, 0, 3)),  # full width and case
        ("今天 is fine", "今天 is fine", None, (0, 0, 0, 4)),  # no language: CJK text is scored by character
        ("甚 至 出 现 交 易 停 滞", "甚至出现交易停滞。", "zh", (0, 0, 0, 8)),  # AISHELL writes spaces
    ],
)
def test_known_pairs(reference, hypothesis, language, expected):
    counts = score(reference, hypothesis, language)
    assert (counts["substitutions"], counts["deletions"], counts["insertions"], counts["hits"]) == expected


# -- sets ---------------------------------------------------------------------------------------------


def write_set(folder: Path, rows: list[tuple[str, str, str | None]]) -> Path:
    """metadata.csv (file_name,text,language) for files already in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text", "language"])
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def speech_set(tmp_path_factory) -> Path:
    """A dozen espeak-ng utterances, English then Mandarin, as a local set named `speech`."""
    folder = tmp_path_factory.mktemp("sets") / "speech"
    rows = []
    for voice, language, texts in (("en", "en", ENGLISH), ("cmn", "zh", MANDARIN)):
        for i, text in enumerate(texts):
            synthesize(text, folder / f"{language}-{i}.wav", voice)
            rows.append((f"{language}-{i}.wav", text, language))
    return write_set(folder, rows)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny_f32, tiny_bf16, speech_set) -> dict[str, Path]:
    """Reports of the tiny model: bf16, bf16 against itself, 4-bit LLM (recipe 4bit-llm) and float32
    against bf16, float32 also in three shards merged."""
    from funasr_nano_mlx.quantize import quantize
    from funasr_nano_mlx.recipe import Recipe

    out = tmp_path_factory.mktemp("reports")
    sets = [str(speech_set)]
    run = {"max_new_tokens": MAX_NEW_TOKENS}
    evaluate(tiny_bf16, sets, out / "bf16", **run)
    evaluate(tiny_bf16, sets, out / "bf16-self", baseline=out / "bf16", **run)
    evaluate(tiny_f32, sets, out / "f32", baseline=out / "bf16", **run)
    four_bit = quantize(tiny_bf16, tmp_path_factory.mktemp("quantized") / "tiny-4bit-llm", Recipe.load("4bit-llm"))
    evaluate(four_bit, sets, out / "4bit", baseline=out / "bf16", **run)
    shards = [out / f"f32-shard-{i}" for i in range(3)]
    for i, shard in enumerate(shards):
        evaluate(tiny_f32, sets, shard, shard=f"{i}/3", **run)
    merge(shards, out / "f32-merged", baseline=out / "bf16")
    return {path.name: path for path in out.iterdir()}


def test_end_to_end_report(reports):
    report, rows = read_report(reports["f32"])
    data = report["sets"]["speech"]
    assert len(rows) == data["rows"] == data["utterances"] == 12 and data["skipped"] == []
    assert {metric: s["utterances"] for metric, s in data["scores"].items()} == {"cer": 6, "wer": 6}
    for metric, s in data["scores"].items():  # micro rate from the per-utterance counts
        group = [r for r in rows if r.metric == metric]
        assert s["substitutions"] == sum(r.substitutions for r in group)
        assert s["reference_tokens"] == sum(r.substitutions + r.deletions + r.hits for r in group)
        assert s["error_rate"] == pytest.approx(sum(r.errors for r in group) / s["reference_tokens"])
    assert {r.language for r in rows} == {"en", "zh"} and all(0 < len(r.token_ids) <= MAX_NEW_TOKENS for r in rows)
    assert data["audio_hours"] > 0 and data["real_time_factor"] > 0 and data["tokens_per_second"] > 0
    assert data["peak_memory_bytes"] > 0
    assert report["model"]["name"] == "tiny-float32" and report["model"]["conversion"]["dtype"] == "float32"
    assert report["model"]["size_bytes"] > 0 and report["package_version"] and report["machine"]["mlx"]
    print(
        f"\ntiny float32, {MAX_NEW_TOKENS} new tokens: "
        + ", ".join(f"{m.upper()} {100 * s['error_rate']:.0f}%" for m, s in data["scores"].items())
        + f", RTF {data['real_time_factor']:.3f}"
    )


def test_report_renders(reports):
    summary = (reports["f32"] / SUMMARY).read_text()
    assert summary.startswith("# Evaluation of tiny-float32")
    assert "| speech | WER |" in summary and "| speech | CER |" in summary
    assert "## Against tiny-bfloat16" in summary and "## Skipped rows (0)" in summary and f"]({PLOT})" in summary
    png = (reports["f32"] / PLOT).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and b"Matplotlib" in png[:200]  # matplotlib's Software tag


def test_sharded_and_merged_equals_unsharded(reports):
    shard_rows = [read_report(reports[f"f32-shard-{i}"])[1] for i in range(3)]
    assert [len(rows) for rows in shard_rows] == [4, 4, 4]
    assert sorted(r.index for rows in shard_rows for r in rows) == list(range(12))
    (whole, whole_rows), (merged, merged_rows) = read_report(reports["f32"]), read_report(reports["f32-merged"])

    def untimed(rows: list[Row]) -> list[dict]:
        return [{k: v for k, v in asdict(r).items() if k not in Row.TIMING_FIELDS} for r in rows]

    assert untimed(merged_rows) == untimed(whole_rows)
    timed = ("real_time_factor", "tokens_per_second", "peak_memory_bytes")
    for name, data in whole["sets"].items():
        assert {k: v for k, v in merged["sets"][name].items() if k not in timed} == {
            k: v for k, v in data.items() if k not in timed
        }
    assert merged["settings"]["shards"] == 3 and len(merged["settings"]["merged_from"]) == 3


def test_bf16_against_itself_agrees_fully(reports):
    comparison = read_report(reports["bf16-self"])[0]["sets"]["speech"]["comparison"]
    assert comparison["token_agreement"] == 1.0 and comparison["identical"] == 1.0
    for s in comparison["scores"].values():
        assert s["delta"] == 0.0 and s["delta_ci95"] == [0.0, 0.0] and s["token_agreement"] == 1.0
    assert comparison["changed_most"] == [] and comparison["utterances"] == 12
    assert "None: every compared utterance has the baseline's tokens." in (reports["bf16-self"] / SUMMARY).read_text()


@pytest.mark.parametrize("variant", ["f32", "4bit"])
def test_variant_against_bf16_is_measured(reports, variant):
    report = read_report(reports[variant])[0]
    comparison = report["sets"]["speech"]["comparison"]
    print(
        f"\n{report['model']['name']} vs tiny-bfloat16 ({MAX_NEW_TOKENS} new tokens, 12 utterances): token agreement "
        f"{100 * comparison['token_agreement']:.1f}%, identical {100 * comparison['identical']:.0f}%; "
        + "; ".join(
            f"{m.upper()} delta {100 * s['delta']:+.1f} [{100 * s['delta_ci95'][0]:+.1f}, "
            f"{100 * s['delta_ci95'][1]:+.1f}]"
            for m, s in comparison["scores"].items()
        )
    )
    assert 0.0 <= comparison["token_agreement"] <= 1.0 and comparison["utterances"] == 12
    for s in comparison["scores"].values():
        low, high = s["delta_ci95"]
        assert low <= s["delta"] <= high and s["delta"] == pytest.approx(s["variant"] - s["baseline"])
    changed = comparison["changed_most"]
    assert len(changed) == round(12 * (1 - comparison["identical"])) or len(changed) == 10
    lines = (reports[variant] / "comparison.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(0 <= json.loads(line)["token_agreement"] <= 1 for line in lines)


def test_plot_of_several_variants(reports, tmp_path):
    png = plot([reports["bf16"], reports["f32"], reports["4bit"]], tmp_path / "variants.png")
    assert png.read_bytes().startswith(PNG_SIGNATURE) and b"Matplotlib" in png.read_bytes()[:200]


# -- bad rows and bad sets -------------------------------------------------------------------------------


def test_bad_rows_are_reported_and_skipped(tiny_f32, tmp_path):
    folder = tmp_path / "bad"
    synthesize("hello world", folder / "good.wav")
    sf.write(str(folder / "short.wav"), np.zeros(80, np.float32), 16000)  # 5 ms: less than one frame
    (folder / "garbage.wav").write_text("not audio")
    write_set(
        folder,
        [
            ("good.wav", "hello world", "en"),
            ("missing.wav", "hello", "en"),
            ("good.wav", "", "en"),
            ("garbage.wav", "hello", "en"),
            ("short.wav", "hello", "en"),
            ("good.wav", "?!…", "en"),
            ("good.wav", "hello", "xx"),
        ],
    )
    report = evaluate(tiny_f32, [str(folder)], tmp_path / "report", max_new_tokens=4)
    data = report["sets"]["bad"]
    assert data["rows"] == 7 and data["utterances"] == 1 and data["scores"]["wer"]["utterances"] == 1
    reasons = {s["index"]: s["reason"] for s in data["skipped"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    for index, words in {
        1: "audio file not found",
        2: "empty reference",
        3: "cannot read audio",
        4: "ms long",
        5: "empty after normalization",
        6: "unknown language",
    }.items():
        assert words in reasons[index], reasons[index]
    summary = (tmp_path / "report" / SUMMARY).read_text()
    assert "## Skipped rows (6)" in summary and "bad row 1 (missing.wav): audio file not found" in summary
    rows = read_report(tmp_path / "report")[1]
    assert [r.skipped is None for r in rows] == [True] + [False] * 6  # kept, in order, never dropped


def test_jsonl_manifest_with_bad_lines(tiny_f32, tmp_path):
    synthesize("good morning", tmp_path / "a.wav")
    lines = [
        json.dumps({"audio": "a.wav", "text": "good morning", "language": "en"}),
        "{not json",
        json.dumps({"text": "no audio"}),
        json.dumps(["not", "an", "object"]),
        json.dumps("a.wav"),  # a JSON string is not an object either (not a reason of its own)
        json.dumps({"audio": "folder.wav", "text": "a folder"}),
        json.dumps({"audio": "pipe.wav", "text": "a pipe"}),
    ]
    (tmp_path / "folder.wav").mkdir()
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    report = evaluate(tiny_f32, [str(tmp_path / "manifest.jsonl")], tmp_path / "report", max_new_tokens=4)
    data = report["sets"]["manifest"]
    assert data["utterances"] == 1 and [s["index"] for s in data["skipped"]] == [1, 2, 3, 4, 5, 6]
    reasons = [s["reason"] for s in data["skipped"]]
    assert "not valid JSON" in reasons[0] and reasons[1:4] == ["no audio path", "not an object", "not an object"]
    assert reasons[4].endswith("folder.wav (it is a directory)") and "it is a pipe or device" in reasons[5]


def test_wrong_column_fails_at_once(tmp_path):
    folder = tmp_path / "cols"
    folder.mkdir()
    (folder / "metadata.csv").write_text("path,sentence\na.wav,hello\n")
    with pytest.raises(UserError, match=r"no column 'file_name'; the columns are: path, sentence"):
        evaluate(tmp_path / "no-model-needed", [str(folder)], tmp_path / "report")  # fails before the model loads
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("column", ["text", "transcription", "sentence"])
def test_local_sets_take_the_transcript_column_people_use(tmp_path, column):
    """metadata.csv as the Hugging Face audiofolder docs lay it out (and as Common Voice names it)."""
    synthesize("hello", tmp_path / "a.wav")
    # utf-8-sig: with the byte-order mark that spreadsheet programs write
    (tmp_path / "metadata.csv").write_text(f"file_name,{column},speaker\na.wav,Hello there,s1\n", encoding="utf-8-sig")
    (item,) = open_set(EvalSet.load(tmp_path))
    assert (item.reference, item.audio, item.problem) == ("Hello there", tmp_path / "a.wav", None)


@pytest.mark.parametrize(
    "header, problem",
    [
        ("file_name,speaker", "no transcript column (text, transcription, sentence)"),
        ("file_name,text,transcription", "text and transcription: which is the transcript?"),
    ],
)
def test_local_transcript_column_must_be_one(tmp_path, header, problem):
    (tmp_path / "metadata.csv").write_text(header + "\n")
    with pytest.raises(UserError) as info:
        open_set(EvalSet.load(tmp_path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'metadata.csv'}: {problem} the columns are: ")
    assert message.endswith(
        f"the columns are: {header.replace(',', ', ')}; keep one, or name it as text_column in "
        "a set YAML whose path is this folder"
    )


def test_a_set_yaml_names_the_columns_of_a_local_folder(tmp_path):
    folder = tmp_path / "clips"
    synthesize("hello", folder / "a.wav")
    (folder / "metadata.csv").write_text("wav,text,transcription\na.wav,raw Text!,raw text\n")
    (tmp_path / "clips.yaml").write_text("path: clips\naudio_column: wav\ntext_column: transcription\nlanguage: en\n")
    (item,) = open_set(EvalSet.load(tmp_path / "clips.yaml"))
    assert (item.reference, item.audio, item.language) == ("raw text", folder / "a.wav", "en")
    (tmp_path / "clips.yaml").write_text("path: clips\naudio_column: wav\ntext_column: sentence\n")
    with pytest.raises(UserError, match=r"no column 'sentence'; the columns are: wav, text, transcription"):
        open_set(EvalSet.load(tmp_path / "clips.yaml"))


def test_hub_style_dataset(tiny_f32, tmp_path):
    repo = hub_style_dataset(tmp_path / "repo")
    definition = {
        "dataset": str(repo),
        "split": "test",
        "text_column": "sentence",
        "id_column": "key",
        "language": "en",
    }
    (tmp_path / "hubset.yaml").write_text(yaml.safe_dump(definition))
    report = evaluate(tiny_f32, [str(tmp_path / "hubset.yaml")], tmp_path / "report", limit=3, max_new_tokens=4)
    data = report["sets"]["hubset"]
    assert data["rows"] == 3 and data["utterances"] == 2  # --limit 3: the fourth row is never read
    assert data["skipped"][0]["id"] == "u2" and "cannot read audio" in data["skipped"][0]["reason"]
    assert [r.id for r in read_report(tmp_path / "report")[1]] == ["u1", "u2", "u3"]

    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump({**definition, "text_column": "text"}))
    with pytest.raises(UserError, match=r"no column 'text'; the columns are: audio, sentence, key"):
        evaluate(tiny_f32, [str(tmp_path / "wrong.yaml")], tmp_path / "wrong")


def test_hub_sets_must_be_pinned():
    with pytest.raises(UserError, match="not pinned"):
        open_set(EvalSet(name="x", dataset="some-org/some-set"))
    with pytest.raises(UserError, match="no evaluation set 'no-such-set'"):
        EvalSet.load("no-such-set")


def test_a_report_answers_only_the_request_it_was_made_for(reports, speech_set, tmp_path):
    """What the evaluate stage of `run` checks before reusing a report."""
    sets = [str(speech_set)]
    assert answers(reports["bf16"], sets, max_new_tokens=MAX_NEW_TOKENS)
    assert answers(reports["f32"], sets, max_new_tokens=MAX_NEW_TOKENS, baseline=reports["bf16"])
    assert not answers(reports["f32"], sets, max_new_tokens=MAX_NEW_TOKENS)  # made against a baseline
    assert not answers(reports["bf16"], sets, max_new_tokens=MAX_NEW_TOKENS + 1)
    assert not answers(reports["bf16"], sets, limit=3, max_new_tokens=MAX_NEW_TOKENS)
    assert not answers(reports["f32-shard-0"], sets, max_new_tokens=MAX_NEW_TOKENS)  # one shard is not the set
    assert not answers(tmp_path, sets, max_new_tokens=MAX_NEW_TOKENS)  # no report at all
    other = tmp_path / "speech"  # the same name, another definition (path)
    other.mkdir()
    (other / "metadata.csv").write_text("file_name,text\n")
    assert not answers(reports["bf16"], [str(other)], max_new_tokens=MAX_NEW_TOKENS)
    assert set_files(str(speech_set)) == [speech_set / "metadata.csv"]
    assert set_files("fleurs-en") == [EVAL_SETS_DIR / "fleurs-en.yaml"]


def test_unpinned_named_sets_are_refused_in_one_line():
    with pytest.raises(UserError) as info:
        check_sets(["fleurs-pl"])
    message = str(info.value)
    assert "\n" not in message and message.startswith("set fleurs-pl: dataset google/fleurs files parquet-data/pl_pl/")
    assert "is not pinned to a commit (revision: none)" in message and "fleurs-pl.yaml" in message


def test_named_sets_cover_the_recipes():
    named = {p.stem: EvalSet.load(p.stem) for p in EVAL_SETS_DIR.glob("*.yaml")}
    for evalset in named.values():
        assert evalset.dataset and evalset.language and evalset.split
    wanted = {s for p in RECIPES_DIR.glob("*.yaml") for s in yaml.safe_load(p.read_text()).get("evaluation", [])}
    assert wanted <= set(named), wanted - set(named)


def test_set_definition_is_strict(tmp_path):
    (tmp_path / "typo.yaml").write_text("dataset: a/b\ntext_colum: text\n")
    typo = tmp_path / "typo.yaml"
    with pytest.raises(UserError, match=re.escape(f"{typo}:2: text_colum: unknown key 'text_colum'")):
        EvalSet.load(typo)  # file, line and field, as for a recipe
    (tmp_path / "flag.yaml").write_text("dataset: a/b\nitn: maybe\n")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'flag.yaml'}:2: itn: expected bool, found 'maybe'")):
        EvalSet.load(tmp_path / "flag.yaml")
    (tmp_path / "both.yaml").write_text("dataset: a/b\npath: here\n")
    with pytest.raises(UserError, match="either `dataset`"):
        EvalSet.load(tmp_path / "both.yaml")
    (tmp_path / "lang.yaml").write_text("dataset: a/b\nlanguage: klingon\n")
    with pytest.raises(UserError, match="unknown language"):
        EvalSet.load(tmp_path / "lang.yaml")


@pytest.mark.parametrize(
    "shard, expected",
    [("0/4", (0, 4)), ("3/4", (3, 4)), (None, (0, 1)), ("4/4", None), ("1/0", None), ("a/b", None), ("1", None)],
)
def test_parse_shard(shard, expected):
    if expected is None:
        with pytest.raises(UserError):
            parse_shard(shard)
    else:
        assert parse_shard(shard) == expected


def test_merge_and_evaluate_refuse_bad_inputs(reports, tiny_f32, speech_set, tmp_path):
    with pytest.raises(UserError, match=r"expected shards 0..2 of 3 once each, found \[0, 1\]"):
        merge([reports["f32-shard-0"], reports["f32-shard-1"]], tmp_path / "merged")
    with pytest.raises(UserError, match="expected shards"):
        merge([reports["f32-shard-0"], reports["f32-shard-0"], reports["f32-shard-1"]], tmp_path / "merged")
    with pytest.raises(UserError, match="not an evaluation report"):
        merge([tmp_path], tmp_path / "merged")
    with pytest.raises(UserError, match="already exists"):
        evaluate(tiny_f32, [str(speech_set)], reports["f32"])
    with pytest.raises(
        UserError, match="decoded with at most 16 new tokens per segment, this evaluation with at most 8"
    ):
        evaluate(tiny_f32, [str(speech_set)], tmp_path / "r", baseline=reports["bf16"], max_new_tokens=8)
    with pytest.raises(UserError, match="evaluated every row of each set, this evaluation the first 2 rows"):
        evaluate(tiny_f32, [str(speech_set)], tmp_path / "r", baseline=reports["bf16"], max_new_tokens=16, limit=2)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "r").exists()
    for file in (EVAL_JSON, HYPOTHESES):
        assert (reports["f32-merged"] / file).is_file()


def test_long_rows_are_segmented_and_batching_changes_nothing(tmp_path, tiny_f32, tiny_model, speech_set):
    """Evaluation decodes as `transcribe` does: a 45 s row is cut into segments (its tokens are those of
    transcribe(), not of one whole-clip pass), and the batch size does not change any hypothesis."""
    from funasr_nano_mlx.transcribe import transcribe
    from tests.speech import recording

    long_samples, _ = recording(45.0, tmp_path / "voices")
    folder = tmp_path / "long"
    folder.mkdir()
    sf.write(folder / "long.wav", long_samples, 16000)
    rows = [("long.wav", "a long recording of several sentences", "en")]
    with open(speech_set / "metadata.csv", encoding="utf-8") as f:
        for name, text, language in list(csv.reader(f))[1:6]:  # five short rows, English and Mandarin
            (folder / name).write_bytes((speech_set / name).read_bytes())
            rows.append((name, text, language))
    write_set(folder, rows)
    one = evaluate(tiny_f32, [str(folder)], tmp_path / "one", max_new_tokens=6, batch_size=1)
    four = evaluate(tiny_f32, [str(folder)], tmp_path / "four", max_new_tokens=6, batch_size=4)
    assert one["sets"]["long"]["utterances"] == 6
    by_one, by_four = read_report(tmp_path / "one")[1], read_report(tmp_path / "four")[1]
    assert [(r.hypothesis, r.token_ids) for r in by_one] == [(r.hypothesis, r.token_ids) for r in by_four]
    model, tokenizer = tiny_model
    segmented = transcribe(model, tokenizer, folder / "long.wav", language="en", max_new_tokens=6)
    assert len(segmented.segments) > 5 and by_one[0].token_ids == segmented.token_ids
    assert four["settings"]["max_new_tokens"] == 6


def test_a_set_yaml_watches_the_local_set_it_points_at(tmp_path):
    """A report is stale when the transcripts change, also for a set YAML whose `path` is a folder."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "metadata.csv").write_text("file_name,text\n")
    (tmp_path / "clips.yaml").write_text("path: clips\nlanguage: en\n")
    assert set_files(str(tmp_path / "clips.yaml")) == [tmp_path / "clips.yaml", tmp_path / "clips" / "metadata.csv"]


def test_a_set_with_no_scored_row_is_refused_not_reported(tiny_f32, tmp_path):
    """A report of nothing would pass for a measurement: refused in one line naming the set and why its
    first row was skipped. A shard may hold only skipped rows; the merge of the shards may not."""
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    (tmp_path / "blank.jsonl").write_text('{"audio": "a.wav", "text": " "}\n' * 2)
    done = invoke_cli("evaluate", tiny_f32, "--set", tmp_path / "blank.jsonl", "--report", tmp_path / "report")
    assert_user_error(done, "set blank: no row was scored (the first was skipped: empty reference)")
    assert not (tmp_path / "report").exists()

    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        evaluate(tiny_f32, [str(tmp_path / "blank.jsonl")], shard, shard=(i, 2), max_new_tokens=2)
    with pytest.raises(UserError, match=r"merge: set blank: no row was scored \(the first was skipped"):
        merge(shards, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_an_existing_report_directory_is_refused_as_every_destination_is(tmp_path):
    (tmp_path / "set.jsonl").write_text('{"audio": "a.wav", "text": "hello"}\n')
    (tmp_path / "report").mkdir()
    with pytest.raises(UserError, match=f"^destination already exists: {re.escape(str(tmp_path / 'report'))}$"):
        evaluate("no-model-needed", [str(tmp_path / "set.jsonl")], tmp_path / "report")
