"""Load a converted model and transcribe audio with it, as the official `FunASRNano.inference` does.

The prompt strings below are the reference's, byte for byte ([F] models/fun_asr_nano/model.py:725-769
and data_load_speech :464-624). The audio frames replace the `<|startofspeech|>...<|endofspeech|>`
span entirely, so those marker tokens never reach the LLM.

Long recordings are cut into segments of at most 30 s (funasr_nano_mlx.segment, or an FSMN-VAD), and
segments of many files go through the encoder and the LLM in padded batches, as upstream's batched
path does ([F] fun_asr_nano/model.py:810-885: left padding, per-row positions from 0).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import load_model, load_tokenizer
from tqdm import tqdm

from . import align, ctc
from .audio import (
    FRAME_LENGTH,
    SAMPLE_RATE,
    Audio,
    check_duration,
    check_samples,
    features,
    features_mx,
    frontend_on_device,
    printable,
    read_audio,
    samples_for_frames,
)
from .decode_step import make_decoder, output_head, prefill_one
from .decoding import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    MAX_SEGMENT_SECONDS,
    MIN_SEGMENT_SECONDS,
    check_max_new_tokens,
    hotword_list,
    loop_end,
    token_budget,
)
from .errors import UserError
from .files import require_utf8_path
from .languages import resolve_language
from .model import FunASRNano, model_classes, use_fused_projections
from .modeldir import CTC_TOKENIZER_FILE, TOKENIZER_DIR, find_model, read_config
from .segment import DEFAULT_MAX_SEGMENT_MS, EnergySegmenter

BATCHES_PER_GROUP = 4  # inputs are read, and results returned, in groups of about this many batches of segments
SYSTEM_PROMPT = "You are a helpful assistant."
HOTWORD_PREAMBLE = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
)
END_OF_TEXT = "<|endoftext|>"  # also a stop token, as Qwen3 may end a turn with it


def instruction(language: str | None = None, hotwords: Sequence[str] = (), itn: bool = True) -> str:
    """The user instruction exactly as the reference's get_prompt builds it."""
    text = ""
    if hotwords:
        text = HOTWORD_PREAMBLE + f"热词列表：[{', '.join(hotwords)}]\n"
    name = resolve_language(language)
    text += "语音转写" if name is None else f"语音转写成{name}"
    if not itn:
        text += "，不进行文本规整"
    return text + "："


def prompt_around_audio(language=None, hotwords: Sequence[str] = (), itn: bool = True) -> tuple[str, str]:
    """ChatML text before and after the audio frames (system prompt on, no <think> block)."""
    before = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{instruction(language, hotwords, itn)}"
    return before, "<|im_end|>\n<|im_start|>assistant\n"


def postprocess(text: str) -> str:
    """The reference's clean-up: '/sil' markers and runs of whitespace become one space (no strip)."""
    return re.sub(r"\s+", " ", text.replace("/sil", " "))


@dataclass
class Segment:
    start: float  # seconds into the audio
    end: float
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    hit_token_limit: bool  # decoding stopped at the segment's token budget, not at a stop token
    repetition: bool  # decoding was stopped by the repetition guard; the loop is cut to one copy
    # With timestamps (a model with the CTC head): upstream's CTC greedy transcript, and the aligned
    # tokens of `text` and of `ctc_text` (see align.segment_timestamps), seconds from the recording's start.
    ctc_text: str | None = None
    timestamps: list[dict] | None = None
    ctc_timestamps: list[dict] | None = None
    words: list[dict] | None = None  # `timestamps` grouped into words (ctc.words)


@dataclass
class Transcription:
    audio: str  # the input's path (os.fsdecode: bytes that are not UTF-8 as lone surrogates)
    text: str  # the segments' texts joined by one space, as upstream joins VAD segments
    token_ids: list[int]  # all segments' generated ids, without stop tokens
    hit_token_limit: bool  # some segment stopped at its token budget
    repetition: bool = False  # some segment was stopped by the repetition guard
    duration: float = 0.0  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    # Seconds per stage; a batch's time is shared among its segments by audio length, so the
    # timings of all inputs add up to the time spent in these stages (reading audio and segmenting
    # are not counted). decode_ms_per_token: per decoding step of the batches it was in.
    timings: dict[str, float] = field(default_factory=dict)
    # With timestamps: every segment's aligned tokens in order, them grouped into words, and the segments'
    # CTC greedy transcripts joined by one space; else None.
    timestamps: list[dict] | None = None
    words: list[dict] | None = None
    ctc_text: str | None = None
    # What the user must know about how the input was read (audio.read_audio), e.g. that the file ends
    # before its header says; also printed on stderr by the CLI.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Failure:
    """An input that could not be transcribed (`transcribe_many(..., keep_going=True)`): its name and why."""

    audio: str
    error: str


def stop_token_ids(config: dict, tokenizer) -> list[int]:
    """The checkpoint's eos_token_id(s) plus <|endoftext|>."""
    eos = config["text_config"].get("eos_token_id", [])
    eos = [eos] if isinstance(eos, int) else list(eos)
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    return sorted(set(eos + ([end_of_text] if end_of_text is not None else [])))


def load(path_or_repo: str | Path, revision: str | None = None) -> tuple[FunASRNano, TokenizerWrapper]:
    """Load a converted (optionally quantized) model: a local directory or a hub repo id (downloaded
    into the Hugging Face cache at `revision`, default main). Returns (model, tokenizer)."""
    path = find_model(path_or_repo, revision)
    require_utf8_path(path)
    config = read_config(path)
    try:
        model, _ = load_model(path, get_model_classes=model_classes)
        tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: MLX reading a corrupt file
        raise UserError(f"cannot load the model in {path}: {err}") from None
    # The reference always runs encoder and adaptor in float32 ([F] fun_asr_nano/model.py:663-667).
    # They run once per utterance, so this costs little; in bf16 they visibly change the tokens.
    for audio_module in (model.audio_encoder, model.audio_adaptor, *ctc_modules(model)):
        audio_module.set_dtype(mx.float32)
    mx.eval(model.parameters())
    if use_fused_projections():
        model.fuse_projections()
    if model.has_ctc:  # the CTC tokenizer travels with the model, as the Qwen one with `tokenizer`
        model.ctc_tokenizer = ctc.CTCTokenizer.from_file(
            path / CTC_TOKENIZER_FILE, config.get("ctc_num_languages", 8749)
        )
    # Exactly the reference's stop set: not the tokenizer_config's eos, which mlx-lm would add.
    tokenizer.eos_token_ids = stop_token_ids(config, tokenizer)
    return model, tokenizer


def ctc_modules(model: FunASRNano) -> list:
    """The CTC head's modules; like the encoder, upstream runs them in float32 (stored so, too)."""
    return [model.ctc_decoder, model.ctc] if model.has_ctc else []


def use_timestamps(model: FunASRNano, timestamps: bool | None) -> bool:
    """None: timestamps when the model has the CTC head (and `load` gave it its CTC tokenizer); True on a
    model without one is an error."""
    available = model.has_ctc and getattr(model, "ctc_tokenizer", None) is not None
    if timestamps and not available:
        raise UserError(
            "this model has no CTC head, so no timestamps: convert a copy that carries it "
            "(the ModelScope model.pt with ctc_decoder.* and ctc.* tensors)"
        )
    return available if timestamps is None else timestamps


def prompt_inputs(
    model: FunASRNano, tokenizer, audio_frames: mx.array, language=None, hotwords: Sequence[str] = (), itn=True
) -> tuple[mx.array, mx.array]:
    """Token ids (audio positions hold 0, as in the reference) and the LLM input embeddings.

    `audio_frames` is the adaptor output (T, llm_dim); only the first ceil(T/8) frames are used.
    """
    before, after = prompt_around_audio(language, hotwords, itn)
    num_audio = model.num_audio_tokens(audio_frames.shape[0])
    before_ids, after_ids = tokenizer.encode(before), tokenizer.encode(after)
    ids = mx.array(before_ids + [0] * num_audio + after_ids)
    embed = model.llm.model.embed_tokens
    before_embeddings, after_embeddings = embed(mx.array(before_ids)), embed(mx.array(after_ids))
    # Audio frames take the embeddings' dtype, as upstream writes them into the embedded prompt.
    audio_embeddings = audio_frames[:num_audio].astype(before_embeddings.dtype)
    if audio_embeddings.shape[0] < num_audio:  # adaptor output shorter than the slots: upstream's
        # fallback ([F] fun_asr_nano/model.py:702-720) leaves the remaining placeholders as embed(0).
        padding = embed(mx.zeros(num_audio - audio_embeddings.shape[0], mx.int32))
        audio_embeddings = mx.concatenate([audio_embeddings, padding])
    return ids, mx.concatenate([before_embeddings, audio_embeddings, after_embeddings])


@dataclass
class Decoded:
    """One row's greedy decoding, fed a token at a time."""

    budget: int
    token_ids: list[int] = field(default_factory=list)
    stop_token: int | None = None
    hit_token_limit: bool = False
    repetition: bool = False
    ctc: align.Emissions | None = None  # the segment's CTC output, when timestamps are asked for

    def add(self, token: int, stop_ids: Iterable[int], stop_loops: bool) -> bool:
        """Take the next token; True when this row is finished."""
        if token in stop_ids:
            self.stop_token = token
            return True
        self.token_ids.append(token)
        if stop_loops and (keep := loop_end(self.token_ids)) is not None:
            del self.token_ids[keep:]
            self.repetition = True
            return True
        self.hit_token_limit = len(self.token_ids) >= self.budget
        return self.hit_token_limit

    def ends_with_next(self) -> bool:
        """Whether the next token finishes this row, whatever it is: it is the last the budget allows."""
        return len(self.token_ids) + 1 >= self.budget


def prefill(llm, embeddings: list[mx.array]) -> tuple[list, list[int], mx.array]:
    """The prompts (each (L_i, D) input embeddings) through the LLM in one pass, left-padded: mlx-lm's
    caches (a plain KVCache for one row, BatchKVCache for several), each row's padding, and the (B,)
    first tokens (lazy). Only the last position goes through the 151936-wide head; one row's cache is
    written once, after the pass (`decode_step.prefill_one`)."""
    if len(embeddings) == 1:
        cache, token = prefill_one(llm, embeddings[0])
        return cache, [0], token
    longest = max(row.shape[0] for row in embeddings)
    padding = [longest - row.shape[0] for row in embeddings]
    cache = [BatchKVCache(padding) for _ in llm.layers]
    x = mx.stack([mx.pad(row, [(pad, 0), (0, 0)]) for row, pad in zip(embeddings, padding)])
    hidden = llm.model(mx.zeros(x.shape[:2], mx.int32), cache=cache, input_embeddings=x)[:, -1:]
    return cache, padding, mx.argmax(output_head(llm)(hidden)[:, -1], axis=-1)


def greedy_batch(
    llm,
    embeddings: list[mx.array],
    budgets: list[int],
    stop_ids: Iterable[int],
    stop_loops: bool = True,
    timings: dict | None = None,
) -> list[Decoded]:
    """Greedy decoding of several prompts (each (L_i, D) input embeddings) at once.

    Written here rather than with mlx-lm's BatchGenerator, which takes token prompts, not embeddings.
    Rows are left-padded and use mlx-lm's BatchKVCache (per-row positions from 0, padding masked), as
    upstream's batched path does; a single row uses a plain KV cache, without masks (`prefill`). The steps
    after it run as decode_step.make_decoder chooses: compiled over preallocated buffers for several
    rows, and for one row where the CUDA kernels are on, else through mlx-lm's cache. A finished row
    stays in the batch (its tokens are ignored) until at most half the rows are left, so that the batch
    changes shape, and the step is traced again, only a few times. The next step is
    queued before the current tokens are read, so the device is never idle waiting for Python (the
    overlap mlx-lm's generate_step has), unless no row can use it (its budget ends).
    """
    timings = {} if timings is None else timings
    start = time.perf_counter()
    cache, padding, tokens = prefill(llm, embeddings)
    # The first tokens are computed before the decoder is made and its first step queued, which would
    # otherwise delay them by the host's time for both (the device is idle meanwhile either way).
    mx.eval(tokens)
    timings["prefill"] = timings.get("prefill", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    decoder = make_decoder(llm, cache, padding)
    del cache  # the decoder holds what it needs: buffers it replaces are freed, not kept to the end
    # Counted in decode's time, but not in its rate per token (add_timings), which short outputs would skew.
    timings["decode_setup"] = timings.get("decode_setup", 0.0) + time.perf_counter() - start
    rows, results = list(range(len(embeddings))), [Decoded(budget) for budget in budgets]
    done = [False] * len(rows)
    stop_ids, steps = set(stop_ids), 0
    while True:
        # No step is queued after the last token a budget allows: it would never be read, and the device
        # would compute it before whatever comes next (the next clip's frontend and encoder).
        if not all(done[row] or results[row].ends_with_next() for row in rows):
            next_tokens = decoder.step(tokens)
            mx.async_eval(next_tokens)
        values = tokens.tolist()
        steps += 1
        for row, token in zip(rows, values):
            done[row] = done[row] or results[row].add(token, stop_ids, stop_loops)
        keep = [i for i, row in enumerate(rows) if not done[row]]
        if not keep:
            break
        if len(keep) <= len(rows) // 2:
            decoder.filter(mx.array(keep))
            next_tokens, rows = next_tokens[mx.array(keep)], [rows[i] for i in keep]
        tokens = next_tokens
    timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - start
    timings["decode_steps"] = timings.get("decode_steps", 0) + steps - 1  # tokens after the prefill's
    return results


def _read(audio: str | Path | np.ndarray, name: str) -> Audio:
    """The input's samples, checked as the model needs them (`check_duration`: long enough, finite, in range)."""
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise UserError(f"audio arrays must be float samples in [-1, 1] at 16 kHz, got dtype {audio.dtype}")
        check_samples(audio, name)  # before the cast, which would make a large sample inf (and warn)
        read = Audio(audio.astype(np.float32, copy=False))
    else:
        read = read_audio(audio)
    check_duration(read.samples, name)  # now, not after the rest of its group has been decoded
    return read


@dataclass
class SegmentJob:
    """One segment of one input."""

    item: int  # index of the input in this group
    samples: np.ndarray
    start_ms: int
    end_ms: int
    name: str
    prompt: dict | None = None  # this segment's own prompt settings, else the pipeline's (the server mixes requests)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _segment_spans(samples: np.ndarray, segmenter, max_segment_ms: int) -> list[tuple[int, int]]:
    """(start_ms, end_ms) spans to decode: the whole input, or what the segmenter finds.

    "auto" (the default) decodes audio up to max_segment_ms whole, exactly as upstream without a VAD,
    and segments longer audio with the energy segmenter; None always decodes whole; a segmenter object
    (EnergySegmenter, an FSMN-VAD) is always used.
    """
    whole = [(0, -(-len(samples) * 1000 // SAMPLE_RATE))]  # ms, rounded up: every sample is in
    if segmenter is None:
        return whole
    if isinstance(segmenter, str):
        if segmenter != "auto":
            raise UserError(f"segmenter must be 'auto', None or an object with a segments() method, got {segmenter!r}")
        if len(samples) * 1000 <= max_segment_ms * SAMPLE_RATE:
            return whole
        segmenter = EnergySegmenter()
    # A span shorter than one fbank frame holds no speech (and has no features): left out.
    spans = segmenter.segments(samples, max_segment_ms)
    return [(a, b) for a, b in spans if (b - a) * SAMPLE_RATE >= FRAME_LENGTH * 1000]


def segment_jobs(item: int, name: str, samples: np.ndarray, segmenter, max_segment_ms: int) -> list[SegmentJob]:
    """The segments of one input to decode (see `_segment_spans`), in time order."""
    spans = _segment_spans(samples, segmenter, max_segment_ms)
    cut = [samples[start_ms * SAMPLE_RATE // 1000 : end_ms * SAMPLE_RATE // 1000] for start_ms, end_ms in spans]
    return [SegmentJob(item, piece, start_ms, end_ms, name) for piece, (start_ms, end_ms) in zip(cut, spans)]


def _batch_features(batch: list[SegmentJob]) -> tuple[mx.array, list[int]]:
    """The jobs' features, zero-padded to the longest, (B, T, 560) float32, and each one's length.

    Computed with MLX ops where that is faster (a GPU), else with numpy (audio.frontend_on_device).
    """
    if frontend_on_device():
        feats = [features_mx(job.samples, name=job.name) for job in batch]
        longest = max(f.shape[0] for f in feats)
        padded = mx.stack([mx.pad(f, [(0, longest - f.shape[0]), (0, 0)]) for f in feats])
        mx.eval(padded)
        return padded, [f.shape[0] for f in feats]
    feats = [features(job.samples, name=job.name) for job in batch]
    padded = np.zeros((len(feats), max(f.shape[0] for f in feats), feats[0].shape[1]), np.float32)
    for row, f in enumerate(feats):
        padded[row, : f.shape[0]] = f
    return mx.array(padded), [f.shape[0] for f in feats]


class BatchDecoder:
    """The settings shared by every segment, and the batched run over one group of jobs."""

    def __init__(self, model, tokenizer, language, hotwords, itn, max_new_tokens, stop_loops, timestamps=None):
        check_max_new_tokens(max_new_tokens, model.llm.args.max_position_embeddings)  # built once, at load
        resolve_language(language)
        self.model, self.tokenizer = model, tokenizer
        self.timestamps = use_timestamps(model, timestamps)
        self.prompt = dict(language=language, hotwords=hotword_list(hotwords), itn=itn)
        self.max_new_tokens, self.stop_loops = max_new_tokens, stop_loops

    def run(self, batch: list[SegmentJob], timings: dict) -> list[Decoded]:
        start = time.perf_counter()
        feats, lengths = _batch_features(batch)
        timings["frontend"] = time.perf_counter() - start

        start = time.perf_counter()
        encode = self.model.encode_both if self.timestamps else self.model.encode
        if len(batch) == 1:
            encoded = encode(feats)
            frames = [(encoded[1] if self.timestamps else encoded)[0]]
        else:
            encoded = encode(feats, mx.array(lengths))
            valid = self.model.audio_adaptor.output_lengths(mx.array(lengths)).tolist()
            frames = [(encoded[1] if self.timestamps else encoded)[row, :n] for row, n in enumerate(valid)]
        mx.eval(frames)
        timings["encoder"] = time.perf_counter() - start
        if self.timestamps:
            start = time.perf_counter()
            emitted = align.emissions(self.model, encoded[0], lengths)
            timings["ctc"] = time.perf_counter() - start

        start = time.perf_counter()  # the prompt is the prefill's first part: its time is counted there
        embeddings = [
            prompt_inputs(self.model, self.tokenizer, f, **(job.prompt or self.prompt))[1]
            for job, f in zip(batch, frames)
        ]
        budgets = [token_budget(job.seconds, self.max_new_tokens) for job in batch]
        timings["prefill"] = time.perf_counter() - start
        results = greedy_batch(
            self.model.llm, embeddings, budgets, self.tokenizer.eos_token_ids, self.stop_loops, timings
        )
        for decoded, em in zip(results, emitted if self.timestamps else []):
            decoded.ctc = em
        return results

    def warm_up(self, seconds: float = 3.0, steps: int = 4) -> None:
        """Run a short clip of faint noise through the frontend, encoder, prefill and `steps` decode steps
        of one row, so that a server's first request does not pay for what MLX compiles at first use for
        such a clip: its kernels (a CUDA kernel of ours at every process start: about a second a source,
        BENCHMARKS.md), the compiled encoder layers and decode step at their first shapes. Batched steps,
        other lengths and the CTC head still compile at their first use. 3 s: the shortest clip whose
        encoder runs the linear layers' kernels (cuda_kernels.LINEAR_MIN_ROWS, 50 frames); on CUDA the encoder also
        runs over a clip for each other source of the attention's kernels one clip can take
        (SenseVoiceEncoder.attention_sources_frames: today 7.7 s, 10.1 s and 19.3 s).

        The prompt's pass also runs at twice this prompt's length: MLX builds its quantized matmul on CUDA for
        prompts of up to 16, 32 and more rows each at its first use (mlx/backend/cuda/quantized/qmm/qmm_sm80.cu,
        make_cta_tiler), and a short clip's prompt (about 25 tokens for 1 s, 29 for 3 s) takes only the 32-row one.
        A 4-bit model's first token at a new clip length, after a 1 s clip, took 89-93 ms against bf16's 37-39
        (BENCHMARKS.md)."""
        rng = np.random.default_rng(0)

        def encoded(samples: int) -> tuple[mx.array, int]:  # faint noise's encoding, and its features' frames
            noise = rng.normal(0.0, 1e-3, samples).astype(np.float32)
            feats, lengths = _batch_features([SegmentJob(0, noise, 0, round(1000 * samples / SAMPLE_RATE), "warm-up")])
            return self.model.encode(feats)[0], lengths[0]

        frames, clip_frames = encoded(int(seconds * SAMPLE_RATE))  # the prompt and decode steps below read these
        for other in self.model.audio_encoder.attention_sources_frames(clip_frames):
            mx.eval(encoded(samples_for_frames(other))[0])
        embeddings = prompt_inputs(self.model, self.tokenizer, frames, **self.prompt)[1]
        greedy_batch(self.model.llm, [embeddings], [steps], [], stop_loops=False)  # no stop token: every step runs
        mx.eval(prefill(self.model.llm, [mx.concatenate([embeddings, embeddings])])[2])

    def segment(self, job: SegmentJob, decoded: Decoded) -> Segment:
        # Upstream decodes all that generate() returned, the stop token included (skipped as special).
        stop = [] if decoded.stop_token is None else [decoded.stop_token]
        text = postprocess(self.tokenizer.decode(decoded.token_ids + stop, skip_special_tokens=True))
        stamps = {}
        if decoded.ctc is not None:  # upstream aligns the post-processed text ([F] model.py:1065)
            stamps = align.segment_timestamps(
                self.model, self.model.ctc_tokenizer, decoded.ctc, text, job.start_ms / 1000
            )
            stamps["words"] = ctc.words(self.model.ctc_tokenizer, stamps["timestamps"])
        return Segment(
            job.start_ms / 1000,
            job.end_ms / 1000,
            text,
            decoded.token_ids,
            decoded.hit_token_limit,
            decoded.repetition,
            **stamps,
        )


def add_timings(total: dict, batch: dict, share: float) -> None:
    """Add this segment's share of a batch's stage seconds, and of its decoding rate (a weighted mean)."""
    for key in ("frontend", "encoder", "ctc", "align", "prefill", "decode"):
        if key in batch:
            total[key] = total.get(key, 0.0) + batch[key] * share
    if batch["decode_steps"]:
        steps_seconds = batch["decode"] - batch.get("decode_setup", 0.0)
        total["decode_ms_per_token"] = total.get("decode_ms_per_token", 0.0) + share * (
            1000 * steps_seconds / batch["decode_steps"]
        )
        total["rate_weight"] = total.get("rate_weight", 0.0) + share


def finish_transcription(
    name: str, duration: float, segments: list[Segment], timings: dict, warnings: Sequence[str] = ()
) -> Transcription:
    weight = timings.pop("rate_weight", 0.0)
    if weight:
        timings["decode_ms_per_token"] /= weight
    timed = bool(segments) and all(segment.timestamps is not None for segment in segments)
    return Transcription(
        timestamps=[stamp for segment in segments for stamp in segment.timestamps] if timed else None,
        words=[word for segment in segments for word in segment.words] if timed else None,
        ctc_text=" ".join(segment.ctc_text for segment in segments) if timed else None,
        audio=name,
        text=" ".join(segment.text for segment in segments),
        token_ids=[token for segment in segments for token in segment.token_ids],
        hit_token_limit=any(segment.hit_token_limit for segment in segments),
        repetition=any(segment.repetition for segment in segments),
        duration=duration,
        segments=segments,
        timings=timings,
        warnings=list(warnings),
    )


def transcribe_many(
    model: FunASRNano,
    tokenizer: TokenizerWrapper,
    audios: Iterable[str | Path | np.ndarray],
    *,
    language: str | None = None,
    hotwords: Sequence[str] | str = (),
    itn: bool = True,
    max_new_tokens: int | None = None,
    segmenter="auto",
    max_segment_seconds: float = DEFAULT_MAX_SEGMENT_MS / 1000,
    stop_loops: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = False,
    timestamps: bool | None = None,
    keep_going: bool = False,
) -> Iterator[Transcription | Failure]:
    """Transcribe files or 16 kHz float arrays in batches; yields one Transcription per input, in order.

    Inputs are read a few batches' worth at a time, cut into segments (see `_segment_spans`), sorted by
    length so that batches hold similar lengths, and decoded `batch_size` segments at a time; results are
    the same as one at a time (batch_size=1) up to float rounding. `max_new_tokens=None` gives each segment
    a budget scaled to its length (`token_budget`); `stop_loops` stops a segment caught in a repetition
    loop. `progress=None` shows a bar on a terminal only. `timestamps`: align every segment's text with the
    CTC head (None: when the model has one; True on a model without one is a UserError).

    An input that cannot be read (a UserError: unreadable, too short, NaN samples) raises once the inputs
    read before it have been yielded; with `keep_going`, a `Failure` is yielded in its place and the
    inputs after it are transcribed (bad inputs never enter a batch, so their batch-mates are unaffected).
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UserError(f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {batch_size}")
    if not MIN_SEGMENT_SECONDS <= max_segment_seconds <= MAX_SEGMENT_SECONDS:  # also refuses nan
        raise UserError(
            f"max_segment_seconds must be in {MIN_SEGMENT_SECONDS:g}..{MAX_SEGMENT_SECONDS:g}, got {max_segment_seconds}"
        )
    max_segment_ms = round(max_segment_seconds * 1000)
    pipeline = BatchDecoder(model, tokenizer, language, hotwords, itn, max_new_tokens, stop_loops, timestamps)
    bar = tqdm(
        total=0,
        unit="s audio",
        desc="transcribe",
        disable=None if progress is None else not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
    )
    group: list[tuple[str, Audio | Failure]] = []
    jobs: list[SegmentJob] = []
    try:
        for index, audio in enumerate(audios):
            name = printable(audio) if not isinstance(audio, np.ndarray) else f"<array {index}>"
            try:
                read = _read(audio, name)
                found = segment_jobs(len(group), name, read.samples, segmenter, max_segment_ms)
            except UserError as err:
                if keep_going:
                    group.append((name, Failure(name, str(err))))
                    continue
                yield from _run_group(pipeline, group, jobs, batch_size, bar)  # what was read is not lost
                raise
            for job in found:
                jobs.append(job)
                bar.total += job.seconds
            # The result names its input as the path it is (bytes not UTF-8 kept), the messages as printable.
            group.append((name if isinstance(audio, np.ndarray) else os.fsdecode(audio), read))
            bar.refresh()
            if len(jobs) >= BATCHES_PER_GROUP * batch_size or len(group) >= BATCHES_PER_GROUP * batch_size:
                yield from _run_group(pipeline, group, jobs, batch_size, bar)
                group, jobs = [], []
        yield from _run_group(pipeline, group, jobs, batch_size, bar)
    finally:
        bar.close()


def _run_group(
    pipeline: BatchDecoder, group, jobs: list[SegmentJob], batch_size: int, bar
) -> Iterator[Transcription | Failure]:
    """Decode the jobs of these inputs in length-sorted batches; yield the inputs' results in order."""
    segments: list[list[Segment]] = [[] for _ in group]
    timings: list[dict] = [{} for _ in group]
    # Longest first: similar lengths share a batch (less padding), and memory peaks at the start.
    order = sorted(jobs, key=lambda job: -len(job.samples))
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        batch_timings: dict = {}
        decoded_batch = pipeline.run(batch, batch_timings)
        start = time.perf_counter()
        for job, decoded in zip(batch, decoded_batch):
            segments[job.item].append(pipeline.segment(job, decoded))
        if pipeline.timestamps:
            batch_timings["align"] = time.perf_counter() - start
        batch_seconds = sum(job.seconds for job in batch)
        for job in batch:
            add_timings(timings[job.item], batch_timings, job.seconds / batch_seconds)
        bar.update(batch_seconds)
    for (name, read), found, spent in zip(group, segments, timings):
        if isinstance(read, Failure):
            yield read
            continue
        found.sort(key=lambda segment: segment.start)
        yield finish_transcription(name, len(read.samples) / SAMPLE_RATE, found, spent, read.warnings)


def transcribe(
    model: FunASRNano,
    tokenizer: TokenizerWrapper,
    audio: str | Path | np.ndarray,
    **options,
) -> Transcription:
    """Greedy transcription of one file or one 16 kHz mono float array; options as `transcribe_many`."""
    return next(transcribe_many(model, tokenizer, [audio], **options))
