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
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import synthetic_audio  # noqa: E402

from funasr_nano_mlx import cuda_kernels, load, model as model_module  # noqa: E402
from funasr_nano_mlx.audio import features  # noqa: E402
from funasr_nano_mlx.decode_step import make_decoder  # noqa: E402
from funasr_nano_mlx.transcribe import greedy_batch, prompt_inputs  # noqa: E402


KERNELS = ("qk_norm_rope", "add_rms_norm")  # cuda_kernels' functions that have an `_ops` twin


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


@contextmanager
def decode_kernels(llm, on: bool, parts: tuple[str, ...] = KERNELS):
    """The decode step with the CUDA kernels off, or on with only `parts` of them (the others as MLX ops)."""
    saved = {name: getattr(cuda_kernels, name) for name in KERNELS}
    os.environ["FUNASR_NANO_KERNELS"] = "1" if on else "0"
    for name in KERNELS:
        if name not in parts:
            setattr(cuda_kernels, name, getattr(cuda_kernels, f"{name}_ops"))
    llm.__dict__.pop("_greedy_step", None)  # traced again under these kernels
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(cuda_kernels, name, function)
        os.environ.pop("FUNASR_NANO_KERNELS", None)
        llm.__dict__.pop("_greedy_step", None)


# Cumulative: the compiled step over preallocated buffers needs the attention kernel; the others add to it.
DECODE_VARIANTS = {
    "mlx-lm cache, kernels off": (False, ()),
    "compiled step + attention kernel": (True, ()),
    "+ q/k norm and RoPE kernel": (True, ("qk_norm_rope",)),
    "+ add and RMSNorm kernel (all)": (True, KERNELS),
}


def decode_one(model, embeddings, tokens: int, label: str) -> None:
    """One clip's greedy decoding under each variant: ms/token, the host's share, tokens against the first."""
    reference = None
    for name, (on, parts) in DECODE_VARIANTS.items():
        with decode_kernels(model.llm, on, parts):
            greedy_batch(model.llm, [embeddings], [8], [], stop_loops=False)  # warm-up, traces
            runs = []
            for _ in range(3):
                timings: dict = {}
                result = greedy_batch(model.llm, [embeddings], [tokens], [], stop_loops=False, timings=timings)
                runs.append(1e3 * timings["decode"] / timings["decode_steps"])
            ids = result[0].token_ids
            reference = ids if reference is None else reference
            same = sum(a == b for a, b in zip(reference, ids))
            report(
                stage="decode batch 1",
                label=label,
                variant=name,
                ms_per_token=statistics.median(runs),
                runs=runs,
                same_tokens=same,
                of=len(reference),
            )
            host_share(model, embeddings, tokens, label, name)


def host_share(model, embeddings, tokens: int, label: str, variant: str) -> None:
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
        variant=variant,
        decoder=type(decoder).__name__,
        build_ms=1e3 * build / tokens,
        submit_ms=1e3 * submit / tokens,
        step_ms=1e3 * total / tokens,
    )


def decode_batched(model, embeddings, tokens: int, label: str) -> None:
    """Batches of 8 and 32 rows (left-padded: the rows' prompts differ in length), kernels off and on."""
    for batch in (8, 32):
        rows = [embeddings[: embeddings.shape[0] - 7 * (i % 4)] for i in range(batch)]
        reference = None
        for on in (False, True):
            with decode_kernels(model.llm, on):
                greedy_batch(model.llm, rows, [tokens // 2] * batch, [], stop_loops=False)  # traces
                timings: dict = {}
                result = greedy_batch(model.llm, rows, [tokens // 2] * batch, [], stop_loops=False, timings=timings)
            ids = [r.token_ids for r in result]
            reference = ids if reference is None else reference
            same = sum(a == b for ref, row in zip(reference, ids) for a, b in zip(ref, row))
            report(
                stage=f"decode batch {batch}",
                label=label,
                kernels=on,
                ms_per_step=1e3 * timings["decode"] / timings["decode_steps"],
                same_tokens=same,
                of=sum(len(r) for r in reference),
            )


def kernel_agreement(model, label: str) -> None:
    """Each kernel against the MLX ops it replaces, on random bf16 inputs at the model's shapes: the
    largest difference, and the share of outputs that are bit-identical."""
    from funasr_nano_mlx.decode_step import _StepCache

    mx.random.seed(0)
    layer = model.llm.model.layers[0]
    attention, dtype = layer.self_attn, mx.bfloat16
    heads, kv_heads, dims = attention.n_heads, attention.n_kv_heads, attention.rope.dims
    batch = 4

    def compare(name, kernel_out, ops_out):
        for i, (a, b) in enumerate(zip(kernel_out, ops_out)):
            a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
            report(
                stage="kernel vs ops",
                label=label,
                kernel=name,
                output=i,
                max_abs_diff=float(np.abs(a - b).max()),
                max_abs=float(np.abs(b).max()),
                identical_share=float((a == b).mean()),
            )

    queries = mx.random.normal((batch, heads, 1, dims)).astype(dtype)
    keys, values = (mx.random.normal((batch, kv_heads, 512, dims)).astype(dtype) for _ in range(2))
    first, last = mx.array([0, 3, 17, 100], mx.int32), mx.array([300], mx.int32)
    cache = _StepCache(keys, values, last, None, first, 384)
    kernel_out = cuda_kernels.decode_attention(queries, keys, values, first, last, attention.scale)
    os.environ["FUNASR_NANO_KERNELS"] = "0"
    ops_out = cache.attend(queries, attention.scale)
    os.environ.pop("FUNASR_NANO_KERNELS")
    compare("decode_attention", [kernel_out], [ops_out])

    qkv = mx.random.normal((batch, 1, (heads + 2 * kv_heads) * dims)).astype(dtype) * 3
    positions = mx.array([0, 5, 300, 40000], mx.int32)
    args = (qkv, attention.q_norm, attention.k_norm, attention.rope, positions, heads, kv_heads)
    compare("qk_norm_rope", cuda_kernels.qk_norm_rope(*args), cuda_kernels.qk_norm_rope_ops(*args))

    x, residual = (mx.random.normal((batch, 1, layer.mlp.down_proj.weight.shape[0])).astype(dtype) for _ in range(2))
    norm = layer.post_attention_layernorm
    compare(
        "add_rms_norm", cuda_kernels.add_rms_norm(x, residual, norm), cuda_kernels.add_rms_norm_ops(x, residual, norm)
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
    if cuda_kernels.enabled(embeddings.dtype):
        kernel_agreement(model, args.label)
    decode_one(model, embeddings, args.tokens, args.label)
    if not args.quick:
        decode_batched(model, embeddings, args.tokens, args.label)


if __name__ == "__main__":
    main()
