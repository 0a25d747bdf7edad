"""CTC timestamps against the official model ([F] models/fun_asr_nano/model.py:960-1075): the CTC head,
ctc_text and forced alignment.

How the official alignment is run. Upstream's timestamps come from `torchaudio.functional.forced_align`
(funasr fun_asr_nano/tools/utils.py:46-80), and torchaudio does not load beside torch 2.13 here. A
second reference environment (torch 2.9.1 + torchaudio 2.9) would cost about 7 GB and minutes of CI
time for one function, so instead the official model runs unchanged with `forced_align` below standing
in for torchaudio's: an exact CTC Viterbi written independently of ours (tests/reference.py
`torchaudio_forced_align`) (plain loops over frames and
states, no pruning window; ours is vectorized per frame and prunes as torchaudio's C++ does), with
torchaudio's input checks, float32 arithmetic and tie-breaking (libtorchaudio/forced_align/cpu/
compute.cpp as released in torchaudio 2.9.1: the skip transition only if strictly better than both
others, then the previous state only if strictly better than both others, else stay; at the end the
last token over the final blank only if strictly better). Everything around it (which text is aligned,
<|nospeech|>, grouping, scores, the 60 ms frame scale) is funasr's own code.
`test_viterbi_equals_the_textbook_one` checks the two Viterbis on many random and tied inputs. Once, by
hand, ours was also checked against the real torchaudio 2.9.1 in a separate environment
(bench/torchaudio_check.py: 3000 cases, half of them with ties, all equal); that check found that
torchaudio's current sources break one tie differently from the 2.9.1 release, which this follows. And
end to end there (bench/torchaudio_e2e.py: official funasr with the real torchaudio against ours on
three clips): text, ctc_text, timestamps and ctc_timestamps identical.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

from funasr_nano_mlx import ctc
from funasr_nano_mlx.audio import features
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.modeldir import CTC_TOKENIZER_FILE
from funasr_nano_mlx.subtitles import to_srt, to_vtt
from funasr_nano_mlx.transcribe import transcribe, transcribe_many
from tests.helpers import CLIP_SECONDS, as_upstream, invoke_cli, shifted
from tests.reference import rel_err, torchaudio_forced_align

CTC_REL = 1e-5  # CTC log-probabilities, relative L2 error; float32 both sides
AS_UPSTREAM = {"segmenter": None, "stop_loops": False}
# Tokens the LLM may generate per clip: the tiny CTC vocabulary is single bytes, so the aligned text must
# stay shorter than the clip's 60 ms frames (a longer one cannot be aligned: upstream returns none).
MAX_TOKENS = {"0.3s": 4, "1s": 4, "7s": 12, "31s": 48}


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ctc_upstream(tmp_path_factory):
    from tests.reference import write_upstream_dir

    return write_upstream_dir(tmp_path_factory.mktemp("upstream-ctc") / "tiny-ctc", "tiny", seed=1, with_ctc=True)


@pytest.fixture(scope="session")
def ctc_reference(ctc_upstream):
    from tests.reference import Reference

    return Reference(ctc_upstream, forced_align=torchaudio_forced_align)


@pytest.fixture(scope="session")
def ctc_f32(tmp_path_factory, ctc_upstream):
    from funasr_nano_mlx.convert import convert

    return convert(ctc_upstream, tmp_path_factory.mktemp("mlx-ctc") / "tiny-ctc-f32", dtype="float32")


@pytest.fixture(scope="session")
def ctc_model(ctc_f32):
    from funasr_nano_mlx import load

    return load(ctc_f32)


# --------------------------------------------------------------------------------------------------
# alignment and tokenizer
# --------------------------------------------------------------------------------------------------


def _random_case(rng: np.random.Generator, tied: bool):
    frames, vocab, blank = int(rng.integers(1, 30)), 6, 5
    length = int(rng.integers(0, 12))
    targets = [int(t) for t in rng.integers(0, 3 if tied else vocab - 1, length)]  # few ids: many repeats
    lp = (
        rng.integers(-3, 1, (frames, vocab)).astype(np.float32)
        if tied
        else np.log(rng.dirichlet(np.ones(vocab), frames)).astype(np.float32)
    )
    return lp, targets, blank


@pytest.mark.parametrize("tied", [False, True], ids=["random", "integer-ties"])
def test_viterbi_equals_the_textbook_one(tied):
    rng = np.random.default_rng(7)
    aligned = 0
    for _ in range(400):
        lp, targets, blank = _random_case(rng, tied)
        ours = ctc.viterbi_path(lp[:, blank], lp[:, targets], targets)
        try:
            expected = torchaudio_forced_align(torch.from_numpy(lp)[None], torch.tensor([targets]), blank)[0][
                0
            ].tolist()
        except (ValueError, RuntimeError):
            assert ours is None
            continue
        labels = [blank if s % 2 == 0 else targets[s // 2] for s in ours]
        assert labels == expected
        aligned += 1
    assert aligned > 150  # most cases align; the rest check the refusals


def test_tokenizer_equals_the_official_one(ctc_reference, ctc_upstream):
    ours = ctc.CTCTokenizer.from_file(ctc_upstream / CTC_TOKENIZER_FILE)
    official = ctc_reference.model.ctc_tokenizer
    assert ours.vocab_size == official.encoding.n_vocab == 256 + 1679
    assert ours.timestamp_begin == official.timestamp_begin
    for text in [" Hello, world!", "今天天气很好。", "<|nospeech|><|zh|> a<|0.00|>", "", "  x\n y"]:
        assert ours.encode(text) == official.encode(text)
    ids = list(range(0, 1935, 7)) + [382, 1934, 433, 434]
    assert ours.decode(ids) == official.decode(ids)
    assert ours.decode([382]) == "<|nospeech|>"


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------


def test_conversion_keeps_a_complete_head(ctc_f32, ctc_upstream, tmp_path):
    from funasr_nano_mlx.convert import convert

    config = json.loads((ctc_f32 / "config.json").read_text())
    assert config["timestamps"] is True and config["ctc_vocab_size"] == 1935 and config["ctc_blank_id"] == 1934
    assert config["conversion"]["dropped_ctc_tensors"] == 0 and config["conversion"]["notes"] == []
    assert (ctc_f32 / CTC_TOKENIZER_FILE).read_bytes() == (ctc_upstream / CTC_TOKENIZER_FILE).read_bytes()
    weights = mx.load(str(ctc_f32 / "model.safetensors"))
    assert sum(k.startswith(("ctc_decoder.", "ctc.")) for k in weights) == 84 + 2
    bf16 = convert(ctc_upstream, tmp_path / "bf16", dtype="bfloat16")
    stored = mx.load(str(bf16 / "model.safetensors"))
    # Stored in float32 upstream, kept so in a bfloat16 conversion (lossless); the rest is bfloat16.
    assert stored["ctc.ctc_lo.weight"].dtype == mx.float32
    assert stored["audio_adaptor.linear1.weight"].dtype == mx.bfloat16


@pytest.mark.parametrize("damage", ["tensor", "tokenizer"])
def test_conversion_drops_an_incomplete_head(ctc_upstream, tmp_path, damage):
    from funasr_nano_mlx import load
    from funasr_nano_mlx.convert import convert

    src = tmp_path / "src"
    shutil.copytree(ctc_upstream, src)
    if damage == "tensor":  # as upstream's disable_incomplete_ctc: one tensor missing turns CTC off
        state = torch.load(src / "model.pt", weights_only=True)
        del state["state_dict"]["ctc_decoder.blocks.4.norm2.bias"]
        torch.save(state, src / "model.pt")
    else:
        (src / CTC_TOKENIZER_FILE).unlink()
    out = convert(src, tmp_path / "out", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["timestamps"] is False and "ctc_decoder_conf" not in config
    assert len(config["conversion"]["notes"]) == 1 and "CTC timestamp head left out" in config["conversion"]["notes"][0]
    assert config["conversion"]["dropped_ctc_tensors"] == (85 if damage == "tensor" else 86)
    model, _ = load(out)
    assert not model.has_ctc


# --------------------------------------------------------------------------------------------------
# parity with the official model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLIP_SECONDS))
def test_ctc_log_probs_and_ctc_text(clips, ctc_reference, ctc_model, name):
    model, _ = ctc_model
    enc = ctc_reference.encode(ctc_reference.features(clips[name]))
    ref = ctc_reference.ctc_log_probs(enc)
    ours = np.array(model.ctc.log_softmax(model.ctc_hidden(mx.array(enc)[None]))[0])
    assert ours.shape == ref.shape
    print(f"{name}: CTC log-probabilities rel err {rel_err(ours, ref):.2e}")
    assert rel_err(ours, ref) < CTC_REL
    greedy = ctc.greedy_ids(ref.argmax(-1), model.args.blank_id)
    assert ctc.greedy_ids(ours.argmax(-1), model.args.blank_id) == greedy
    assert ctc.ctc_text(model.ctc_tokenizer, greedy) == ctc_reference.ctc_decode(greedy).replace("<|nospeech|>", "")


@pytest.mark.parametrize("name", list(CLIP_SECONDS))
def test_timestamps_equal_the_official_ones(clips, ctc_reference, ctc_model, name, record_property):
    model, tokenizer = ctc_model
    ref = ctc_reference.result(clips[name], max_new_tokens=MAX_TOKENS[name])
    ours = transcribe(model, tokenizer, clips[name], max_new_tokens=MAX_TOKENS[name], **AS_UPSTREAM)
    segment = ours.segments[0]
    assert ours.text == ref["text"]
    assert segment.ctc_text == ref["ctc_text"]
    assert as_upstream(segment.timestamps) == ref["timestamps"]
    assert as_upstream(segment.ctc_timestamps) == ref["ctc_timestamps"]
    assert ours.timestamps == segment.timestamps
    record_property("aligned_tokens", len(ref["timestamps"]))
    if name in ("7s", "31s"):  # long enough for the text: the alignments are real and not degenerate
        for stamps in (ref["timestamps"], ref["ctc_timestamps"]):
            assert len(stamps) >= 8
            assert len({s["start_time"] for s in stamps}) == len(stamps)  # distinct, increasing times
            assert len({s["end_time"] - s["start_time"] for s in stamps}) > 1  # and durations vary


def test_the_clips_exercise_nospeech(clips, ctc_model):
    """The random head emits <|nospeech|> on some clip, so its removal from ctc_text is tested above
    (our log-probabilities: they equal the official ones, see test_ctc_log_probs_and_ctc_text)."""
    model, _ = ctc_model
    found = []
    for wave in clips.values():
        encoded, _ = model.encode_both(mx.array(features(wave))[None])
        lp = np.array(model.ctc.log_softmax(model.ctc_hidden(encoded))[0])
        found += ctc.greedy_ids(lp.argmax(-1), model.args.blank_id)
    assert 382 in found  # <|nospeech|> in the tiny vocabulary


@pytest.fixture(scope="session")
def long_recording(tmp_path_factory):
    from tests.speech import recording

    samples, _ = recording(75.0, tmp_path_factory.mktemp("long-ctc"), seed=3)
    return samples


def test_long_recording_segments_equal_the_official_ones(long_recording, ctc_reference, ctc_model):
    """A 75 s recording cut into segments: each segment's timestamps are the official model's on that
    segment, offset by the segment's start."""
    model, tokenizer = ctc_model
    result = transcribe(model, tokenizer, long_recording, max_new_tokens=10, stop_loops=False)
    assert len(result.segments) >= 3
    for segment in result.segments:
        piece = long_recording[round(segment.start * 16000) : round(segment.end * 16000)]
        ref = ctc_reference.result(piece, max_new_tokens=10)
        assert segment.text == ref["text"] and segment.ctc_text == ref["ctc_text"]
        assert as_upstream(segment.timestamps) == shifted(ref["timestamps"], segment.start)
        assert as_upstream(segment.ctc_timestamps) == shifted(ref["ctc_timestamps"], segment.start)
        assert all(segment.start <= s["start"] < s["end"] <= segment.end + 0.06 for s in segment.timestamps)
    assert result.timestamps == [s for segment in result.segments for s in segment.timestamps]
    assert result.ctc_text == " ".join(segment.ctc_text for segment in result.segments)


def test_batched_decoding_keeps_the_timestamps(clips, ctc_model, long_recording):
    model, tokenizer = ctc_model
    inputs = [clips["7s"], clips["1s"], long_recording, clips["31s"]]
    options = dict(max_new_tokens=10, stop_loops=False)
    alone = [transcribe(model, tokenizer, x, **options) for x in inputs]
    batched = list(transcribe_many(model, tokenizer, inputs, batch_size=4, **options))
    for a, b in zip(alone, batched):
        assert [s.text for s in a.segments] == [s.text for s in b.segments]
        assert a.timestamps == b.timestamps and a.words == b.words
        assert [s.ctc_timestamps for s in a.segments] == [s.ctc_timestamps for s in b.segments]


# --------------------------------------------------------------------------------------------------
# without a head, words, subtitles
# --------------------------------------------------------------------------------------------------


def test_a_model_without_the_head_transcribes_and_says_so(tiny_model, clips):
    model, tokenizer = tiny_model
    assert not model.has_ctc
    result = transcribe(model, tokenizer, clips["1s"], max_new_tokens=4)
    assert result.timestamps is None and result.words is None and result.ctc_text is None
    assert result.segments[0].ctc_text is None
    with pytest.raises(UserError, match="no CTC head"):
        transcribe(model, tokenizer, clips["1s"], max_new_tokens=4, timestamps=True)


def test_timestamps_can_be_turned_off(ctc_model, clips):
    model, tokenizer = ctc_model
    result = transcribe(model, tokenizer, clips["1s"], max_new_tokens=4, timestamps=False)
    assert result.timestamps is None


class _Vocab:
    """A stand-in tokenizer for `ctc.words`: token id -> its bytes."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def token_bytes(self, token: int) -> bytes:
        return self.pieces[token]


def test_words_group_spaced_and_unspaced_scripts():
    pieces = [
        b" The",
        b" qu",
        b"ick",
        b",",
        b" fox",
        "今".encode(),
        "天".encode()[:2],
        "天".encode()[2:],
        "好".encode(),
        "。".encode(),
        b"MLX",
        b" ok",
    ]
    vocab = _Vocab(pieces)
    stamps = [{"id": i, "start": i * 0.1, "end": i * 0.1 + 0.06} for i in range(len(pieces))]
    found = ctc.words(vocab, stamps)
    assert [w["word"] for w in found] == ["The", "quick,", "fox", "今", "天", "好。", "MLX", "ok"]
    assert found[1]["start"] == 0.1 and found[1]["end"] == pytest.approx(0.36)
    assert found[4]["start"] == pytest.approx(0.6) and found[4]["end"] == pytest.approx(0.76)  # both halves


def _parse_cues(text: str, decimal: str) -> list[tuple[float, float, str]]:
    pattern = (
        rf"(\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d)\n(.+)"
    )
    cues = []
    for match in re.finditer(pattern, text):
        g = [int(x) for x in match.groups()[:8]]
        cues.append(
            (g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, match.group(9))
        )
    return cues


def test_subtitles_follow_the_timestamps(ctc_model, long_recording):
    from funasr_nano_mlx.subtitles import timed_cues

    model, tokenizer = ctc_model
    result = transcribe(model, tokenizer, long_recording, max_new_tokens=8, stop_loops=False)
    timed = [segment for segment in result.segments if segment.words]
    assert len(timed) > len(result.segments) / 2  # the others' text is too long to align in their frames
    cues = timed_cues(result, max_chars=12)
    assert len(cues) > len(result.segments) + len(timed)  # cut within segments, not one cue per segment
    srt, vtt = to_srt(cues), to_vtt(cues)
    assert vtt.startswith("WEBVTT\n\n")
    blocks = srt.strip().split("\n\n")
    assert [b.split("\n")[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    for parsed in (_parse_cues(srt, ","), _parse_cues(vtt, ".")):
        assert len(parsed) == len(cues)
        assert all(start < end for start, end, _ in parsed)
        assert all(a[1] <= b[0] for a, b in zip(parsed, parsed[1:]))  # never overlap
        for start, end, _ in parsed:  # each inside one segment
            assert any(s.start - 1e-3 <= start and end <= s.end + 1e-3 for s in result.segments)


def test_alignment_cost_is_small(ctc_model, clips):
    """The CTC head and the alignment take a small share of a transcription (tiny model; the numbers
    for the full model are in BENCHMARKS.md)."""
    model, tokenizer = ctc_model
    result = transcribe(model, tokenizer, clips["31s"], max_new_tokens=48, **AS_UPSTREAM)
    assert result.timings["ctc"] + result.timings["align"] < 1.0


def test_features_unchanged_by_the_head(ctc_model, clips):
    """encode_both gives the same adaptor frames as encode (the head only reads the encoder output)."""
    model, _ = ctc_model
    feats = mx.array(features(clips["7s"]))[None]
    assert np.array_equal(np.array(model.encode(feats)), np.array(model.encode_both(feats)[1]))


# --------------------------------------------------------------------------------------------------
# quantization, mlx-audio
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ctc_bf16(tmp_path_factory, ctc_upstream):
    from funasr_nano_mlx.convert import convert

    return convert(ctc_upstream, tmp_path_factory.mktemp("mlx-ctc") / "tiny-ctc-bf16", dtype="bfloat16")


def test_recipes_give_the_ctc_head_the_encoder_setting_unless_they_name_it(tmp_path):
    from funasr_nano_mlx.recipe import Recipe, component_of

    eight = Recipe.load("8bit")  # no `ctc` key: as the encoder
    assert eight.ctc == eight.audio_encoder and eight.ctc is not None
    assert Recipe.load("4bit-llm").ctc is None  # the encoder is kept, so is the head
    assert component_of("ctc_decoder.blocks.0.self_attn.linear_q") == "ctc"
    assert component_of("ctc.ctc_lo") == "ctc"
    text = Path(eight.file).read_text().replace("  embeddings:", "  ctc: null\n  embeddings:")
    custom = tmp_path / "8bit-ctc-kept.yaml"
    custom.write_text(text)
    assert Recipe.load(custom).ctc is None


def test_a_quantized_head_aligns(ctc_bf16, tmp_path, clips):
    """8bit (no `ctc` key) quantizes the head like the encoder; the alignment's column logits, taken
    from dequantized rows, equal the quantized layer's full output; timestamps come out."""
    from funasr_nano_mlx import load
    from funasr_nano_mlx.quantize import quantize
    from funasr_nano_mlx.recipe import Recipe

    out = quantize(ctc_bf16, tmp_path / "8bit", Recipe.load("8bit"))
    summary = json.loads((out / "config.json").read_text())["quantization_summary"]["components"]["ctc"]
    assert summary["quantization"]["bits"] == 8 and summary["layers"] == 5 * 6 + 3  # blocks; linear1/2, ctc_lo
    assert summary["quantized_layers"] == 33 - 5  # the blocks' w_2 (input 64 // 4) cannot be grouped by 64
    model, tokenizer = load(out)
    assert hasattr(model.ctc.ctc_lo, "bits")
    hidden = model.ctc_hidden(model.encode_both(mx.array(features(clips["1s"]))[None])[0])[0]
    ids = [model.args.blank_id, 3, 70, 200]
    full = np.array(model.ctc.ctc_lo(hidden).astype(mx.float32))[:, ids]
    assert np.allclose(np.array(model.ctc.columns(hidden, ids)), full, rtol=1e-5, atol=1e-5)
    result = transcribe(model, tokenizer, clips["7s"], max_new_tokens=8, segmenter=None)
    assert result.timestamps


def test_mlx_audio_loads_a_model_with_the_head(ctc_bf16, clips):
    """mlx-audio 0.6.2 loads weights with strict=False: the CTC tensors are ignored and it transcribes
    (without timestamps: it has no CTC head)."""
    from mlx_audio.stt import load as mlx_audio_load

    theirs = mlx_audio_load(str(ctc_bf16))
    assert "ctc_decoder" not in theirs
    assert len(list(theirs.stream_generate(mx.array(clips["1s"]), max_tokens=2))) >= 1


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wav_7s(tmp_path_factory, clips):
    import soundfile as sf

    path = tmp_path_factory.mktemp("audio-ctc") / "seven.wav"
    sf.write(str(path), clips["7s"], 16000, subtype="FLOAT")
    return path


def test_cli_json_and_subtitles(ctc_f32, ctc_model, wav_7s):
    run = invoke_cli("transcribe", ctc_f32, wav_7s, "--format", "json", "--max-new-tokens", "8")
    assert run.returncode == 0, run.stderr
    row = json.loads(run.stdout)
    model, tokenizer = ctc_model
    expected = transcribe(model, tokenizer, wav_7s, max_new_tokens=8)
    assert row["timestamps"] == expected.timestamps and row["words"] == expected.words and row["timestamps"]
    assert {"token", "start", "end"} <= row["timestamps"][0].keys() and {"word", "start", "end"} <= row["words"][
        0
    ].keys()
    assert row["segments"][0]["ctc_text"] == expected.segments[0].ctc_text
    srt = invoke_cli("transcribe", ctc_f32, wav_7s, "--format", "srt", "--max-new-tokens", "8")
    assert srt.returncode == 0 and "no CTC head" not in srt.stderr, srt.stderr
    assert len(_parse_cues(srt.stdout, ",")) > 1  # one segment, several cues
    off = invoke_cli("transcribe", ctc_f32, wav_7s, "--format", "json", "--max-new-tokens", "8", "--no-timestamps")
    assert off.returncode == 0 and json.loads(off.stdout)["timestamps"] is None


def test_cli_model_without_the_head(tiny_f32, wav_7s):
    run = invoke_cli("transcribe", tiny_f32, wav_7s, "--timestamps", "--max-new-tokens", "4")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "no CTC head" in run.stderr
    srt = invoke_cli("transcribe", tiny_f32, wav_7s, "--format", "srt", "--max-new-tokens", "4")
    assert srt.returncode == 0
    notes = [line for line in srt.stderr.splitlines() if "no CTC head" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ")  # said once, not silent
    assert len(_parse_cues(srt.stdout, ",")) == 1  # one cue per segment, as before


def test_the_card_says_whether_the_variant_has_timestamps(ctc_bf16, tiny_bf16):
    from funasr_nano_mlx.card import render

    assert "**Timestamps.** This variant carries the CTC head" in render(ctc_bf16, repo_id="org/with-ctc")
    assert "has no CTC head" in render(tiny_bf16, repo_id="org/without-ctc")


def test_the_server_gives_words_from_the_timestamps(ctc_model, clips):
    """OpenAI's verbose_json with timestamp_granularities=word: the transcription's words."""
    from funasr_nano_mlx.serve import Options, verbose_json

    model, tokenizer = ctc_model
    result = transcribe(model, tokenizer, clips["7s"], max_new_tokens=8)
    assert result.words
    words = verbose_json(result, Options("verbose_json", None, (), False, True))["words"]
    assert [(w["word"], w["start"], w["end"]) for w in words] == [
        (w["word"], w["start"], w["end"]) for w in result.words
    ]
