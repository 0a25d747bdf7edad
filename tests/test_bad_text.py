"""Hostile or broken text, and values without bounds: each is one line on stderr and exit status 2
(or, for one row of a set, reported and skipped), never a traceback or click's usage block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import assert_user_error, invoke_cli

# Qwen3-0.6B's text_config, the fields the LLM is built from: enough for every check made before the
# weights load, so the cases below need no model weights.
TEXT_CONFIG = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "rms_norm_eps": 1e-06,
    "vocab_size": 151936,
    "num_key_value_heads": 8,
    "max_position_embeddings": 40960,
    "head_dim": 128,
    "tie_word_embeddings": True,
}
# 8^4 = 4,096 leaves from five lines: harmless here, but printed whole in a message (as it was) it is
# 30 kB, and one level more per line is how a few lines exhaust memory ("billion laughs").
BOMB = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{below}'] * 8)}]\n" for below, name in zip("abc", "bcd")
)
BAD_UTF8 = b"caf\xe9"  # Latin-1, not UTF-8


@pytest.fixture
def work(tmp_path) -> Path:
    """A model folder as the checks before loading see it (config.json, tokenizer folder), a second
    of audio, and a valid JSONL set beside them."""
    model = tmp_path / "model"
    (model / "Qwen3-0.6B").mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "fun_asr_nano", "text_config": TEXT_CONFIG}))
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    (tmp_path / "set.jsonl").write_text('{"audio": "a.wav", "text": "hello"}\n')
    return tmp_path


def _config(**changes) -> bytes:
    text_config = {k: v for k, v in {**TEXT_CONFIG, **changes}.items() if v is not None}
    return json.dumps({"model_type": "fun_asr_nano", "text_config": text_config}).encode()


def _with(**fields) -> bytes:
    """config.json with TEXT_CONFIG and these top-level fields (the audio blocks, quantization...)."""
    return json.dumps({"model_type": "fun_asr_nano", "text_config": TEXT_CONFIG, **fields}).encode()


EVALUATE = ["evaluate", "{tmp}/model", "--report", "{tmp}/report", "--set"]
TRANSCRIBE = ["transcribe", "{tmp}/model", "{tmp}/a.wav"]
RUN = ["run", "{tmp}/recipe.yaml", "--work", "{tmp}/work"]
# case: (files written under tmp, the command, a fragment of the one error line)
BROKEN_TEXT = {
    "alias bomb in a set": ({"s.yaml": BOMB.encode()}, [*EVALUATE, "{tmp}/s.yaml"], "s.yaml:2: YAML aliases (*a)"),
    "alias bomb in a recipe": ({"recipe.yaml": BOMB.encode()}, RUN, "recipe.yaml:2: YAML aliases (*a)"),
    "recipe not UTF-8": ({"recipe.yaml": b"name: x\ndescription: " + BAD_UTF8}, RUN, "recipe.yaml:2: not valid UTF-8"),
    "set YAML not UTF-8": (
        {"s.yaml": b"dataset: " + BAD_UTF8},
        [*EVALUATE, "{tmp}/s.yaml"],
        "s.yaml:1: not valid UTF-8",
    ),
    "metadata.csv not UTF-8": (
        {"csv/metadata.csv": b"file_name,text\n../a.wav,ok\n../a.wav," + BAD_UTF8},
        [*EVALUATE, "{tmp}/csv"],
        "metadata.csv:3: not valid UTF-8 (byte 0xe9)",
    ),
    "JSONL not UTF-8": (
        {"bad.jsonl": b'{"audio": "a.wav", "text": "' + BAD_UTF8 + b'"}\n'},
        [*EVALUATE, "{tmp}/bad.jsonl"],
        "bad.jsonl:1: not valid UTF-8",
    ),
    "column twice": (
        {"csv/metadata.csv": b"file_name,text,text\n../a.wav,a,b\n"},
        [*EVALUATE, "{tmp}/csv"],
        "metadata.csv:1: column 'text' is given twice",
    ),
    "no transcript column": (
        {"csv/metadata.csv": b"file_name\n../a.wav\n"},
        [*EVALUATE, "{tmp}/csv"],
        "no transcript column",
    ),
    "a field past the CSV module's limit": (
        {"csv/metadata.csv": b"file_name,text\n../a.wav," + b"x" * 200_000 + b"\n"},
        [*EVALUATE, "{tmp}/csv"],
        "metadata.csv:2: not valid CSV: field larger than field limit",
    ),
    "nested thousands deep in a recipe": (
        {"recipe.yaml": b"source: " + b"[" * 5000 + b"]" * 5000 + b"\n"},
        RUN,
        "recipe.yaml:1: nested more than 32 levels deep in a recipe",
    ),
    "nested thousands deep in a set": (
        {"s.yaml": b"dataset:\n  x: " + b"{a: " * 5000 + b"1" + b"}" * 5000 + b"\n"},
        [*EVALUATE, "{tmp}/s.yaml"],
        "s.yaml:2: nested more than 32 levels deep in a set",
    ),
    "header only": ({"csv/metadata.csv": b"file_name,text\n"}, [*EVALUATE, "{tmp}/csv"], "the set has no rows"),
    "empty JSONL": ({"empty.jsonl": b"\n"}, [*EVALUATE, "{tmp}/empty.jsonl"], "empty.jsonl: the set has no rows"),
    "text_config lacks a field": (
        {"model/config.json": _config(hidden_size=None)},
        TRANSCRIBE,
        "config.json: text_config.hidden_size: is missing",
    ),
    "text_config field of a wrong type": (
        {"model/config.json": _config(num_hidden_layers="28")},
        [*EVALUATE, "{tmp}/set.jsonl"],
        "config.json: text_config.num_hidden_layers: expected int, found '28'",
    ),
    "text_config epsilon NaN": (
        {"model/config.json": _config(rms_norm_eps=float("nan"))},
        TRANSCRIBE,
        "config.json: text_config.rms_norm_eps: expected a positive finite number, found nan",
    ),
    "text_config epsilon 0": (
        {"model/config.json": _config(rms_norm_eps=0.0)},
        TRANSCRIBE,
        "config.json: text_config.rms_norm_eps: expected a positive finite number, found 0.0",
    ),
    "text_config RoPE base negative": (
        {"model/config.json": _config(rope_theta=-1e6)},
        [*EVALUATE, "{tmp}/set.jsonl"],
        "config.json: text_config.rope_theta: expected a positive finite number, found -1000000.0",
    ),
    "text_config RoPE base infinite": (
        {"model/config.json": _config(rope_theta=float("inf"))},
        TRANSCRIBE,
        "config.json: text_config.rope_theta: expected a positive finite number, found inf",
    ),
    **{
        f"config.json {field} {value!r}": (
            {"model/config.json": _with(**{block: {field.rpartition(".")[2]: value}})},
            TRANSCRIBE,
            f"config.json: {field}: expected {expected}, found {value!r}",
        )
        for block, field, value, expected in [
            ("audio_encoder_conf", "audio_encoder_conf.attention_heads", 0, "a positive int"),
            ("audio_encoder_conf", "audio_encoder_conf.attention_heads", 3, "a divisor of output_size 512"),
            ("audio_encoder_conf", "audio_encoder_conf.output_size", "big", "a positive int"),
            ("audio_encoder_conf", "audio_encoder_conf.kernel_size", 0, "a positive int"),
            ("audio_encoder_conf", "audio_encoder_conf.num_blocks", True, "a positive int"),
            ("audio_encoder_conf", "audio_encoder_conf.sanm_shfit", 6, "at most 5 with kernel_size 11"),
            ("audio_adaptor_conf", "audio_adaptor_conf.downsample_rate", 0, "a positive int"),
            ("audio_adaptor_conf", "audio_adaptor_conf.n_layer", -1, "an int of at least 0"),
            ("audio_adaptor_conf", "audio_adaptor_conf.use_low_frame_rate", "yes", "true or false"),
            ("audio_adaptor_conf", "audio_adaptor_conf.attention_heads", 7, "a divisor of llm_dim 1024"),
            ("audio_adaptor_conf", "audio_adaptor_conf.encoder_dim", 256, "512 (audio_encoder_conf.output_size)"),
            ("audio_adaptor_conf", "audio_adaptor_conf.llm_dim", 512, "1024 (text_config.hidden_size)"),
            ("ctc_decoder_conf", "ctc_decoder_conf.attention_heads", 0, "a positive int"),
        ]
    },
    "an audio block not a mapping": (
        {"model/config.json": _with(audio_adaptor_conf=[1])},
        TRANSCRIBE,
        "config.json: audio_adaptor_conf: expected a mapping, found [1]",
    ),
    "input_size other than the features'": (
        {"model/config.json": _with(input_size=400)},
        TRANSCRIBE,
        "config.json: input_size: expected 560 (80 mel bands x 7 frames, the features' width), found 400",
    ),
    "llm_dtype unknown": (
        {"model/config.json": _with(llm_dtype="fp8")},
        [*EVALUATE, "{tmp}/set.jsonl"],
        "config.json: llm_dtype: expected one of bf16, fp16, fp32, found 'fp8'",
    ),
    "eos_token_id not an id": (
        {"model/config.json": _config(eos_token_id="x")},
        TRANSCRIBE,
        "config.json: text_config.eos_token_id: expected a token id (an int in 0..151935) or a list of them, found 'x'",
    ),
    "eos_token_id outside the vocabulary": (
        {"model/config.json": _config(eos_token_id=[151645, 200000])},
        TRANSCRIBE,
        "config.json: text_config.eos_token_id: expected a token id",
    ),
    "quantization not a mapping": (
        {"model/config.json": _with(quantization="yes")},
        TRANSCRIBE,
        "config.json: quantization: expected a mapping, found 'yes'",
    ),
    "quantization group size 0": (  # MLX's quantize divides by it: SIGFPE, no exception
        {"model/config.json": _with(quantization={"group_size": 0, "bits": 4})},
        TRANSCRIBE,
        "config.json: quantization.group_size: expected a positive int, found 0",
    ),
    "quantization without bits": (
        {"model/config.json": _with(quantization={"group_size": 64})},
        TRANSCRIBE,
        "config.json: quantization.bits: is missing",
    ),
    "a layer's quantization broken": (
        {"model/config.json": _with(quantization={"group_size": 64, "bits": 4, "llm.lm_head": "x"})},
        TRANSCRIBE,
        "config.json: quantization.llm.lm_head: expected a layer's setting (a mapping, or false), found 'x'",
    ),
    "a layer's group size 0": (
        {"model/config.json": _with(quantization={"group_size": 64, "bits": 4, "llm.lm_head": {"group_size": 0}})},
        TRANSCRIBE,
        "config.json: quantization.llm.lm_head.group_size: expected a positive int, found 0",
    ),
    "another tool's quantization_config": (  # mlx-lm's load_model would take it (AWQ, GPTQ, bitnet)
        {"model/config.json": _with(quantization_config={"quant_method": "awq", "bits": 4})},
        TRANSCRIBE,
        "config.json: quantization_config: expected none (a quantized model of ours names its layers under",
    ),
    "serve with a broken audio block": (  # refused at load, before the server says it is up
        {"model/config.json": _with(audio_encoder_conf={"attention_heads": 0})},
        ["serve", "{tmp}/model", "--port", "0"],
        "config.json: audio_encoder_conf.attention_heads: expected a positive int, found 0",
    ),
}


def _invoke(args: list[str], tmp: Path):
    return invoke_cli(*(arg.replace("{tmp}", str(tmp)) for arg in args))


@pytest.mark.parametrize("case", BROKEN_TEXT)
def test_broken_text_is_one_line(work, case):
    files, args, fragment = BROKEN_TEXT[case]
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    done = _invoke(args, work)
    assert_user_error(done, fragment, alone=True)
    assert len(done.stderr) < 300, done.stderr  # nothing the file holds is printed whole
    assert not (work / "report").exists()


def test_every_audio_field_has_its_kind_checked():
    """A field of the encoder's or adaptor's arguments without a kind to check would reach MLX unchecked."""
    from dataclasses import fields

    from funasr_nano_mlx.model import ModelArgs, UpstreamRoPE
    from funasr_nano_mlx.modeldir import ADAPTOR_KINDS, ENCODER_KINDS, INPUT_SIZE, LLM_DTYPES, AdaptorArgs, EncoderArgs

    assert set(ENCODER_KINDS) - {"sanm_shfit"} == {f.name for f in fields(EncoderArgs)}
    assert set(ADAPTOR_KINDS) == {f.name for f in fields(AdaptorArgs)}
    assert INPUT_SIZE == ModelArgs().input_size and set(LLM_DTYPES) == set(UpstreamRoPE.ROUNDING)


def test_the_official_full_size_config_passes(tmp_path):
    """The released model's config.yaml and Qwen3-0.6B/config.json (tests/reference.py FULL; the tiny one is
    converted and loaded throughout the tests), through convert's reading and the checks loading makes."""
    from funasr_nano_mlx.convert import read_upstream_config
    from funasr_nano_mlx.modeldir import config_problem
    from tests.reference import FULL, _write_text_files

    _write_text_files(tmp_path, FULL)
    (tmp_path / "model.pt").write_bytes(b"")  # not read: only the configuration is
    config = read_upstream_config(tmp_path)
    assert config["ctc_decoder_conf"] and config_problem(config) is None


@pytest.mark.parametrize(
    ("qwen", "yaml_edit", "fragment"),
    [
        ({}, ("attention_heads: 4", "attention_heads: 0"), "config.yaml: audio_encoder_conf.attention_heads: expected"),
        ({"eos_token_id": "x"}, None, "Qwen3-0.6B/config.json: eos_token_id: expected a token id"),
        ({}, ("llm_conf:\n", "llm_conf: x\nllm_conf_was:\n"), "config.yaml: llm_conf: expected a mapping, found 'x'"),
    ],
    ids=["encoder heads 0", "eos not an id", "a section not a mapping"],
)
def test_convert_refuses_what_loading_would(tiny_upstream, tmp_path, qwen, yaml_edit, fragment):
    """The same checks, on the config.json `convert` builds, naming the upstream file. model.pt here is not a
    checkpoint at all: the configuration is refused before it is read (2 GB for the real model)."""
    src = tmp_path / "src"
    shutil.copytree(tiny_upstream / "Qwen3-0.6B", src / "Qwen3-0.6B")
    config_yaml = (tiny_upstream / "config.yaml").read_text()
    if yaml_edit:
        assert yaml_edit[0] in config_yaml
        config_yaml = config_yaml.replace(*yaml_edit, 1)
    (src / "config.yaml").write_text(config_yaml)
    qwen_config = src / "Qwen3-0.6B" / "config.json"
    qwen_config.write_text(json.dumps({**json.loads(qwen_config.read_text()), **qwen}))
    (src / "model.pt").write_bytes(b"not a checkpoint")
    assert_user_error(invoke_cli("convert", src, tmp_path / "out"), fragment, alone=True)
    assert not (tmp_path / "out").exists()


def test_weights_of_a_dtype_the_model_cannot_compute_in_are_refused(tiny_f32, tmp_path):
    """Weights re-saved as int32 loaded and failed at the first audio, in MLX's rms_norm."""
    import mlx.core as mx

    model = Path(shutil.copytree(tiny_f32, tmp_path / "model"))
    weights = mx.load(str(model / "model.safetensors"))
    mx.save_safetensors(str(model / "model.safetensors"), {k: v.astype(mx.int32) for k, v in weights.items()})
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    done = invoke_cli("transcribe", model, tmp_path / "a.wav")
    assert_user_error(done, "holds int32 weights: expected floating point", alone=True)


def test_quantized_layers_keep_their_packed_dtypes():
    """MLX stores a quantized layer's weight packed in uint32 beside its scales, and the scales of the
    mxfp4/mxfp8/nvfp4 modes as uint8: those pass the dtype check, which only a lone uint32 weight fails."""
    import mlx.core as mx

    from funasr_nano_mlx.model import check_weight_dtypes

    affine = {"a.weight": mx.zeros((4, 2), mx.uint32), "a.scales": mx.zeros((4, 1)), "a.biases": mx.zeros((4, 1))}
    fp4 = {"b.weight": mx.zeros((4, 2), mx.uint32), "b.scales": mx.zeros((4, 1), mx.uint8)}
    check_weight_dtypes({**affine, **fp4, "c.weight": mx.zeros(4, mx.bfloat16)})
    for broken, key in [
        ({"a.weight": mx.zeros((4, 2), mx.uint32)}, "a.weight"),
        ({**affine, "n.bias": mx.zeros(4, mx.int32)}, "n.bias"),
    ]:
        with pytest.raises(ValueError, match=f"{key} holds"):
            check_weight_dtypes(broken)


# case: (the bytes of a benchmark record, a fragment of the one error line)
BROKEN_BENCHMARKS = {
    "results missing": (b'{"recipe": "r", "machine": "m", "date": "d", "command": "c"}', "results: is missing"),
    "a field of a wrong type": (
        b'{"recipe": "r", "machine": 1, "date": "d", "command": "c", "results": []}',
        "machine: expected str, found 1",
    ),
    "a result not an object": (
        b'{"recipe": "r", "machine": "m", "date": "d", "command": "c", "results": [1]}',
        "results[0]: expected dict, found 1",
    ),
    "not JSON": (b'{"recipe":\n', "bench.json:2: not valid JSON"),
    "not UTF-8": (BAD_UTF8, "bench.json:1: not valid UTF-8 (byte 0xe9)"),
}


@pytest.mark.parametrize("case", BROKEN_BENCHMARKS)
def test_broken_benchmark_record_is_one_line_naming_the_file_and_key(tmp_path, case):
    from funasr_nano_mlx.card import read_benchmark
    from funasr_nano_mlx.errors import UserError

    data, fragment = BROKEN_BENCHMARKS[case]
    (tmp_path / "bench.json").write_bytes(data)
    with pytest.raises(UserError) as raised:
        read_benchmark(tmp_path / "bench.json", {"name": "r"})
    message = str(raised.value)
    assert fragment in message and str(tmp_path / "bench.json") in message and "\n" not in message, message


def _drop(data: dict, *path: str) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


def _edit_eval_json(report: Path, change) -> None:
    data = json.loads((report / "eval.json").read_text())
    change(data)
    (report / "eval.json").write_text(json.dumps(data))


# case: (how the copy of a good report is broken, the command given it, a fragment of the error line)
BROKEN_REPORTS = {
    "no eval.json": (lambda r: (r / "eval.json").unlink(), "merge", "No such file or directory"),
    "eval.json not JSON": (
        lambda r: (r / "eval.json").write_text('{"model":\n'),
        "plot",
        "eval.json:2: not valid JSON",
    ),
    "eval.json not UTF-8": (
        lambda r: (r / "eval.json").write_bytes(BAD_UTF8),
        "baseline",
        "eval.json:1: not valid UTF-8",
    ),
    "a key missing": (
        lambda r: _edit_eval_json(r, lambda d: _drop(d, "settings", "limit")),
        "baseline",
        "eval.json: settings.limit: is missing",
    ),
    "a wrong type": (
        lambda r: _edit_eval_json(r, lambda d: d["model"].update(size_bytes="big")),
        "card",
        "eval.json: model.size_bytes: expected int, found 'big'",
    ),
    "a set's scores broken": (
        lambda r: _edit_eval_json(r, lambda d: next(iter(d["sets"].values())).update(scores=[])),
        "plot",
        "scores: expected an object, found []",
    ),
    "a hypotheses line broken": (
        lambda r: (r / "hypotheses.jsonl").open("a").write('{"set": "x", "index": "1"}\n'),
        "merge",
        "hypotheses.jsonl:3: row.index: expected int",
    ),
}


@pytest.mark.parametrize("case", BROKEN_REPORTS)
def test_broken_report_is_one_line(evaluated, work, case):
    """merge-reports, plot-reports, evaluate --baseline and card --eval read a report directory back."""
    breaks, command, fragment = BROKEN_REPORTS[case]
    report = work / "broken"
    shutil.copytree(evaluated[1], report)
    breaks(report)
    args = {
        "merge": ["merge-reports", str(report), "--out", str(work / "merged")],
        "plot": ["plot-reports", str(report), "--out", str(work / "plot.png")],
        "baseline": [*EVALUATE, "{tmp}/set.jsonl", "--baseline", str(report)],
        "card": ["card", str(work / "model"), "--eval", str(report), "--recipe", "bf16"],
    }[command]
    assert_user_error(_invoke(args, work), fragment, alone=True)
    assert not {"merged", "plot.png", "report"} & {p.name for p in work.iterdir()}
    assert not (work / "model" / "README.md").exists()


def test_bad_rows_are_reported_and_skipped(tiny_f32, work):
    """A JSONL row whose language, text or audio is not text is this row's problem: the others are
    scored. The set is read through a set YAML with a byte-order mark."""
    rows = [
        {"audio": "a.wav", "text": "hello", "language": 5},
        {"audio": "a.wav", "text": ["hello"]},
        {"audio": 7, "text": "hello"},
        {"audio": "a.wav", "text": "hello world", "language": "en"},
    ]
    (work / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (work / "rows.yaml").write_text("\ufeffpath: rows.jsonl\n", encoding="utf-8")
    done = invoke_cli(
        "evaluate", tiny_f32, "--set", work / "rows.yaml", "--report", work / "report", "--max-new-tokens", 4
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    data = json.loads((work / "report" / "eval.json").read_text())["sets"]["rows"]
    assert [(s["index"], s["reason"]) for s in data["skipped"]] == [
        (0, "language 5 is not a string"),
        (1, "text ['hello'] is not a string"),
        (2, "audio 7 is not a string"),
    ]
    assert data["utterances"] == 1


# case: (command, a fragment of the one error line)
UNBOUNDED = {
    "segment nan": ([*TRANSCRIBE, "--max-segment-seconds", "nan"], "'nan' is not a finite number"),
    "segment inf": ([*TRANSCRIBE, "--max-segment-seconds", "inf"], "is not in the range 1.0<=x<=300.0"),
    "segment 0": ([*TRANSCRIBE, "--max-segment-seconds", "0"], "Invalid value for '--max-segment-seconds'"),
    "segment negative": ([*TRANSCRIBE, "--max-segment-seconds", "-5"], "Invalid value for '--max-segment-seconds'"),
    "batch huge": ([*TRANSCRIBE, "--batch-size", "1000000"], "is not in the range 1<=x<=256"),
    "batch 0": ([*EVALUATE, "{tmp}/set.jsonl", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    "max batch huge": (["serve", "{tmp}/model", "--max-batch", "100000"], "is not in the range 1<=x<=256"),
    "server wait nan": (["serve", "{tmp}/model", "--batch-wait-ms", "nan"], "'nan' is not a finite number"),
    "tokens past the LLM": (
        [*EVALUATE, "{tmp}/set.jsonl", "--max-new-tokens", "100000"],
        "max_new_tokens must be in 1..37420 (the LLM holds 40960 positions",
    ),
    "long hotword": ([*TRANSCRIBE, "--hotword", "x" * 100_000], "the hotwords come to 100000 characters"),
    "many hotwords": (
        [*TRANSCRIBE, *[arg for _ in range(300) for arg in ("--hotword", "word")]],
        "the hotwords come to 1798 characters: at most 1000",
    ),
    "limit 0": ([*EVALUATE, "{tmp}/set.jsonl", "--limit", "0"], "Invalid value for '--limit': 0 is not in the range"),
    "limit negative": (["run", "bf16", "--limit", "-3"], "Invalid value for '--limit'"),
    "limit past sys.maxsize": ([*EVALUATE, "{tmp}/set.jsonl", "--limit", str(2**63)], "Invalid value for '--limit'"),
    "shard malformed": ([*EVALUATE, "{tmp}/set.jsonl", "--shard", "1/x"], "--shard '1/x': expected i/n"),
    "shard out of range": ([*EVALUATE, "{tmp}/set.jsonl", "--shard", "4/4"], "i must be in 0..3"),
    "no shards": ([*EVALUATE, "{tmp}/set.jsonl", "--shard", "0/0"], "--shard 0/0: n must be at least 1"),
    "a --source that is not there": (  # neither a folder nor a repo id: not an unpinned repo
        ["run", "bf16", "--work", "{tmp}/work", "--source", "{tmp}/no-such-folder"],
        "no-such-folder not found (a local upstream directory or a hub repo id ORG/NAME)",
    ),
}
# Usage errors of every kind, in the group and in subcommands: click's message, on one line.
USAGE = {
    "no such command": (["transcibe"], "No such command 'transcibe'"),
    "missing argument": (["transcribe", "{tmp}/model"], "Missing argument 'AUDIO...'"),
    "unknown option": ([*TRANSCRIBE, "--beam-size", "5"], "No such option '--beam-size'"),
    "bad choice": ([*TRANSCRIBE, "--format", "docx"], "Invalid value for '--format'"),
    "not a number": ([*EVALUATE, "{tmp}/set.jsonl", "--max-new-tokens", "many"], "'many' is not a valid integer"),
    "missing option": (["evaluate", "{tmp}/model", "--set", "{tmp}/set.jsonl"], "Missing option '--report'"),
    "option without value": (["merge-reports", "{tmp}/r", "--out"], "Option '--out' requires an argument"),
}


@pytest.mark.parametrize("case", [*UNBOUNDED, *USAGE])
def test_values_without_bounds_and_usage_errors_are_one_line(work, case):
    args, fragment = {**UNBOUNDED, **USAGE}[case]
    assert_user_error(_invoke(args, work), fragment, alone=True)
    assert not (work / "report").exists()


@pytest.mark.parametrize("seconds", [0.01, 0.5, float("nan"), 300.5])
def test_max_segment_seconds_has_the_cli_bounds_in_python(tiny_model, seconds):
    """The Python API takes the CLI's bounds (1-300 s): below 20 ms the segmenter raised a ValueError."""
    from funasr_nano_mlx.errors import UserError
    from funasr_nano_mlx.transcribe import transcribe_many

    long_enough_to_cut = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1
    with pytest.raises(UserError, match=r"max_segment_seconds must be in 1\.\.300, got"):
        list(transcribe_many(*tiny_model, [long_enough_to_cut], max_segment_seconds=seconds, max_new_tokens=2))


def test_a_library_message_over_several_lines_is_one_line(tiny_f32, tmp_path):
    """transformers explains a tokenizer it cannot build in five lines (mlx-lm lists unexpected weights
    one per line): the error is still one line."""
    model = Path(shutil.copytree(tiny_f32, tmp_path / "model"))
    for file in (model / "Qwen3-0.6B").iterdir():
        file.unlink()
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    assert_user_error(invoke_cli("transcribe", model, tmp_path / "a.wav"), "cannot load the model", alone=True)


def test_help_is_unchanged():
    done = invoke_cli("transcribe", "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage: ") and not done.stderr
    bare = invoke_cli()  # the bare command shows the commands, as click does
    assert "Commands:" in bare.stdout + bare.stderr and "error:" not in bare.stderr


def test_long_hotwords_are_refused_in_python_and_in_the_server():
    from funasr_nano_mlx.errors import UserError
    from funasr_nano_mlx.serve import ApiError, Form, parse_options
    from funasr_nano_mlx.decoding import hotword_list

    with pytest.raises(UserError, match="the hotwords come to 1001 characters"):
        hotword_list("x" * 1001)  # what transcribe() and transcribe_many() make of their `hotwords`
    assert hotword_list(["x" * 1000]) == ["x" * 1000]
    with pytest.raises(ApiError) as caught:
        parse_options(Form({"model": ["tiny"], "prompt": [", ".join(["word"] * 300)]}))
    assert caught.value.status == 400 and caught.value.param == "prompt"
