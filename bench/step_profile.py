"""Where one clip's decode step spends its time on a CUDA GPU: the host and each kernel, in one process.

    python bench/step_profile.py MODEL_DIR [--seconds 10] [--tokens 128]

For the step with and without the projection kernels (`decode_step.projections_fit`), interleaved over
rounds: ms/token in greedy_batch's loop, the host's share of a synchronous step (building it, submitting
it), and the GPU time of each kernel per step, read with CUPTI through torch.profiler (it records every
kernel of the process, MLX's included), with the tokens of the two compared. Needs torch with CUDA.
The prefill is left lazy when the decoder is made, as greedy_batch leaves it, so that the compiled step
is traced as in a transcription. One JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import synchronous_steps  # noqa: E402
from speed import synthetic_audio  # noqa: E402

from funasr_nano_mlx import decode_step, load  # noqa: E402
from funasr_nano_mlx.audio import features  # noqa: E402
from funasr_nano_mlx.decode_step import StaticDecoder  # noqa: E402
from funasr_nano_mlx.transcribe import prefill, prompt_inputs  # noqa: E402

PROJECTIONS_FIT = decode_step.projections_fit
VARIANTS = {"projection kernels": PROJECTIONS_FIT, "attention and q/k kernels only": lambda *_: False}


def decoder(llm, embeddings):
    cache, padding, token = prefill(llm, [embeddings])
    return StaticDecoder(llm, cache, padding), token


def tokens_and_ms(llm, embeddings, tokens: int) -> tuple[list[int], float]:
    """greedy_batch's loop: the next step queued before the current token is read."""
    step, token = decoder(llm, embeddings)
    ids, start = [], 0.0
    for index in range(tokens):
        next_token = step.step(token)
        mx.async_eval(next_token)
        ids.append(token.item())
        if index == 0:
            start = time.perf_counter()
        token = next_token
    return ids, 1e3 * (time.perf_counter() - start) / (tokens - 1)


def gpu_kernels(llm, embeddings, steps: int = 16) -> dict:
    """CUPTI's kernel times over `steps` warm steps, per step: the total, the launches, the heaviest kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return {"gpu_us_per_step": None}  # CUPTI needs a CUDA device
    step, token = decoder(llm, embeddings)
    for _ in range(8):
        token = step.step(token)
    mx.eval(token)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiled:
        for _ in range(steps):
            token = step.step(token)
            mx.async_eval(token)
        mx.eval(token)
        torch.cuda.synchronize()
    times, counts = defaultdict(float), defaultdict(int)
    for event in profiled.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name] += event.device_time_total
            counts[event.name] += 1
    heaviest = sorted(times, key=times.get, reverse=True)[:10]
    return {
        "gpu_us_per_step": sum(times.values()) / steps,
        "launches_per_step": sum(counts.values()) / steps,
        "heaviest_us_and_launches": {
            name[:80]: [round(times[name] / steps, 1), counts[name] // steps] for name in heaviest
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="the first traces and is not counted")
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    llm = model.llm
    embeddings = prompt_inputs(
        model, tokenizer, model.encode(mx.array(features(synthetic_audio(args.seconds)))[None])[0]
    )[1]
    mx.eval(embeddings)
    traced, times, ids = {}, {name: [] for name in VARIANTS}, {}
    for round_ in range(args.rounds):
        for name, fit in VARIANTS.items():
            decode_step.projections_fit = fit
            llm.__dict__.pop("_greedy_step", None)
            if name in traced:
                object.__setattr__(llm, "_greedy_step", traced[name])  # each variant keeps its own trace
            ids[name], ms = tokens_and_ms(llm, embeddings, args.tokens)
            traced[name] = llm.__dict__.pop("_greedy_step")
            if round_:
                times[name].append(ms)
    first = next(iter(VARIANTS))
    for name, fit in VARIANTS.items():
        decode_step.projections_fit = fit
        object.__setattr__(llm, "_greedy_step", traced[name])
        row = {"variant": name, "ms_per_token": statistics.median(times[name]), "runs": times[name]}
        row["same_tokens_as_first_variant"] = sum(a == b for a, b in zip(ids[name], ids[first]))
        row.update(synchronous_steps(*decoder(llm, embeddings), 32), **gpu_kernels(llm, embeddings))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    decode_step.projections_fit = PROJECTIONS_FIT


if __name__ == "__main__":
    main()
