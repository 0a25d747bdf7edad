"""FSMN-VAD (FunASR's `fsmn-vad`) on MLX: where the speech is in a recording, as upstream finds it.

Three parts, as in the official code ([F] = funasr 1.4.16 models/fsmn_vad_streaming/):

- the frontend: Kaldi fbank (audio.py), low frame rate stacking of 5 frames every frame (400 dims),
  then the am.mvn shift and scale (numpy, pure functions);
- the FSMN encoder: two affine layers, 4 blocks with a causal memory over the last 20 frames, two
  affine layers and a softmax over 248 classes, of which class 0 is silence (MLX, no I/O);
- the endpoint state machine that turns per-frame speech decisions into segments (plain Python: it is
  sequential logic, one step per 10 ms frame).

`segments` reproduces the offline path that `AutoModel(model=..., vad_model="fsmn-vad",
vad_kwargs={"max_single_segment_time": N})` takes in `inference_with_vad`. Two features of that path
decide the result and are easy to miss ([F] model.py FsmnVADStreaming.inference):

- the recording is fed in 60 s chunks (`chunk_size` 60000 ms), and
- unless `max_end_silence_time` is given at run time, the configured end-silence threshold and
  speech/noise margin are replaced at the start of each chunk by a schedule ("dynamic silence"): a
  pause must last about 2 s to end a segment, but only about 0.2 s throughout a chunk that began
  inside a segment (0.1 s after two such chunks), which cuts that chunk at nearly every word; the
  margin is 0.5 instead of the config's 0.6. Passing `max_end_silence_ms` selects the fixed threshold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn

from .audio import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE, fbank
from .errors import UserError
from .files import read_json_object
from .hub import CONFIG_FILE, model_dir
from .modeldir import (
    COUNT,
    FLAG,
    MAPPING,
    NON_NEGATIVE_NUMBER,
    NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Kind,
    dataclass_from_dict,
    fields_problem,
)
from .strict_yaml import short

MODEL_TYPE = "fsmn_vad"
WEIGHTS = "model.safetensors"
CMVN_KEY = "frontend.cmvn"  # (2, 400): am.mvn's AddShift row, then its Rescale row
# The frontend this port implements: upstream's WavFrontendOnline with the fsmn-vad settings.
FRONTEND = {
    "fs": SAMPLE_RATE,
    "window": "hamming",
    "n_mels": 80,
    "frame_length": 25,
    "frame_shift": 10,
    "lfr_m": 5,
    "lfr_n": 1,
    "snip_edges": True,
    "upsacle_samples": True,
}
LFR_M = FRONTEND["lfr_m"]
LFR_LEFT = (LFR_M - 1) // 2  # stacked frames before the centre one; as many after, repeated at the edges
DEFAULT_MAX_SEGMENT_MS = 30_000  # what Fun-ASR-Nano's examples pass as max_single_segment_time
BLOCK_FRAMES = 6000  # frames scored per encoder call (60 s): bounded memory for hour-long recordings

# Upstream's offline inference feeds the audio in chunks of this many ms ([F] model.py inference,
# chunk_size), and the dynamic-silence schedule below is consulted at the start of each chunk.
CHUNK_MS = 60_000
# (time in speech so far, in ms, counted in whole chunks; pause that ends a segment, in ms): upstream's
# DEFAULT_SILENCE_SCHEDULE. The first entry whose limit is not exceeded applies.
DYNAMIC_SILENCE_SCHEDULE = (
    (10_000, 2000),
    (20_000, 1000),
    (30_000, 800),
    (40_000, 600),
    (50_000, 400),
    (60_000, 200),
    (float("inf"), 100),
)
DYNAMIC_SPEECH_NOISE_THRES = 0.5  # the margin upstream sets along with the schedule
NOISE_LEVEL_UNSET = -100.0  # upstream's initial noise level; any value below -99.9 means "not measured yet"
DECIBEL_EPSILON = 1e-6  # added to the frame energy before log10, as upstream


@dataclass
class FsmnArgs:
    """`encoder_conf` of config.yaml (FSMN)."""

    input_dim: int = 400
    input_affine_dim: int = 140
    fsmn_layers: int = 4
    linear_dim: int = 250
    proj_dim: int = 128
    lorder: int = 20
    rorder: int = 0
    lstride: int = 1
    rstride: int = 0
    output_affine_dim: int = 140
    output_dim: int = 248
    use_softmax: bool = True

    @classmethod
    def from_dict(cls, params: dict) -> FsmnArgs:
        return dataclass_from_dict(cls, params)

    @property
    def context(self) -> int:
        """Frames of the past that one output frame depends on (each block looks back lorder - 1)."""
        return self.fsmn_layers * (self.lorder - 1) * self.lstride


@dataclass
class VadOptions:
    """`model_conf` of config.yaml: the endpoint detector's settings, upstream's names and defaults
    (VADXOptions). Times are in ms. Keys that change nothing in upstream's offline path are ignored."""

    sample_rate: int = 16000
    detect_mode: int = 1  # 1: any number of segments; 0: stop after the first one
    max_end_silence_time: int = 800  # a pause this long ends a segment (when dynamic silence is off)
    max_start_silence_time: int = 3000  # detect_mode 0 only: give up after this much leading silence
    window_size_ms: int = 200  # frame decisions are smoothed over a window this long...
    sil_to_speech_time_thres: int = 150  # ...speech starts when this much of it is speech...
    speech_to_sil_time_thres: int = 150  # ...and stops when no more than this much is
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1  # pad segments: lookback_time_start_point before, lookahead_time_end_point after
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: int = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6  # a frame is speech if P(speech) >= P(silence) + this
    fe_prior_thres: float = 1e-4
    sil_pdf_ids: list[int] = field(default_factory=lambda: [0])  # classes summed into P(silence)
    frame_in_ms: int = 10
    frame_length_ms: int = 25

    @classmethod
    def from_dict(cls, params: dict) -> VadOptions:
        return dataclass_from_dict(cls, params)


# What the fields of the three sections must hold (modeldir.Kind), beside what unsupported_settings refuses. A
# wrong kind fails late and far from the file: window_size_ms 0 is a window of no frames (an IndexError at the
# first frame; upstream's WindowDetector, [F] model.py:245-296, has the same flaw), and NaN compares false,
# so a NaN threshold silently changes every decision.
FSMN_FIELDS = {  # upstream's FSMN arguments ([F] encoder.py:288-305): widths, counts, the memory's reach
    "input_dim": POSITIVE_INT,
    "input_affine_dim": POSITIVE_INT,
    "fsmn_layers": POSITIVE_INT,
    "linear_dim": POSITIVE_INT,
    "proj_dim": POSITIVE_INT,
    "lorder": POSITIVE_INT,
    "rorder": COUNT,
    "lstride": POSITIVE_INT,
    "rstride": COUNT,
    "output_affine_dim": POSITIVE_INT,
    "output_dim": POSITIVE_INT,
    "use_softmax": FLAG,
}
DETECT_MODE = Kind("0 or 1", lambda v: type(v) is int and v in (0, 1))  # [F] model.py:66-68
ZERO_OR_ONE = Kind("0, 1, true or false", lambda v: type(v) in (int, bool) and v in (0, 1))
INT_LIST = Kind("a list of ints", lambda v: type(v) is list and all(type(i) is int for i in v))
VAD_OPTION_FIELDS = {  # every field of VadOptions, upstream's VADXOptions ([F] model.py:71-173)
    "sample_rate": POSITIVE_NUMBER,
    "detect_mode": DETECT_MODE,
    # This and max_single_segment_time are upstream's defaults for what the caller passes here (segments'
    # max_end_silence_ms and max_segment_ms; vad_kwargs upstream): checked all the same, a bad value being
    # the sign of a bad file.
    "max_end_silence_time": NON_NEGATIVE_NUMBER,
    "max_start_silence_time": NON_NEGATIVE_NUMBER,
    "window_size_ms": POSITIVE_NUMBER,
    "sil_to_speech_time_thres": NON_NEGATIVE_NUMBER,
    "speech_to_sil_time_thres": NON_NEGATIVE_NUMBER,
    "speech_2_noise_ratio": POSITIVE_NUMBER,  # P(silence) is raised to it: at 0 or below, no frame is speech
    "do_extend": ZERO_OR_ONE,
    "lookback_time_start_point": NON_NEGATIVE_NUMBER,
    "lookahead_time_end_point": NON_NEGATIVE_NUMBER,
    "max_single_segment_time": POSITIVE_NUMBER,
    "snr_thres": NUMBER,
    "noise_frame_num_used_for_snr": POSITIVE_NUMBER,  # the running noise level is averaged over it
    "decibel_thres": NUMBER,
    "speech_noise_thres": NUMBER,
    "fe_prior_thres": NUMBER,
    "sil_pdf_ids": INT_LIST,
    "frame_in_ms": POSITIVE_NUMBER,
    "frame_length_ms": POSITIVE_NUMBER,
}
VAD_SECTIONS = ("frontend_conf", "encoder_conf", "model_conf")  # what convert_vad writes, each a mapping
INPUT_DIM = FRONTEND["n_mels"] * LFR_M  # the features' width


def vad_config_problem(config: dict) -> str | None:
    """What is wrong with a converted FSMN-VAD's config (None: nothing), as `field: problem`: the sections
    present and mappings, and the fields the network and the endpoint detector are built from of their kinds.
    `convert_vad` checks the config.json it builds with it too. Settings upstream honours and this port does
    not implement are unsupported_settings' business, asked after this."""
    if missing := next((section for section in VAD_SECTIONS if section not in config), None):
        return f"{missing}: is missing"
    if problem := fields_problem(config, dict.fromkeys(VAD_SECTIONS, MAPPING), ""):
        return problem
    encoder, options = config["encoder_conf"], config["model_conf"]
    problem = fields_problem(encoder, FSMN_FIELDS, "encoder_conf.") or fields_problem(
        options, VAD_OPTION_FIELDS, "model_conf."
    )
    if problem:
        return problem
    network = FsmnArgs.from_dict(encoder)
    if network.input_dim != INPUT_DIM:
        return (
            f"encoder_conf.input_dim: expected {INPUT_DIM} ({FRONTEND['n_mels']} mel bands x {LFR_M} frames, the "
            f"features' width), found {network.input_dim}"
        )
    read = VadOptions.from_dict(options)
    window, frame = read.window_size_ms, read.frame_in_ms
    if window < frame:  # the smoothing window holds int(window_size_ms / frame_in_ms) frames
        return f"model_conf.window_size_ms: expected at least frame_in_ms ({short(frame)}), found {short(window)}"
    classes = network.output_dim
    if not read.sil_pdf_ids or not all(0 <= i < classes for i in read.sil_pdf_ids):  # upstream indexes the scores
        return (
            f"model_conf.sil_pdf_ids: expected classes of the {classes} the network scores, found {read.sil_pdf_ids!r}"
        )
    return None


def unsupported_settings(config: dict) -> list[str]:
    """Settings of an upstream config.yaml (or our config.json) that upstream honours and this port
    does not implement; empty when the model can be run here exactly."""
    frontend, encoder = config.get("frontend_conf") or {}, config.get("encoder_conf") or {}
    options = VadOptions.from_dict(config.get("model_conf") or {})
    problems = [
        f"frontend_conf.{key}: {frontend[key]!r}"
        for key in FRONTEND
        if key in frontend and frontend[key] != FRONTEND[key]
    ]
    if FsmnArgs.from_dict(encoder).rorder != 0:
        problems.append(f"encoder_conf.rorder: {encoder['rorder']} (look-ahead memory)")
    if not FsmnArgs.from_dict(encoder).use_softmax:
        problems.append("encoder_conf.use_softmax: False")
    frame_settings = (options.sample_rate, options.frame_in_ms, options.frame_length_ms)
    if frame_settings != (SAMPLE_RATE, FRONTEND["frame_shift"], FRONTEND["frame_length"]):
        problems.append(f"model_conf sample_rate/frame_in_ms/frame_length_ms: {frame_settings}")
    return problems


# -- the FSMN encoder (module names follow the upstream checkpoint keys) ------------------------------


class Affine(nn.Module):
    """Upstream wraps every nn.Linear in a module holding it as `.linear`; kept for the key names."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(input_dims, output_dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear(x)


class FsmnMemory(nn.Module):
    """x + a depthwise causal convolution of x over the last `lorder` frames ([F] encoder.py FSMNBlock)."""

    def __init__(self, dims: int, lorder: int, lstride: int):
        super().__init__()
        # PyTorch stores it as a Conv2d (C, 1, K, 1); MLX's depthwise Conv1d weight is (C, K, 1).
        self.conv_left = nn.Conv1d(dims, dims, lorder, dilation=lstride, groups=dims, bias=False)
        self.stride = lstride

    def __call__(self, x: mx.array) -> mx.array:
        # The convolution as a sum of shifted copies, tap k reading frame t - (K - 1 - k) * stride:
        # the same products, and 3x faster on CPU than MLX's grouped convolution for this shape.
        weight, length = self.conv_left.weight[:, :, 0], x.shape[1]
        padded = mx.pad(x, [(0, 0), ((weight.shape[1] - 1) * self.stride, 0), (0, 0)])
        for k in range(weight.shape[1]):
            x = x + padded[:, k * self.stride : k * self.stride + length] * weight[:, k]
        return x


class FsmnLayer(nn.Module):
    def __init__(self, args: FsmnArgs):
        super().__init__()
        self.linear = Affine(args.linear_dim, args.proj_dim, bias=False)
        self.fsmn_block = FsmnMemory(args.proj_dim, args.lorder, args.lstride)
        self.affine = Affine(args.proj_dim, args.linear_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.affine(self.fsmn_block(self.linear(x))))


class FsmnEncoder(nn.Module):
    """(B, T, input_dim) features -> (B, T, output_dim) class posteriors ([F] encoder.py FSMN)."""

    def __init__(self, args: FsmnArgs):
        super().__init__()
        self.in_linear1 = Affine(args.input_dim, args.input_affine_dim)
        self.in_linear2 = Affine(args.input_affine_dim, args.linear_dim)
        self.fsmn = [FsmnLayer(args) for _ in range(args.fsmn_layers)]
        self.out_linear1 = Affine(args.linear_dim, args.output_affine_dim)
        self.out_linear2 = Affine(args.output_affine_dim, args.output_dim)

    def __call__(self, x: mx.array) -> mx.array:
        x = nn.relu(self.in_linear2(self.in_linear1(x)))
        for layer in self.fsmn:
            x = layer(x)
        return mx.softmax(self.out_linear2(self.out_linear1(x)), axis=-1)


class FsmnVad(nn.Module):
    """The network of FsmnVADStreaming: just its encoder (keys `encoder.*`)."""

    def __init__(self, args: FsmnArgs):
        super().__init__()
        self.args = args
        self.encoder = FsmnEncoder(args)

    def __call__(self, features: mx.array) -> mx.array:
        return self.encoder(features)

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Upstream checkpoint keys -> ours; idempotent. Keys lose a DataParallel `module.` prefix, and
        the memory convolutions go from PyTorch Conv2d (C, 1, K, 1) to MLX Conv1d (C, K, 1)."""
        weights = {key.removeprefix("module."): value for key, value in weights.items()}
        return {
            key: value.squeeze(1) if key.endswith("conv_left.weight") and value.ndim == 4 else value
            for key, value in weights.items()
        }


# -- the frontend -----------------------------------------------------------------------------------


def num_frames(num_samples: int) -> int:
    """10 ms frames of 25 ms that fit in the recording (Kaldi snip_edges): one score and decision each."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def as_samples(samples: np.ndarray) -> np.ndarray:
    """16 kHz mono samples as float32 (what upstream's frontend reads)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise UserError(f"expected mono samples, got an array of shape {samples.shape}")
    return samples


def frame_range_features(samples: np.ndarray, cmvn: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Normalized LFR features of frames lo..hi-1 of the whole recording, shape (hi - lo, 400).

    Row t stacks fbank frames t-2..t+2, repeating the first and last frame of the recording at its
    edges (WavFrontendOnline's LFR with lfr_n 1), then applies (x + shift) * scale as upstream's
    apply_cmvn. Only the samples these frames cover are read, so long recordings go in blocks.
    """
    total = num_frames(len(samples))
    first, last = max(0, lo - LFR_LEFT), min(total, hi + LFR_LEFT)  # fbank frames needed
    feats = fbank(samples[first * FRAME_SHIFT : (last - 1) * FRAME_SHIFT + FRAME_LENGTH])
    rows = np.arange(lo, hi)[:, None] + np.arange(LFR_M)[None, :] - LFR_LEFT
    stacked = feats[np.clip(rows, 0, total - 1) - first].reshape(hi - lo, -1)
    return (stacked + cmvn[0]) * cmvn[1]


def frame_decibels(samples: np.ndarray, block_frames: int = BLOCK_FRAMES) -> np.ndarray:
    """Energy of every frame in dB of the [-1, 1] samples, in float32 as upstream's ComputeDecibel."""
    total, blocks = num_frames(len(samples)), []
    for lo in range(0, total, block_frames):
        index = FRAME_SHIFT * np.arange(lo, min(total, lo + block_frames))[:, None] + np.arange(FRAME_LENGTH)
        blocks.append(10 * np.log10(np.sum(np.square(samples[index]), axis=1) + DECIBEL_EPSILON))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


# -- the endpoint state machine ---------------------------------------------------------------------

RISE, FALL, SPEECH, SILENCE = "rise", "fall", "speech", "silence"


class SmoothingWindow:
    """Counts speech decisions over the last `size` frames; says speech once `rise` of them are
    speech and silence again once no more than `fall` are (upstream's WindowDetector)."""

    def __init__(self, size: int, rise: int, fall: int):
        self.size, self.rise, self.fall = size, rise, fall
        self.reset()

    def reset(self) -> None:
        self.recent = deque([False] * self.size, maxlen=self.size)
        self.count, self.speaking = 0, False

    def push(self, speech: bool) -> str:
        self.count += int(speech) - int(self.recent[0])
        self.recent.append(speech)
        if not self.speaking and self.count >= self.rise:
            self.speaking = True
            return RISE
        if self.speaking and self.count <= self.fall:
            self.speaking = False
            return FALL
        return SPEECH if self.speaking else SILENCE


class Endpointer:
    """Upstream's E2E VAD state machine (FsmnVADStreaming.DetectOneFrame and the On* callbacks),
    in frame indices. Feed it one smoothed decision per frame with `step`; it keeps `segments`, each
    [first frame, end frame) with the end exclusive.

    A segment starts `latency` frames before the window said speech (the window's own delay plus the
    look-back), ends a few frames (the look-ahead) into the pause that ended it, and is cut wherever
    it would grow past `max_segment_frames`; the next one then starts right after it.
    """

    def __init__(self, options: VadOptions, max_segment_ms: float, end_silence_ms: float):
        ms = options.frame_in_ms
        self.options = options
        self.window = SmoothingWindow(
            int(options.window_size_ms / ms),
            int(options.sil_to_speech_time_thres / ms),
            int(options.speech_to_sil_time_thres / ms),
        )
        extend = bool(options.do_extend)
        self.latency = self.window.size + (int(options.lookback_time_start_point / ms) if extend else 0)
        self.lookahead = int(options.lookahead_time_end_point / ms)
        self.max_segment_frames = max_segment_ms / ms  # compared as upstream: frames > ms / frame_ms
        self.end_silence_ms = end_silence_ms  # may change between steps (the dynamic schedule)
        self.segments: list[list[int]] = []
        self.consumed = 0  # first frame not yet given to a segment or to silence: no segment starts before it
        self.finished = False  # detect_mode 0 stops at its first decision
        self._start_over()

    def _start_over(self) -> None:
        self.in_speech, self.start, self.last_voiced, self.silence_run = False, -1, 0, 0
        self.window.reset()

    def _take(self, frame: int, opens: bool = False) -> None:
        """Give `frame` to the current segment (or open a new one with it)."""
        self.consumed = max(self.consumed, frame) + 1
        if opens:
            self.segments.append([frame, frame + 1])
        else:
            self.segments[-1][1] = frame + 1  # may also shorten it: an end found by looking back

    def _voiced(self, frame: int) -> None:
        self.last_voiced = frame
        self._take(frame)

    def _end(self, frame: int) -> None:
        for t in range(self.last_voiced + 1, frame):  # fill the gap up to the end frame
            self._voiced(t)
        self._take(frame)
        self.finished = self.options.detect_mode == 0
        self._start_over()

    def step(self, t: int, speech: bool, final: bool) -> None:
        if self.finished:
            return
        change = self.window.push(speech and self.options.fe_prior_thres < 1.0)  # upstream compares 1.0 to it
        self.silence_run = self.silence_run + 1 if change == SILENCE else 0
        ms = self.options.frame_in_ms
        if not self.in_speech:
            if change == RISE:
                start = max(self.consumed, t - self.latency)
                self.in_speech, self.start = True, start
                self._take(start, opens=True)
                for frame in range(start + 1, t + 1):
                    self._voiced(frame)
            elif change == SILENCE:
                if self.options.detect_mode == 0 and self.silence_run * ms > self.options.max_start_silence_time:
                    self.finished = True  # no speech in time: upstream reports an empty result
                elif t >= self.latency:  # silence is confirmed `latency` frames late
                    self.consumed = max(self.consumed, t - self.latency)
            return
        if change == RISE:  # speech again after a pause inside the segment: the pause belongs to it
            for frame in range(self.last_voiced + 1, t):
                self._voiced(frame)
        if change == SILENCE and self.silence_run * ms >= self.end_silence_ms:
            # The pause is long enough: end where it began, plus the look-ahead.
            back = int(self.end_silence_ms / ms)
            if self.options.do_extend:
                back = max(0, back - self.lookahead - 1)
            self._end(t - back)
        elif t - self.start + 1 > self.max_segment_frames or final:  # too long, or the recording ends
            self._end(t)
        elif change != SILENCE or (self.options.do_extend and self.silence_run <= self.lookahead):
            self._voiced(t)  # speech, or the first frames of a pause (kept as the look-ahead)


def chunk_starts(num_samples: int) -> list[int]:
    """First frame of each 60 s chunk upstream's offline inference processes.

    A chunk of samples yields the frames whose LFR context it completes: all but the last LFR_LEFT of
    the fbank frames read so far; the final chunk yields the rest (it may hold no samples at all).
    """
    chunk = CHUNK_MS * SAMPLE_RATE // 1000
    ends = (num_frames(k * chunk) - LFR_LEFT for k in range(1, num_samples // chunk + 1))
    return [0] + [min(max(end, 0), num_frames(num_samples)) for end in ends]


def dynamic_end_silence_ms(speech_ms: float, options: VadOptions) -> int:
    pause_ms = next(pause for limit, pause in DYNAMIC_SILENCE_SCHEDULE if speech_ms <= limit)
    return max(pause_ms - options.speech_to_sil_time_thres, 0)


def speech_decisions(silence: np.ndarray, decibels: np.ndarray, options: VadOptions, margin: float) -> np.ndarray:
    """Upstream's GetFrameState for every frame: speech when P(speech) >= P(silence)^ratio + margin,
    the frame is louder than decibel_thres and its SNR over the running noise level reaches snr_thres.

    The released thresholds (-100 dB) are below anything float audio in [-1, 1] produces (a frame's
    energy is at least -60 dB), so normally only the probabilities decide; the loop keeps upstream's
    running noise level for configs that raise them.
    """
    # Upstream writes exp(log(1 - s)) >= exp(ratio * log(s)) + margin; the same test without log/exp
    # (which fail on a posterior of exactly 0 or 1).
    likely = (1.0 - silence) >= silence**options.speech_2_noise_ratio + margin
    noise = NOISE_LEVEL_UNSET
    speech = np.zeros(len(silence), dtype=bool)
    window = options.noise_frame_num_used_for_snr
    for t, decibel in enumerate(decibels.tolist()):
        if decibel < options.decibel_thres:
            continue
        if likely[t]:
            speech[t] = decibel - noise >= options.snr_thres
        else:  # a noise frame: update the running noise level
            noise = decibel if noise < -99.9 else (decibel + noise * (window - 1)) / window
    return speech


def find_segments(
    silence: np.ndarray,
    decibels: np.ndarray,
    num_samples: int,
    options: VadOptions,
    max_segment_ms: float,
    max_end_silence_ms: float | None = None,
) -> list[tuple[int, int]]:
    """Segments in ms from per-frame silence posteriors and energies, as upstream's offline inference."""
    dynamic = max_end_silence_ms is None
    margin = DYNAMIC_SPEECH_NOISE_THRES if dynamic else options.speech_noise_thres
    speech = speech_decisions(silence, decibels, options, margin)
    fixed_end_ms = 0 if dynamic else max_end_silence_ms - options.speech_to_sil_time_thres
    endpointer = Endpointer(options, max_segment_ms, fixed_end_ms)
    starts = chunk_starts(num_samples)
    speech_ms, in_speech = 0, False  # upstream's dynamic-silence bookkeeping, updated per chunk
    for lo, hi in zip(starts, [*starts[1:], len(speech)]):
        if dynamic:
            if endpointer.in_speech or in_speech:  # counts whole chunks spent in one segment
                speech_ms, in_speech = speech_ms + CHUNK_MS, True
            endpointer.end_silence_ms = dynamic_end_silence_ms(speech_ms, options)
        closed = len(endpointer.segments) - endpointer.in_speech
        for t in range(lo, hi):
            endpointer.step(t, bool(speech[t]), final=t == len(speech) - 1)
        if len(endpointer.segments) - endpointer.in_speech > closed:  # a segment was reported: start again
            speech_ms, in_speech = 0, False
    ms = options.frame_in_ms
    return [(start * ms, end * ms) for start, end in endpointer.segments]


# -- the model --------------------------------------------------------------------------------------


@dataclass
class VadModel:
    """A converted FSMN-VAD: network, CMVN and the endpoint settings. Samples are 16 kHz mono floats
    in [-1, 1]; one frame is 10 ms."""

    network: FsmnVad
    cmvn: np.ndarray  # (2, input_dim) float32
    options: VadOptions

    def silence_posteriors(self, samples: np.ndarray, block_frames: int = BLOCK_FRAMES) -> np.ndarray:
        """P(silence) per frame (the sil_pdf_ids classes summed), float64 from the float32 posteriors."""
        samples = as_samples(samples)
        total, context = num_frames(len(samples)), self.network.args.context
        out = np.zeros(total, dtype=np.float64)
        for lo in range(0, total, block_frames):
            hi = min(total, lo + block_frames)
            # The memory looks back `context` frames, so a block computed from that much earlier gives
            # exactly the frames of one pass over the whole recording.
            first = max(0, lo - context)
            x = mx.array(frame_range_features(samples, self.cmvn, first, hi))[None]
            posteriors = np.array(self.network(x)[0, lo - first :])
            for index in self.options.sil_pdf_ids:  # summed in float64, as upstream sums Python floats
                out[lo:hi] += posteriors[:, index].astype(np.float64)
        return out

    def frame_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """P(speech) = 1 - P(silence) per 10 ms frame, as upstream's GetFrameState computes it; frame t
        covers samples [160 t, 160 t + 400). Empty for audio shorter than one frame (25 ms)."""
        return 1.0 - self.silence_posteriors(samples)

    def segments(
        self, samples: np.ndarray, max_segment_ms: int = DEFAULT_MAX_SEGMENT_MS, max_end_silence_ms: int | None = None
    ) -> list[tuple[int, int]]:
        """[(start_ms, end_ms), ...] of speech, in order, as upstream's offline VAD returns them.

        `max_segment_ms` is upstream's max_single_segment_time: a segment reaching it is cut there and
        the next one starts where it ends. `max_end_silence_ms` None keeps upstream's default dynamic
        schedule (see the module docstring); a number is the fixed pause that ends a segment, as
        upstream's max_end_silence_time (then the config's speech_noise_thres applies).
        """
        if max_segment_ms <= 0:
            raise ValueError(f"max_segment_ms must be positive, got {max_segment_ms}")
        samples = as_samples(samples)
        if num_frames(len(samples)) == 0:
            return []
        decibels = frame_decibels(samples)
        return find_segments(
            self.silence_posteriors(samples), decibels, len(samples), self.options, max_segment_ms, max_end_silence_ms
        )


def is_vad_config(config: dict) -> bool:
    return config.get("model_type") == MODEL_TYPE


def read_vad_config(path: Path) -> dict:
    """config.json of a converted FSMN-VAD directory; a clear error for anything else."""
    config = read_json_object(path / CONFIG_FILE)
    if not is_vad_config(config) or not (path / WEIGHTS).is_file():
        raise UserError(
            f"{path} is not a converted FSMN-VAD model (expected config.json with model_type "
            f"{MODEL_TYPE!r} and {WEIGHTS}); create one with `funasr-nano-mlx convert-vad`"
        )
    if problem := vad_config_problem(config):
        raise UserError(f"{path / CONFIG_FILE}: {problem}")
    if problems := unsupported_settings(config):
        raise UserError(f"{path}/config.json: unsupported settings: {'; '.join(problems)}")
    return config


def find_vad(path_or_repo: str | Path, revision: str | None = None) -> tuple[Path, dict]:
    """A directory written by `convert_vad` (funasr_nano_mlx.convert), or a hub repo id of one (downloaded
    into the Hugging Face cache at `revision`, default main), and its config, checked: what `load_vad` loads."""
    path = model_dir(path_or_repo, revision, [CONFIG_FILE, WEIGHTS], is_vad_config, "a converted FSMN-VAD model")
    return path, read_vad_config(path)


def load_vad(path_or_repo: str | Path, revision: str | None = None) -> VadModel:
    """Load the FSMN-VAD that `find_vad` finds."""
    path, config = find_vad(path_or_repo, revision)
    network = FsmnVad(FsmnArgs.from_dict(config.get("encoder_conf", {})))
    try:
        weights = mx.load(str(path / WEIGHTS))
        cmvn = np.array(weights.pop(CMVN_KEY), dtype=np.float32)
        network.load_weights(list(FsmnVad.sanitize(weights).items()), strict=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:  # RuntimeError: MLX reading a corrupt file
        raise UserError(f"cannot load the FSMN-VAD model in {path}: {err}") from None
    if cmvn.shape != (2, network.args.input_dim):
        raise UserError(f"{path}/{WEIGHTS}: {CMVN_KEY} has shape {cmvn.shape}, expected (2, {network.args.input_dim})")
    mx.eval(network.parameters())
    return VadModel(network, cmvn, VadOptions.from_dict(config.get("model_conf", {})))
