"""Speed and memory of Fun-ASR-Nano implementations on the same weights and audio.

    python bench/speed.py --workdir work/bench [--size full] [--seconds 10 60] [--tokens 64]
                          [--impl ours official official-bf16 mlx-audio] [--dtype bfloat16|float32]

Builds a random-weight upstream checkpoint with the official code (tests/reference.py) and converts
it with our converter, once, under --workdir. Each implementation then runs in its own process (so
peak-memory figures are its own) on the same seeded audio: warm-up passes (WARM_UP_SECONDS), then timed
passes per clip that decode exactly --tokens tokens: the first (cold_total_ms, and its cold_ttft_ms) includes
whatever the backend compiles or plans for a new input length (cuDNN planned its attention for some new
prompt lengths: 37-59 ms on an H100); of the next WARM_PASSES, the median one is reported in full. One
JSON line per (implementation, clip):

    frontend_ms, encoder_ms (encoder + adaptor), prefill_ms (LLM prompt -> first token),
    ttft_ms (audio in -> first token), decode_ms_per_token, total_ms, tokens, peak_mem_gb,
    and for ours token_digest (the decoded ids' SHA-1, to compare builds run in separate processes) and
    cold_stages_ms (the first pass's frontend, encoder and prefill ms: where a new length costs)

Implementations: ours (this package, MLX); official (funasr 1.4.16 `FunASRNano.inference`, the LLM in
fp32 as its default inference does); official-bf16 (the same with bf16=True, its autocast path);
mlx-audio (mlx-audio 0.6.2's port, loading our converted directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE_RATE = 16000
# Exactly the asked number of tokens: one segment, no repetition guard (random weights loop).
FIXED_LENGTH = {"segmenter": None, "stop_loops": False}
WARM_PASSES = 3  # per clip after the cold one; the median pass is reported
# The load-time warm-up clips of every implementation: 3 s, the shortest whose encoder runs the linears' kernels
# (cuda_kernels.LINEAR_MIN_ROWS), and 8 s, whose attention takes the softmax's kernel with MLX's 64 threads a row (as
# 10 s does; cuda_kernels.attention_sources_frames), so that "cold" is a new length's cost, not a kernel's compile
# (runs in BENCHMARKS.md up to 2026-12-07 18:30 UTC warmed up with 3 s and 5 s, up to 16:00 UTC with 3 s alone,
# earlier ones with 1 s).
WARM_UP_SECONDS = (3, 8)


def synthetic_audio(seconds: float) -> np.ndarray:
    """Seeded noise with a slow tone: random weights make content irrelevant, length is what counts."""
    rng = np.random.default_rng(int(seconds))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def warm_up_clips(wave: np.ndarray, seconds) -> list[np.ndarray]:
    """The beginnings of `wave` `seconds` long that are shorter than it: a warm-up at the measured length itself would
    leave no cold pass."""
    return [wave[: int(s * SAMPLE_RATE)] for s in seconds if int(s * SAMPLE_RATE) < len(wave)]


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def median_pass(run, total=None, passes: int = WARM_PASSES):
    """(seconds, result) of the pass whose time is the median of `passes` warm passes: one pass alone
    moved by 10-40% from process to process on the lent GPU hosts."""
    timed = []
    for _ in range(passes):
        start = time.perf_counter()
        out = run()
        timed.append((time.perf_counter() - start if total is None else total(out), out))
    timed.sort(key=lambda pair: pair[0])
    return timed[len(timed) // 2]


def first_token_seconds(timings: dict) -> float:
    """Audio in to the first token, from `transcribe`'s stage timings."""
    return timings["frontend"] + timings["encoder"] + timings["prefill"]


def bench_ours(model_dir: Path, wave: np.ndarray, tokens: int, warm_up=WARM_UP_SECONDS) -> dict:
    import mlx.core as mx

    from funasr_nano_mlx import load, transcribe

    model, tokenizer = load(model_dir)
    tokenizer.eos_token_ids = []  # decode exactly `tokens` tokens, whatever random weights say
    for clip in warm_up_clips(wave, warm_up):  # load-time warm-up
        transcribe(model, tokenizer, clip, max_new_tokens=4, **FIXED_LENGTH)
    mx.reset_peak_memory()
    cold = time.perf_counter()
    first = transcribe(model, tokenizer, wave, max_new_tokens=tokens, **FIXED_LENGTH)  # first time at this length
    cold = time.perf_counter() - cold
    total, result = median_pass(lambda: transcribe(model, tokenizer, wave, max_new_tokens=tokens, **FIXED_LENGTH))
    t = result.timings
    return dict(
        frontend_ms=1e3 * t["frontend"],
        encoder_ms=1e3 * t["encoder"],
        prefill_ms=1e3 * t["prefill"],
        ttft_ms=1e3 * first_token_seconds(t),
        decode_ms_per_token=t["decode_ms_per_token"],
        total_ms=1e3 * total,
        cold_total_ms=1e3 * cold,
        cold_ttft_ms=1e3 * first_token_seconds(first.timings),
        cold_stages_ms={stage: round(1e3 * first.timings[stage], 2) for stage in ("frontend", "encoder", "prefill")},
        tokens=len(result.token_ids),
        token_digest=hashlib.sha1(str(result.token_ids).encode()).hexdigest()[:12],
        peak_mem_gb=max(mx.get_peak_memory() / 2**30, 0) or rss_gb(),
    )


def bench_mlx_audio(model_dir: Path, wave: np.ndarray, tokens: int, warm_up=WARM_UP_SECONDS) -> dict:
    import mlx.core as mx
    from mlx_audio.stt import load

    model = load(str(model_dir))

    def run(samples, n):
        start = time.perf_counter()
        stamps = []
        for _ in model.stream_generate(mx.array(samples), max_tokens=n):
            stamps.append(time.perf_counter())
        return start, stamps

    for clip in warm_up_clips(wave, warm_up):
        run(clip, 4)
    mx.reset_peak_memory()
    start, stamps = run(wave, tokens)
    cold, cold_ttft = stamps[-1] - start, stamps[0] - start
    _, (start, stamps) = median_pass(lambda: run(wave, tokens), total=lambda out: out[1][-1] - out[0])
    decode = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return dict(
        ttft_ms=1e3 * (stamps[0] - start),
        decode_ms_per_token=1e3 * decode,
        total_ms=1e3 * (stamps[-1] - start),
        cold_total_ms=1e3 * cold,
        cold_ttft_ms=1e3 * cold_ttft,
        tokens=len(stamps),
        peak_mem_gb=mx.get_peak_memory() / 2**30,
    )


def bench_official(upstream: Path, wave: np.ndarray, tokens: int, bf16: bool, warm_up=WARM_UP_SECONDS) -> dict:
    import torch

    from tests.reference import Reference

    cuda = torch.cuda.is_available()
    if cuda:  # exact fp32 convolutions, as in the parity tests
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    ref = Reference(upstream, device="cuda" if cuda else "cpu")
    model, llm = ref.model, ref.model.llm
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stamps: list[float] = []

    class FirstTokens:  # transformers streamer protocol: put() per step, first call = the prompt
        def put(self, value):
            sync()
            stamps.append(time.perf_counter())

        def end(self):
            pass

    original = llm.generate

    def generate(*args, **kwargs):
        kwargs.update(min_new_tokens=kwargs["max_new_tokens"], streamer=FirstTokens())
        return original(*args, **kwargs)

    def run(samples, n):
        stamps.clear()
        llm.generate = generate
        try:
            sync()
            start = time.perf_counter()
            _, meta = model.inference(
                data_in=[torch.from_numpy(samples.copy())],
                key=["bench"],
                tokenizer=ref.tokenizer,
                frontend=ref.frontend,
                **{**ref.kwargs, "max_length": n, "bf16": bf16},
            )
            sync()
            return start, time.perf_counter(), meta
        finally:
            del llm.generate

    for clip in warm_up_clips(wave, warm_up):
        run(clip, 4)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start, end, meta = run(wave, tokens)
    cold = end - start
    start, end, meta = run(wave, tokens)
    # stamps[0]: generate() got the prompt; stamps[1]: first new token; stamps[-1]: last token.
    frontend_ms = 1e3 * float(meta.get("extract_feat", "nan")) if "extract_feat" in meta else None
    return dict(
        frontend_ms=frontend_ms,
        prefill_ms=1e3 * (stamps[1] - stamps[0]),
        encoder_ms=None,
        ttft_ms=1e3 * (stamps[1] - start),
        decode_ms_per_token=1e3 * (stamps[-1] - stamps[1]) / max(1, len(stamps) - 2),
        total_ms=1e3 * (end - start),
        cold_total_ms=1e3 * cold,
        tokens=len(stamps) - 1,
        peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else rss_gb(),
    )


def prepare(workdir: Path, size: str, dtype: str, official: bool) -> tuple[Path, Path]:
    """The upstream checkpoint and its conversion under `workdir`, each made if missing; the checkpoint only
    where an official implementation runs or nothing is converted yet, so that a converted directory alone
    (bench/random_model.py's, where funasr cannot be installed) serves ours and mlx-audio."""
    from funasr_nano_mlx.convert import convert

    upstream, converted = workdir / f"upstream-{size}", workdir / f"mlx-{size}-{dtype}"
    if (official or not converted.exists()) and not (upstream / "model.pt").exists():
        from tests.reference import write_upstream_dir  # the official package: only to build the model

        write_upstream_dir(upstream, size, seed=0)
    if not converted.exists():
        convert(upstream, converted, dtype=dtype)
    return upstream, converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--impl", nargs="+", default=["ours", "official", "official-bf16", "mlx-audio"])
    parser.add_argument(
        "--warm-up-seconds",
        type=float,
        nargs="+",
        default=list(WARM_UP_SECONDS),
        help="the clips each implementation decodes after loading, before the first (cold) pass",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one implementation here
    args = parser.parse_args()

    impls = [args.child] if args.child else args.impl
    upstream, converted = prepare(args.workdir, args.size, args.dtype, any(i.startswith("official") for i in impls))
    if args.child:
        for seconds in args.seconds:
            wave = synthetic_audio(seconds)
            if args.child == "ours":
                row = bench_ours(converted, wave, args.tokens, args.warm_up_seconds)
            elif args.child == "mlx-audio":
                row = bench_mlx_audio(converted, wave, args.tokens, args.warm_up_seconds)
            else:
                row = bench_official(upstream, wave, args.tokens, args.child == "official-bf16", args.warm_up_seconds)
            print(
                json.dumps({"impl": args.child, "size": args.size, "dtype": args.dtype, "audio_s": seconds, **row}),
                flush=True,
            )
        return
    for impl in args.impl:
        command = [
            sys.executable,
            __file__,
            "--child",
            impl,
            "--workdir",
            str(args.workdir),
            "--size",
            args.size,
            "--dtype",
            args.dtype,
            "--tokens",
            str(args.tokens),
            "--seconds",
            *map(str, args.seconds),
            "--warm-up-seconds",
            *map(str, args.warm_up_seconds),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
        print("\n".join(rows) if rows else json.dumps({"impl": impl, "error": done.stderr.strip()[-400:]}), flush=True)


if __name__ == "__main__":
    main()
