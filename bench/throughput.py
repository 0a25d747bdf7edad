"""Throughput over many files: audio seconds transcribed per wall-clock second, batched and one at a time.

    python bench/throughput.py --workdir work/bench [--files 100] [--min-s 5 --max-s 30] [--tokens 64]
                               [--batch-sizes 1 8 16 32] [--sequential-files 25]
                               [--impl ours official official-bf16 mlx-audio]

The same random-weight checkpoint as bench/speed.py (built with the official code, converted with
ours), the same seeded clips of --min-s to --max-s seconds, and exactly --tokens generated tokens per
clip for every implementation (random weights never stop by themselves; stop tokens are ignored),
so each does the same work. Each implementation runs in its own process. Per (implementation, batch
size), the whole set runs twice; the second pass is reported (the first is `cold_s`: kernels
compiled for new shapes). One-at-a-time runs (batch size 1) use the first --sequential-files clips,
to keep the official model's sequential run within minutes; rates are per audio second, so the
figures compare. One JSON line each:

    impl, batch_size, files, audio_s, wall_s, cold_s, audio_s_per_s, tokens_per_s, peak_mem_gb

Implementations: ours (transcribe_many: padded encoder batches, left-padded LLM batches, clips
sorted by length); official (funasr 1.4.16 FunASRNano.inference on lists of clips: batch size 1 is
its single-clip path, larger sizes its batched path `_inference_llm_batch` (left-padded
llm.generate), fed length-sorted chunks as AutoModel does with a VAD; LLM in fp32 as its default,
official-bf16 with bf16=True); mlx-audio (0.6.2, one clip at a time: it has no batched path).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from speed import ROOT, SAMPLE_RATE, prepare, synthetic_audio  # bench/ is on sys.path when run as a script


def clips(count: int, low: float, high: float) -> list[np.ndarray]:
    lengths = np.random.default_rng(0).uniform(low, high, count)
    return [synthetic_audio(round(float(s), 2)) for s in lengths]


def run_ours(model_dir: Path, waves: list[np.ndarray], tokens: int, batch_size: int) -> tuple[float, int, float]:
    import mlx.core as mx

    from funasr_nano_mlx import load
    from funasr_nano_mlx.transcribe import transcribe_many

    model, tokenizer = load(model_dir)
    tokenizer.eos_token_ids = []  # exactly `tokens` per clip
    options = dict(max_new_tokens=tokens, segmenter=None, stop_loops=False, batch_size=batch_size)

    stages: dict[str, float] = {}

    def once() -> float:
        start = time.perf_counter()
        results = list(transcribe_many(model, tokenizer, waves, **options))
        assert all(len(r.token_ids) == tokens for r in results)
        stages.clear()
        for r in results:  # each clip's share of its batches' time
            for stage in ("frontend", "encoder", "prefill", "decode"):
                stages[stage] = stages.get(stage, 0.0) + r.timings[stage]
        return time.perf_counter() - start

    cold = once()
    mx.reset_peak_memory()
    wall = once()
    print(json.dumps({"ours_stage_s": {k: round(v, 3) for k, v in stages.items()}}), flush=True)
    return wall, cold, mx.get_peak_memory() / 2**30


def run_official(upstream: Path, waves: list[np.ndarray], tokens: int, batch_size: int, bf16: bool):
    import torch

    from tests.reference import Reference

    cuda = torch.cuda.is_available()  # the CPU path is only for trying the script out
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ref = Reference(upstream, device="cuda" if cuda else "cpu")
    llm, original = ref.model.llm, ref.model.llm.generate

    def generate(*args, **kwargs):  # exactly `tokens` new tokens per clip
        return original(*args, **{**kwargs, "min_new_tokens": kwargs["max_new_tokens"]})

    ordered = sorted(waves, key=len, reverse=True)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]

    def once() -> float:
        llm.generate = generate
        try:
            sync()
            start = time.perf_counter()
            for chunk in chunks:
                ref.model.inference(
                    data_in=[torch.from_numpy(w.copy()) for w in chunk],
                    key=[f"clip{i}" for i in range(len(chunk))],
                    tokenizer=ref.tokenizer,
                    frontend=ref.frontend,
                    **{**ref.kwargs, "max_length": tokens, "bf16": bf16},
                )
            sync()
            return time.perf_counter() - start
        finally:
            del llm.generate

    cold = once()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    return once(), cold, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def run_mlx_audio(model_dir: Path, waves: list[np.ndarray], tokens: int, batch_size: int):
    import mlx.core as mx
    from mlx_audio.stt import load

    if batch_size != 1:
        raise SystemExit("mlx-audio has no batched path")
    model = load(str(model_dir))

    def once() -> float:
        start = time.perf_counter()
        for wave in waves:
            for _ in model.stream_generate(mx.array(wave), max_tokens=tokens):
                pass
        return time.perf_counter() - start

    cold = once()
    mx.reset_peak_memory()
    return once(), cold, mx.get_peak_memory() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--min-s", type=float, default=5.0)
    parser.add_argument("--max-s", type=float, default=30.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--sequential-files", type=int, default=25)
    parser.add_argument("--impl", nargs="+", default=["ours", "official", "official-bf16", "mlx-audio"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: IMPL BATCH_SIZE, run here
    args = parser.parse_args()

    impls = [args.child[0]] if args.child else args.impl
    upstream, converted = prepare(args.workdir, args.size, args.dtype, any(i.startswith("official") for i in impls))
    if args.child:
        impl, batch_size = args.child[0], int(args.child[1])
        waves = clips(args.files, args.min_s, args.max_s)
        waves = waves[: args.sequential_files] if batch_size == 1 else waves
        if impl == "ours":
            wall, cold, peak = run_ours(converted, waves, args.tokens, batch_size)
        elif impl == "mlx-audio":
            wall, cold, peak = run_mlx_audio(converted, waves, args.tokens, batch_size)
        else:
            wall, cold, peak = run_official(upstream, waves, args.tokens, batch_size, bf16=impl == "official-bf16")
        audio = sum(map(len, waves)) / SAMPLE_RATE
        print(
            json.dumps(
                {
                    "impl": impl,
                    "batch_size": batch_size,
                    "files": len(waves),
                    "audio_s": round(audio, 1),
                    "wall_s": round(wall, 3),
                    "cold_s": round(cold, 3),
                    "audio_s_per_s": round(audio / wall, 1),
                    "tokens_per_s": round(len(waves) * args.tokens / wall, 1),
                    "peak_mem_gb": None if peak is None else round(peak, 2),
                }
            ),
            flush=True,
        )
        return
    for impl in args.impl:
        for batch_size in [1] if impl == "mlx-audio" else args.batch_sizes:
            command = [
                sys.executable,
                __file__,
                "--child",
                impl,
                str(batch_size),
                "--workdir",
                str(args.workdir),
                "--size",
                args.size,
                "--dtype",
                args.dtype,
                "--files",
                str(args.files),
                "--min-s",
                str(args.min_s),
                "--max-s",
                str(args.max_s),
                "--tokens",
                str(args.tokens),
                "--sequential-files",
                str(args.sequential_files),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
            error = {"impl": impl, "batch_size": batch_size, "error": done.stderr.strip()[-600:]}
            print("\n".join(rows) if rows else json.dumps(error), flush=True)


if __name__ == "__main__":
    main()
