"""Long recordings: the energy segmenter, per-segment decoding with timestamps, SRT/VTT output.

The recording is espeak-ng sentences joined by 0.8-2 s silences over a faint noise floor, so where the
speech truly is, is known to the sample (tests/speech.py: recording)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from funasr_nano_mlx.segment import EnergySegmenter
from funasr_nano_mlx.subtitles import timestamp, to_srt, to_vtt
from funasr_nano_mlx.transcribe import Segment, transcribe
from tests.speech import recording, utterance, SENTENCES

BOUNDARY_TOLERANCE_S = 0.1  # the bound: timestamps within 100 ms of the silence boundaries
SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3}"
VTT_TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


@pytest.fixture(scope="module")
def three_minutes(tmp_path_factory):
    return recording(180.0, tmp_path_factory.mktemp("recording"))


def assert_near_boundaries(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> None:
    assert len(found) == len(truth), f"{len(found)} segments for {len(truth)} sentences"
    errors = np.abs(np.array(found) - np.array(truth))
    assert errors.max() <= BOUNDARY_TOLERANCE_S, f"worst boundary off by {errors.max() * 1000:.0f} ms"


def test_energy_segments_fall_on_the_silences(three_minutes):
    samples, sentences = three_minutes
    spans = EnergySegmenter().segments(samples)
    assert_near_boundaries([(a / 1000, b / 1000) for a, b in spans], sentences)


def test_speech_longer_than_the_limit_is_cut_in_a_pause(tmp_path):
    """Sentences 150 ms apart (too short a pause to end a segment) make ~70 s of speech: it must be cut
    into pieces of at most 30 s, and every cut must land in one of the short pauses."""
    spoken = [utterance(text, voice, tmp_path) for voice, text in SENTENCES]
    pause = np.zeros(int(0.15 * 16000), np.float32)
    pieces, pauses, position = [], [], 0
    for speech in spoken * 2:
        pieces += [speech, pause]
        position += len(speech)
        pauses.append((position / 16000, (position + len(pause)) / 16000))
        position += len(pause)
    samples = np.concatenate(pieces) + 1e-4 * np.random.default_rng(0).standard_normal(position).astype(np.float32)
    assert len(samples) / 16000 > 60
    spans = EnergySegmenter().segments(samples, max_segment_ms=30_000)
    assert len(spans) >= 3 and all(b - a <= 30_000 for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # nothing lost between pieces
    for cut in (b / 1000 for a, b in spans[:-1]):
        assert any(start - 0.01 <= cut <= end + 0.01 for start, end in pauses), f"cut at {cut} s is not in a pause"


def test_rare_speech_in_loud_noise(tmp_path):
    """Five sentences (3% of 10 minutes) over noise at -50 dBFS: the speech level must come from the
    speech, not from the noise (a 95th percentile would have taken all 600 s for speech)."""
    rng = np.random.default_rng(0)
    samples = (0.003 * rng.standard_normal(600 * 16000)).astype(np.float32)
    truth = []
    for i, (voice, text) in enumerate(SENTENCES[:5]):
        spoken, start = utterance(text, voice, tmp_path), (60 + 110 * i) * 16000
        samples[start : start + len(spoken)] += spoken
        truth.append((start / 16000, (start + len(spoken)) / 16000))
    spans = EnergySegmenter().segments(samples)
    assert_near_boundaries([(a / 1000, b / 1000) for a, b in spans], truth)


def test_a_forced_cut_leaves_no_sliver():
    """A region 100 ms over the limit whose last 150 ms are quiet: the quietest point is in that tail,
    but the cut must leave the remainder at least a second long."""
    from funasr_nano_mlx.segment import MIN_PIECE_FRAMES, _split_long

    energy = np.full(3010, -20.0)
    energy[-15:] = -70.0
    pieces = _split_long((0, 3010), energy, 3000)
    assert len(pieces) == 2 and pieces[0][0] == 0 and pieces[-1][1] == 3010
    assert all(b - a >= MIN_PIECE_FRAMES for a, b in pieces)


def test_an_unknown_segmenter_is_refused(tiny_model, clips):
    from funasr_nano_mlx.errors import UserError

    model, tokenizer = tiny_model
    with pytest.raises(UserError, match="segmenter must be"):
        transcribe(model, tokenizer, clips["1s"], segmenter="energy")


def test_silence_has_no_segments():
    quiet = 1e-4 * np.random.default_rng(0).standard_normal(40 * 16000).astype(np.float32)
    assert EnergySegmenter().segments(quiet) == []
    assert EnergySegmenter().segments(np.zeros(16000, np.float32)) == []


def test_three_minutes_one_segment_per_sentence(three_minutes, tiny_model):
    """Through the real pipeline: segmented automatically (the recording is over 30 s), one segment per
    sentence with timestamps on the silences, every segment decoded, texts joined with one space."""
    model, tokenizer = tiny_model
    samples, sentences = three_minutes
    result = transcribe(model, tokenizer, samples, max_new_tokens=6)
    assert result.duration == pytest.approx(180.0)
    assert_near_boundaries([(s.start, s.end) for s in result.segments], sentences)
    assert all(len(s.token_ids) == 6 and s.hit_token_limit for s in result.segments)  # random weights never stop
    assert result.text == " ".join(s.text for s in result.segments)
    assert result.token_ids == [t for s in result.segments for t in s.token_ids]


def test_silence_transcribes_to_nothing(tiny_model):
    model, tokenizer = tiny_model
    quiet = 1e-4 * np.random.default_rng(1).standard_normal(35 * 16000).astype(np.float32)
    result = transcribe(model, tokenizer, quiet)
    assert result.segments == [] and result.text == "" and result.token_ids == []


def test_a_short_clip_is_decoded_whole_as_upstream(tiny_model, clips):
    model, tokenizer = tiny_model
    result = transcribe(model, tokenizer, clips["7s"], max_new_tokens=4)
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 7.0)]


def test_srt_and_vtt_are_well_formed():
    segments = [
        Segment(0.0, 1.25, "hello  world", [1], False, False),
        Segment(2.0, 3.5, " ", [], False, False),
        Segment(3661.5, 3662.0, "line one\n\nline two", [2], True, False),
    ]
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:01,250\nhello world\n\n2\n01:01:01,500 --> 01:01:02,000\nline one line two\n"
    )
    assert to_vtt(segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nhello world\n\n01:01:01.500 --> 01:01:02.000\nline one line two\n"
    )
    assert timestamp(59.9996, ",") == "00:01:00,000"
    markup = [Segment(0.0, 1.0, "AT&T <b> x --> y", [1], False, False)]
    assert to_vtt(markup).endswith("\nAT&amp;T &lt;b&gt; x --&gt; y\n")  # WebVTT cue text is markup
    assert to_srt(markup).endswith("\nAT&T <b> x --> y\n")


def check_srt(text: str, count: int) -> None:
    cues = text.strip().split("\n\n")
    assert len(cues) == count
    previous_end = -1.0
    for number, cue in enumerate(cues, start=1):
        index, times, *body = cue.split("\n")
        assert index == str(number) and body and all(body)
        start, end = re.fullmatch(f"({SRT_TIME}) --> ({SRT_TIME})", times).groups()
        start_s, end_s = (_seconds(t) for t in (start, end))
        assert previous_end <= start_s < end_s
        previous_end = end_s


def _seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.replace(",", ".").split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(rest)


def test_cli_writes_subtitles(three_minutes, tiny_f32, tmp_path, clips):
    import soundfile as sf

    from tests.helpers import run_cli

    samples, sentences = three_minutes
    long_file, short_file = tmp_path / "in" / "meeting.wav", tmp_path / "in" / "sub" / "clip.flac"
    short_file.parent.mkdir(parents=True)
    sf.write(long_file, samples, 16000)
    sf.write(short_file, clips["1s"], 16000)

    srt = run_cli("transcribe", tiny_f32, long_file, "--format", "srt", "--max-new-tokens", "4")
    assert srt.returncode == 0, srt.stderr
    check_srt(srt.stdout, len(sentences))
    assert "hit its token budget" in srt.stderr  # flagged, never silently cut

    out = tmp_path / "out"
    vtt = run_cli(
        "transcribe", tiny_f32, tmp_path / "in", "--format", "vtt", "--output-dir", out, "--max-new-tokens", "4"
    )
    assert vtt.returncode == 0, vtt.stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip.vtt", "meeting.vtt"]  # a directory, recursively
    body = (out / "meeting.vtt").read_text()
    assert body.startswith("WEBVTT\n\n") and len(re.findall(f"{VTT_TIME} --> {VTT_TIME}\n", body)) == len(sentences)

    many = run_cli("transcribe", tiny_f32, long_file, short_file, "--format", "srt")
    assert many.returncode == 2 and "--output-dir" in many.stderr
    both = run_cli("transcribe", tiny_f32, long_file, "--no-segment", "--vad", tmp_path)
    assert both.returncode == 2 and "contradict" in both.stderr
