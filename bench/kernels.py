"""What fewer, larger kernels buy: each candidate measured against what it replaces, in one process.

    python bench/kernels.py MODEL_DIR [--seconds 10] [--tokens 128] [--label L] [--quick]

One JSON line per measurement (warm medians, ms):

- encoder + adaptor for one clip of --seconds, compiled, evaluated at this build's cadence (the layers
  per evaluation that `model.encoder_layers_per_eval` picks for the input), every 10 layers (the fixed
  cadence of earlier builds) and as one graph, whether the three give identical numbers, and how long
  the host takes to build and submit each (submit_ms) against the whole pass (an FSMN block written as
  shifted sums was measured here and rejected: BENCHMARKS.md);
- greedy decoding, one clip: LLM projections fused (q/k/v and gate/up in one matmul each) or not,
  ms/token, the host's share of a step (building the graph and submitting it), and whether the
  tokens are identical;
- batched decoding (8 and 32 rows, compiled step): fused or not, ms/step.

`--quick` measures the first two only (for process-wide settings such as MLX_MAX_OPS_PER_BUFFER or
MLX_USE_CUDA_GRAPHS, which MLX reads once, so each value needs its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import synthetic_audio  # noqa: E402

from funasr_nano_mlx import load, model as model_module  # noqa: E402
from funasr_nano_mlx.audio import features  # noqa: E402
from funasr_nano_mlx.decode_step import StaticDecoder, make_decoder  # noqa: E402
from funasr_nano_mlx.transcribe import greedy_batch, prompt_inputs  # noqa: E402


def report(**row) -> None:
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def encoder_variants(model, feats, label: str) -> None:
    """Compiled encoder + adaptor at three cadences: this build's (`encoder_layers_per_eval`), every 10
    layers, one graph; submit_ms: until the last kernel is queued, against warm_ms until the result is there."""
    os.environ["FUNASR_NANO_COMPILE"] = "1"
    encoder, chosen = model.audio_encoder, model_module.encoder_layers_per_eval
    depth = len(encoder.encoders0) + len(encoder.encoders) + len(encoder.tp_encoders)
    cadences = {
        "this build": chosen(feats.shape[0], feats.shape[1], encoder.args, feats.itemsize),
        "every 10 layers": 10,
        "one graph": depth,
    }
    outputs = {}
    for cadence, per_eval in cadences.items():
        model_module.encoder_layers_per_eval = lambda *_, per_eval=per_eval: per_eval
        try:
            warm = median_ms(lambda: mx.eval(model.encode(feats)), 10)
            submits = []
            for _ in range(5):
                mx.synchronize()
                start = time.perf_counter()
                out = model.encode(feats)
                mx.async_eval(out)
                submits.append(1e3 * (time.perf_counter() - start))
                mx.eval(out)
            outputs[cadence] = np.array(model.encode(feats))
        finally:
            model_module.encoder_layers_per_eval = chosen
        report(
            stage="encoder+adaptor",
            label=label,
            cadence=cadence,
            layers_per_eval=min(per_eval, depth),
            warm_ms=warm,
            submit_ms=statistics.median(submits),
        )
    first, *others = outputs.values()
    report(
        stage="encoder+adaptor, cadences compared",
        label=label,
        identical=all(bool((first == other).all()) for other in others),
    )


def decode_one(model, embeddings, tokens: int, label: str) -> None:
    results = {}
    for fused in (False, True):
        model.fuse_projections(fused)
        greedy_batch(model.llm, [embeddings], [8], [], stop_loops=False)  # warm-up
        runs = []
        for _ in range(3):
            timings: dict = {}
            result = greedy_batch(model.llm, [embeddings], [tokens], [], stop_loops=False, timings=timings)
            runs.append(1e3 * timings["decode"] / timings["decode_steps"])
        results[fused] = result[0].token_ids
        report(stage="decode batch 1", label=label, fused=fused, ms_per_token=statistics.median(runs), runs=runs)
        host_share(model, embeddings, tokens, label, fused)
    same = sum(a == b for a, b in zip(results[False], results[True]))
    report(stage="decode batch 1 agreement (fused vs not)", label=label, same_tokens=same, of=len(results[False]))
    static_one_row(model, embeddings, tokens, label)


def static_one_row(model, embeddings, tokens: int, label: str) -> None:
    """One row through the compiled static-cache step (the batched path), fused: rejected before at
    3.9-4.1 against 3.2 ms/token with mlx-lm's cache; measured again with fewer matmuls."""
    from mlx_lm.models.cache import make_prompt_cache

    llm = model.llm
    runs = []
    for _ in range(3):
        cache = make_prompt_cache(llm)
        hidden = llm.model(mx.zeros((1, embeddings.shape[0]), mx.int32), cache=cache, input_embeddings=embeddings[None])
        token = mx.argmax(llm.model.embed_tokens.as_linear(hidden[:, -1]), axis=-1)
        decoder = StaticDecoder(llm, cache, [0])
        mx.eval(token)
        start = time.perf_counter()
        for _ in range(tokens):
            next_token = decoder.step(token)
            mx.async_eval(next_token)
            token.item()
            token = next_token
        runs.append(1e3 * (time.perf_counter() - start) / tokens)
    report(
        stage="decode batch 1, static compiled step",
        label=label,
        fused=True,
        ms_per_token=statistics.median(runs[1:]),
        runs=runs,
    )


def host_share(model, embeddings, tokens: int, label: str, fused: bool) -> None:
    """Per step: building the graph in Python, submitting it (MLX encodes the kernels), the whole step."""
    from mlx_lm.models.cache import make_prompt_cache

    llm = model.llm
    cache = make_prompt_cache(llm)
    hidden = llm.model(mx.zeros((1, embeddings.shape[0]), mx.int32), cache=cache, input_embeddings=embeddings[None])
    token = mx.argmax(llm.model.embed_tokens.as_linear(hidden[:, -1]), axis=-1)
    decoder = make_decoder(llm, cache, [0])
    mx.eval(token)
    build = submit = 0.0
    start = time.perf_counter()
    for _ in range(tokens):
        t0 = time.perf_counter()
        token = decoder.step(token)
        t1 = time.perf_counter()
        mx.async_eval(token)
        t2 = time.perf_counter()
        build, submit = build + t1 - t0, submit + t2 - t1
        mx.eval(token)
    total = time.perf_counter() - start
    report(
        stage="decode batch 1 host share (synchronous steps)",
        label=label,
        fused=fused,
        build_ms=1e3 * build / tokens,
        submit_ms=1e3 * submit / tokens,
        step_ms=1e3 * total / tokens,
    )


def decode_batched(model, embeddings, tokens: int, label: str) -> None:
    for fused in (False, True):
        model.fuse_projections(fused)
        for batch in (8, 32):
            rows = [embeddings] * batch
            greedy_batch(model.llm, rows, [tokens // 2] * batch, [], stop_loops=False)  # traces
            timings: dict = {}
            greedy_batch(model.llm, rows, [tokens // 2] * batch, [], stop_loops=False, timings=timings)
            report(
                stage=f"decode batch {batch}",
                label=label,
                fused=fused,
                ms_per_step=1e3 * timings["decode"] / timings["decode_steps"],
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    feats = mx.array(features(synthetic_audio(args.seconds)))[None]
    encoder_variants(model, feats, args.label)
    embeddings = prompt_inputs(model, tokenizer, model.encode(feats)[0])[1]
    decode_one(model, embeddings, args.tokens, args.label)
    if not args.quick:
        decode_batched(model, embeddings, args.tokens, args.label)


if __name__ == "__main__":
    main()
