"""What fewer, larger kernels buy: each candidate measured against what it replaces, in one process.

    python bench/kernels.py MODEL_DIR [--seconds 10] [--tokens 128] [--label L] [--quick]

One JSON line per measurement (warm medians, ms):

- encoder + adaptor for one clip of --seconds, compiled, evaluated at this build's cadence (the layers
  per evaluation that `model.encoder_layers_per_eval` picks for the input), every 10 layers (the fixed
  cadence of earlier builds) and as one graph, whether the three give identical numbers, and how long
  the host takes to build and submit each (submit_ms) against the whole pass (an FSMN block written as
  shifted sums was measured here and rejected: BENCHMARKS.md);
- on CUDA, each decode kernel of `funasr_nano_mlx.cuda_kernels` against the MLX ops it replaces, on
  random inputs at the model's shapes, the projections with the model's first layer (largest
  difference, share bit-identical; attention also against MLX's own one-query kernel on exact slots
  and a float64 reference);
- greedy decoding, one clip, under each of DECODE_VARIANTS (mlx-lm's cache; the compiled step with
  masked MLX attention, with the attention kernel, with the q/k kernel too, with the projection
  kernels too: each layer in 6 kernels), interleaved over rounds so that a host's drift hits all
  alike: ms/token, the host's share of a step (building the graph and submitting it), and agreement
  with mlx-lm's tokens, free-running and teacher-forced, with mlx-lm's top-2 logit gap at the steps
  that differ;
- batched decoding (8 and 32 left-padded rows, compiled step): kernels off and on, the same.

`--quick` leaves out the batches (for process-wide settings such as MLX_MAX_OPS_PER_BUFFER or
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

from funasr_nano_mlx import cuda_kernels, decode_step, load, model as model_module  # noqa: E402
from funasr_nano_mlx.audio import features  # noqa: E402
from funasr_nano_mlx.decode_step import StaticDecoder, make_decoder, output_head  # noqa: E402
from funasr_nano_mlx.transcribe import prefill, prompt_inputs  # noqa: E402


KERNELS = ("step_heads",)  # cuda_kernels' functions a variant may swap for their `_ops` twin
PROJECTIONS = "projections"  # the projection kernels: each layer of one row in 6 kernels (decode_step.projections_fit)


def report(**row) -> None:
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def warm_ms(run, repeat: int) -> tuple[float, float]:
    """Medians over `repeat` synchronous calls of `run` after a warm-up one, ms: until its arrays are
    computed, and until they are submitted (the host's share: building the graph, queuing its kernels)."""
    walls, submits = [], []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        out = run()
        mx.async_eval(out)
        submitted = time.perf_counter()
        mx.eval(out)
        walls.append(1e3 * (time.perf_counter() - start))
        submits.append(1e3 * (submitted - start))
    return statistics.median(walls[1:]), statistics.median(submits[1:])


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
            warm, submit = warm_ms(lambda: model.encode(feats), 10)
            outputs[cadence] = np.array(model.encode(feats))
        finally:
            model_module.encoder_layers_per_eval = chosen
        report(
            stage="encoder+adaptor",
            label=label,
            cadence=cadence,
            layers_per_eval=min(per_eval, depth),
            warm_ms=warm,
            submit_ms=submit,
        )
    first, *others = outputs.values()
    report(
        stage="encoder+adaptor, cadences compared",
        label=label,
        identical=all(bool((first == other).all()) for other in others),
    )


@contextmanager
def decode_kernels(llm, on: bool, parts: tuple[str, ...] = KERNELS, traced: dict | None = None, name: str = ""):
    """The decode step with the CUDA kernels off, or on with only `parts` of them (the others as MLX ops).
    `traced` keeps each variant's compiled step (under `name`), so that variants can be interleaved."""
    traced = {} if traced is None else traced
    saved = {kernel: getattr(cuda_kernels, kernel) for kernel in KERNELS}
    projections_fit = decode_step.projections_fit
    if PROJECTIONS not in parts:
        decode_step.projections_fit = lambda *_: False
    setting = os.environ.get("FUNASR_NANO_KERNELS")
    os.environ["FUNASR_NANO_KERNELS"] = "1" if on else "0"
    for kernel in KERNELS:
        if kernel not in parts:
            setattr(cuda_kernels, kernel, getattr(cuda_kernels, f"{kernel}_ops"))
    llm.__dict__.pop("_greedy_step", None)
    if name in traced:
        object.__setattr__(llm, "_greedy_step", traced[name])
    try:
        yield
    finally:
        if "_greedy_step" in llm.__dict__:
            traced[name] = llm.__dict__.pop("_greedy_step")
        for kernel, function in saved.items():
            setattr(cuda_kernels, kernel, function)
        decode_step.projections_fit = projections_fit
        restore_setting(setting)


def restore_setting(setting: str | None) -> None:
    if setting is None:
        os.environ.pop("FUNASR_NANO_KERNELS", None)
    else:
        os.environ["FUNASR_NANO_KERNELS"] = setting


# Cumulative: the compiled step over preallocated buffers needs the attention kernel; the others add to it.
DECODE_VARIANTS = {
    "mlx-lm cache, kernels off": (False, ()),
    "compiled step, kernels off (masked MLX attention)": (False, ()),
    "compiled step, attention kernel": (True, ()),
    "compiled step, attention and q/k norm + RoPE kernels": (True, KERNELS),
    "compiled step, all kernels (projections too)": (True, (*KERNELS, PROJECTIONS)),
}


def prefilled(llm, rows: list[mx.array], wait: bool = True):
    """transcribe.prefill's caches, padding and first tokens (computed, or with `wait=False` still lazy)."""
    cache, padding, tokens = prefill(llm, rows)
    if wait:
        mx.eval(tokens)
    return cache, padding, tokens


def decoder_for(llm, variant: str, cache, padding):
    if variant.startswith("compiled step"):  # for one row too
        return StaticDecoder(llm, cache, padding)
    return make_decoder(llm, cache, padding)


def teacher_forced(llm, variant: str, rows: list[mx.array], reference: list[list[int]]) -> list[list[bool]]:
    """Feed every row the reference's tokens; per step and row, whether the argmax is the reference's next
    token: agreement that one early difference cannot turn into a different sequence."""
    cache, padding, _ = prefilled(llm, rows)
    decoder = decoder_for(llm, variant, cache, padding)
    agree = []
    for step in range(len(reference[0]) - 1):
        out = decoder.step(mx.array([ids[step] for ids in reference], mx.int32)).tolist()
        agree.append([a == ids[step + 1] for a, ids in zip(out, reference)])
    return agree


def reference_margins(llm, rows: list[mx.array], reference: list[list[int]]) -> np.ndarray:
    """Per step and row, teacher-forced through mlx-lm's cache: the bf16 logits' gap between the largest
    and the second largest, in units of the bf16 spacing at the largest (0: a tie, broken by index).
    With random weights the logits are flat, so a step whose gap is a unit or two can flip on any
    change of rounding order."""
    cache, _, _ = prefilled(llm, rows)
    head = output_head(llm)
    gaps = []
    for step in range(len(reference[0]) - 1):
        tokens = mx.array([[ids[step]] for ids in reference], mx.int32)
        hidden = llm.model(tokens, cache=cache)
        logits = np.array(head(hidden)[:, -1].astype(mx.float32))
        top = np.sort(logits, axis=-1)[:, -2:]
        spacing = np.spacing(np.abs(top[:, 1]).astype(np.float32)) * 2**16  # bf16 keeps 8 of float32's 24 bits
        gaps.append((top[:, 1] - top[:, 0]) / spacing)
    return np.array(gaps)


def run_greedy(llm, variant: str, rows: list[mx.array], tokens: int) -> tuple[list[list[int]], float, float]:
    """Free-running greedy tokens per row, ms from the prefill's start to the first tokens (as
    transcribe.greedy_batch times its prefill: the decoder made and its first step queued on the way),
    and ms per step after that; the loop of greedy_batch (the next step queued before the current
    tokens are read), with a decoder of this variant."""
    start = time.perf_counter()
    cache, padding, token = prefilled(llm, rows, wait=False)
    decoder = decoder_for(llm, variant, cache, padding)
    ids = [[] for _ in rows]
    for step in range(tokens):
        next_token = decoder.step(token)
        mx.async_eval(next_token)
        for row, value in zip(ids, token.tolist()):
            row.append(value)
        if step == 0:
            first, start = time.perf_counter() - start, time.perf_counter()
        token = next_token
    return ids, 1e3 * first, 1e3 * (time.perf_counter() - start) / (tokens - 1)


def decode_variants(model, rows: list[mx.array], tokens: int, label: str, variants: dict, rounds: int = 5) -> None:
    """Each variant in turn, `rounds` times (the first a warm-up that traces), so that a host's drift hits
    all alike: median ms per step, the host's share (one row), and agreement with the first variant,
    free-running and teacher-forced."""
    llm, traced, reference = model.llm, {}, None
    times, firsts = {name: [] for name in variants}, {name: [] for name in variants}
    for round_ in range(rounds):
        for name, (on, parts) in variants.items():
            with decode_kernels(llm, on, parts, traced, name):
                ids, first_ms, ms = run_greedy(llm, name, rows, tokens)
            if round_ > 0:
                times[name].append(ms)
                firsts[name].append(first_ms)
            reference = ids if reference is None else reference
    gaps = reference_margins(llm, rows, reference)  # through mlx-lm's caches, whatever the first variant
    for name, (on, parts) in variants.items():
        with decode_kernels(llm, on, parts, traced, name):
            ids, _, _ = run_greedy(llm, name, rows, tokens)
            free = sum(a == b for ref, row in zip(reference, ids) for a, b in zip(ref, row))
            agree = np.array(teacher_forced(llm, name, rows, reference))
            report(
                stage=f"decode batch {len(rows)}",
                label=label,
                variant=name,
                ms_per_step=statistics.median(times[name]),
                runs=times[name],
                prefill_to_first_tokens_ms=statistics.median(firsts[name]),
                same_tokens_free=free,
                of_free=sum(len(ref) for ref in reference),
                same_next_token_forced=int(agree.sum()),
                of_forced=int(agree.size),
                # the reference's top-2 gap (bf16 spacings) where this variant chose another token
                gaps_where_different=sorted(round(float(g), 2) for g in gaps[~agree]),
                median_gap=float(np.median(gaps)),
            )
            if len(rows) == 1:
                host_share(model, rows[0], tokens, label, name)


def synchronous_steps(decoder, token: mx.array, steps: int) -> dict:
    """Per synchronous step, ms: building the graph (Python, or replaying the compiled trace), submitting
    it (MLX encodes the kernels), the whole step."""
    build = submit = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        token = decoder.step(token)
        t1 = time.perf_counter()
        mx.async_eval(token)
        t2 = time.perf_counter()
        build, submit = build + t1 - t0, submit + t2 - t1
        mx.eval(token)
    total = time.perf_counter() - start
    return {"build_ms": 1e3 * build / steps, "submit_ms": 1e3 * submit / steps, "step_ms": 1e3 * total / steps}


def host_share(model, embeddings, tokens: int, label: str, variant: str) -> None:
    llm = model.llm
    cache, padding, token = prefilled(llm, [embeddings])
    decoder = decoder_for(llm, variant, cache, padding)
    report(
        stage="decode batch 1 host share (synchronous steps)",
        label=label,
        variant=variant,
        decoder=type(decoder).__name__,
        **synchronous_steps(decoder, token, tokens),
    )


def decode_batched(model, embeddings, tokens: int, label: str) -> None:
    """Batches of 8 and 32 rows (left-padded: the rows' prompts differ in length), kernels off and on."""
    variants = {
        "compiled step, kernels off (masked MLX attention)": (False, ()),
        "compiled step, attention and q/k norm + RoPE kernels": (True, KERNELS),
    }
    for batch in (8, 32):
        rows = [embeddings[: embeddings.shape[0] - 7 * (i % 4)] for i in range(batch)]
        decode_variants(model, rows, tokens // 2, label, variants, rounds=3)


def attention_truth(queries, keys, values, first: list[int], last: int, scale: float) -> np.ndarray:
    """Attention in float64 (numpy) over each row's slots first[row]..last, grouped query heads."""
    q, k, v = (np.array(a.astype(mx.float32)).astype(np.float64) for a in (queries, keys, values))
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for row, lo in enumerate(first):
        for head in range(q.shape[1]):
            kk, vv = k[row, head // group, lo : last + 1], v[row, head // group, lo : last + 1]
            scores = kk @ (q[row, head, 0] * scale)
            weights = np.exp(scores - scores.max())
            out[row, head, 0] = weights @ vv / weights.sum()
    return out


def causal_truth(queries, keys, values, scale: float) -> np.ndarray:
    """Causal attention of one prompt in float64: queries (1, HQ, L, D), keys and values (1, HKV, L, D);
    returns (1, L, HQ D), the layout `cuda_kernels.prompt_attention` writes."""
    q, k, v = (np.array(a.astype(mx.float32)).astype(np.float64)[0] for a in (queries, keys, values))
    heads, length, _ = q.shape
    k, v = (np.repeat(a, heads // a.shape[0], axis=0) for a in (k, v))
    scores = np.einsum("hld,hmd->hlm", q * scale, k)
    scores[:, np.triu_indices(length, 1)[0], np.triu_indices(length, 1)[1]] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    context = np.einsum("hlm,hmd->hld", weights / weights.sum(axis=-1, keepdims=True), v)
    return context.transpose(1, 0, 2).reshape(1, length, -1)


def encoder_kernel_agreement(model, label: str, frames: int = 167) -> None:
    """Each encoder kernel (the FSMN block, the attention) against the MLX ops it replaces (a pad and
    cuDNN's convolution; matmuls and a softmax, in float32), in float32 and bf16, one clip and a padded
    batch (rows of frames, 100 and 5 valid frames), on random inputs at the encoder's shapes; and both
    against float64: the largest difference, the share of identical outputs, the largest errors. The
    attention is compared on the valid query frames only (a padded frame's context is discarded)."""
    attention = model.audio_encoder.encoders[0].self_attn
    width = attention.linear_q_k_v.weight.shape[0]
    cases = {  # kernel -> (its arguments from a projection and a mask, its float64 truth, valid frames only)
        "fsmn_memory": (
            lambda qkv, mask: (qkv, attention.fsmn_block.weight.astype(qkv.dtype), attention.left_pad, mask),
            fsmn_truth,
            False,
        ),
        "frame_attention": (lambda qkv, mask: (2 * qkv, attention.heads, mask), frame_attention_truth, True),
    }
    for name, (arguments, truth_of, valid_only) in cases.items():
        kernel, twin = getattr(cuda_kernels, name), getattr(cuda_kernels, f"{name}_ops")
        mx.random.seed(0)
        for dtype in (mx.float32, mx.bfloat16):
            for lengths in ([frames], [frames, 100, 5]):
                qkv = mx.random.normal((len(lengths), frames, width)).astype(dtype)
                mask = model_module.frame_mask(mx.array(lengths), frames, dtype) if len(lengths) > 1 else None
                args = arguments(qkv, mask)
                a, b = (np.array(f(*args).astype(mx.float32)) for f in (kernel, twin))
                truth = truth_of(*args)
                valid = np.arange(frames)[None, :] < np.array(lengths)[:, None]
                keep = valid if valid_only else np.ones_like(valid)
                report(
                    stage="kernel vs ops",
                    label=label,
                    kernel=f"{name}, {dtype}, rows {len(lengths)}",
                    max_abs_diff=float(np.abs(a - b)[keep].max()),
                    max_abs=float(np.abs(b).max()),
                    identical_share=float((a == b)[keep].mean()),
                    kernel_max_abs_error=float(np.abs(a - truth)[keep].max()),
                    ops_max_abs_error=float(np.abs(b - truth)[keep].max()),
                )


CROSSOVER_SHAPES = ((1, 167), (1, 500), (1, 1000), (4, 167), (8, 300), (32, 300))  # (rows, frames)


def frame_attention_crossover(model, label: str) -> None:
    """Encoder + adaptor with SAN-M's attention as MLX ops and as `cuda_kernels.frame_attention`, at
    CROSSOVER_SHAPES (random features, every row full length), warm medians: where the kernel's
    frames-squared work stops paying for its fewer launches (FRAME_ATTENTION_MAX_WORK bounds rows x frames^2)."""
    chosen, bound = cuda_kernels.frame_attention_chosen, cuda_kernels.FRAME_ATTENTION_MAX_WORK
    mx.random.seed(0)
    for rows, frames in CROSSOVER_SHAPES:
        feats = mx.random.normal((rows, frames, model.args.input_size))
        lengths = mx.array([frames] * rows) if rows > 1 else None
        times = {}
        for name, on in (("ops", False), ("kernel", True)):
            cuda_kernels.frame_attention_chosen = lambda on=on: on
            cuda_kernels.FRAME_ATTENTION_MAX_WORK = rows * frames * frames
            model_module.compiled_layer.cache_clear()
            try:
                times[name] = warm_ms(lambda: model.encode(feats, lengths), 5)[0]
            finally:
                cuda_kernels.frame_attention_chosen, cuda_kernels.FRAME_ATTENTION_MAX_WORK = chosen, bound
        model_module.compiled_layer.cache_clear()
        report(
            stage="frame attention crossover",
            label=label,
            rows=rows,
            frames=frames,
            ops_ms=times["ops"],
            kernel_ms=times["kernel"],
            kernel_over_ops=times["kernel"] / times["ops"],
        )


def frame_attention_truth(qkv, heads: int, mask) -> np.ndarray:
    """SAN-M's attention in float64 (numpy), the query scaled as the model scales it (in its dtype), over
    each row's valid key frames (a mask's leading ones, as `model.frame_mask` makes them)."""
    batch, frames, width = qkv.shape
    lengths = [frames] * batch if mask is None else np.array(mask.astype(mx.float32)).sum(axis=1).astype(int)
    dims = width // (3 * heads)
    q, k, v = (np.array(t.astype(mx.float32)).astype(np.float64) for t in mx.split(qkv, 3, axis=-1))
    scale = mx.array(dims**-0.5, qkv.dtype)
    q = np.array((mx.array(q.astype(np.float32)).astype(qkv.dtype) * scale).astype(mx.float32)).astype(np.float64)
    out = np.zeros((batch, frames, heads * dims))
    for row, length in enumerate(lengths):
        for head in range(heads):
            part = slice(head * dims, (head + 1) * dims)
            scores = q[row, :, part] @ k[row, :length, part].T
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[row, :, part] = weights @ v[row, :length, part] / weights.sum(axis=1, keepdims=True)
    return out


def fsmn_truth(qkv, weight, left: int, mask) -> np.ndarray:
    """The FSMN memory block in float64 (numpy), from the inputs as given."""
    values = np.array(qkv.astype(mx.float32)).astype(np.float64)[..., 2 * weight.shape[0] :]
    keep = np.ones(values.shape[:2]) if mask is None else np.array(mask.astype(mx.float32)).astype(np.float64)
    values = values * keep[..., None]
    taps = np.array(weight.astype(mx.float32)).astype(np.float64)[:, :, 0]  # (C, K)
    padded = np.pad(values, [(0, 0), (left, taps.shape[1] - 1 - left), (0, 0)])
    frames = values.shape[1]
    memory = sum(padded[:, k : k + frames] * taps[:, k] for k in range(taps.shape[1])) + values
    return memory * keep[..., None]


def kernel_agreement(model, label: str) -> None:
    """Each kernel against the MLX ops it replaces, on random bf16 inputs at the model's shapes: the
    largest difference, and the share of outputs that are bit-identical."""
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
    first, last = [0, 3, 17, 100], 300
    # The kernel reads slot `last` from the step's key and value, not the buffer: there it is left zero.
    buffer = mx.stack([keys, values])
    step_kv = buffer[..., last : last + 1, :]
    unwritten = mx.slice_update(buffer, mx.zeros_like(step_kv), mx.array([last]), axes=(3,))
    # MLX's own kernel for one query (float32 inside, as ours), over each row's exact slots, no mask.
    exact = mx.concatenate(
        [
            mx.fast.scaled_dot_product_attention(
                queries[r : r + 1],
                keys[r : r + 1, :, lo : last + 1],
                values[r : r + 1, :, lo : last + 1],
                scale=attention.scale,
            )
            for r, lo in enumerate(first)
        ]
    )
    truth = attention_truth(queries, keys, values, first, last, attention.scale)
    error = np.abs(np.array(exact.astype(mx.float32)) - truth)
    report(
        stage="decode_attention vs float64",
        label=label,
        kernel="MLX's",
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
    )
    shipped = cuda_kernels.ATTENTION_WARPS
    for warps in sorted({shipped, 32}):  # the order of the sums depends on the warps a block
        cuda_kernels.ATTENTION_WARPS = warps
        kernel_out = cuda_kernels.decode_attention(
            queries, unwritten, step_kv, mx.array(first, mx.int32), mx.array([last], mx.int32), attention.scale
        )
        cuda_kernels.ATTENTION_WARPS = shipped
        compare(f"decode_attention ({warps} warps) vs MLX's kernel on exact slots", [kernel_out], [exact])
        error = np.abs(np.array(kernel_out.astype(mx.float32)) - truth)
        report(
            stage="decode_attention vs float64",
            label=label,
            kernel=f"ours, {warps} warps",
            max_abs_error=float(error.max()),
            mean_abs_error=float(error.mean()),
        )

    qkv = mx.random.normal((batch, 1, (heads + 2 * kv_heads) * dims)).astype(dtype) * 3
    positions = mx.array([0, 5, 300, 40000], mx.int32)
    args = (qkv, attention.q_norm, attention.k_norm, attention.rope, positions, heads, kv_heads)
    compare("step_heads", cuda_kernels.step_heads(*args), cuda_kernels.step_heads_ops(*args))
    # The heads and the attention in one kernel (one clip's step) against the two kernels it joins: identical.
    slots = (unwritten, mx.array(first, mx.int32), mx.array([last], mx.int32))
    separate_queries, separate_kv = cuda_kernels.step_heads(*args)
    separate = (cuda_kernels.decode_attention(separate_queries, unwritten, separate_kv, *slots[1:], attention.scale),)
    joined = cuda_kernels.step_attention(*args[:5], *slots, heads, kv_heads, attention.scale)
    compare("step_attention vs step_heads + decode_attention", joined, (*separate, separate_kv))
    # One clip's write of every layer's step key and value (a copy of the buffer) against MLX's stack and write.
    layers = mx.random.normal((6, 2, 1, kv_heads, 256, dims)).astype(dtype)
    parts = [mx.random.normal((2, 1, kv_heads, 1, dims)).astype(dtype) for _ in range(6)]
    for slot in (mx.array([0], mx.int32), mx.array([201], mx.int32)):
        written = cuda_kernels.write_step_kv(layers, parts, slot)
        compare(
            "write_step_kv vs stack + slice_update", [written], [cuda_kernels.write_step_kv_ops(layers, parts, slot)]
        )
    # A prompt's heads as prompt_attention computes them (each token a row of step_heads) against MLX's rope
    # and norms over the sequence, as its ops twin does (their CUDA kernels take another path for L > 1).
    prompt = mx.random.normal((1, 60, qkv.shape[-1])).astype(dtype) * 3
    args = (prompt, attention.q_norm, attention.k_norm, attention.rope, 0, heads, kv_heads)
    queries, keys = cuda_kernels.qk_norm_rope_ops(*args)
    sequence = (queries, keys, cuda_kernels.value_heads(prompt, heads, kv_heads, dims))
    row_queries, row_kv = cuda_kernels.prompt_token_heads(prompt, *args[1:4], heads, kv_heads)
    kernel_heads = (row_queries.transpose(2, 1, 0, 3), *cuda_kernels.prompt_cache_views(row_kv))
    compare("prompt heads (60 tokens as step_heads rows)", kernel_heads, sequence)
    # The prompt's causal attention in one kernel (from step_heads' rows) against MLX's path (cuDNN's attention
    # on a GPU), and each against float64 from its own queries, keys and values (step_heads' and MLX's rope and
    # norms' may differ in rounding; on an H200 they were identical).
    args = (prompt, attention.q_norm, attention.k_norm, attention.rope, heads, kv_heads, attention.scale)
    kernel_out, ops_out = cuda_kernels.prompt_attention(*args), cuda_kernels.prompt_attention_ops(*args)
    compare("prompt_attention (60 tokens)", kernel_out[:1], ops_out[:1])
    for name, out, inputs in (("ours", kernel_out[0], kernel_heads), ("MLX's", ops_out[0], sequence)):
        error = np.abs(np.array(out.astype(mx.float32)) - causal_truth(*inputs, attention.scale))
        report(stage="prompt_attention vs float64", label=label, kernel=name, max_abs_error=float(error.max()))

    embedding = model.llm.model.embed_tokens
    if cuda_kernels.embedding_fits(embedding, dtype):  # a 4-bit model's embedding rows, dequantized in one kernel
        tokens = mx.array([0, 7, 151643, embedding.weight.shape[0] - 1], mx.int32)
        compare(
            "embed_affine",
            [cuda_kernels.embed_affine(tokens, embedding)],
            [cuda_kernels.embed_affine_ops(tokens, embedding)],
        )
    if not decode_step.projections_fit(model.llm, 1, dtype):
        report(stage="kernel vs ops", label=label, kernel="projections", skipped="the layers do not fit")
        return
    first_layer = decode_step.projection_calls(model.llm)[:4]  # as _layer_in_kernels makes them
    for trial in range(3):
        hidden = mx.random.normal((1, 1, model.llm.args.hidden_size)).astype(dtype) * (1 + 4 * trial)
        for (mode, linear, k, norm), part in zip(first_layer, ("q/k/v", "o", "gate/up", "down")):
            if norm is None:  # the residual add: x is the attention's or the MLP's output
                args = (mx.random.normal((1, 1, k)).astype(dtype), linear, hidden)
            else:
                args = (hidden, norm, linear)
            kernel, twin = getattr(cuda_kernels, mode), getattr(cuda_kernels, f"{mode}_ops")
            compare(f"{mode} ({part})", [kernel(*args)], [twin(*args)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agreement-only", action="store_true", help="only the LLM kernels against their MLX ops")
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    if args.agreement_only:
        kernel_agreement(model, args.label)
        return
    feats = mx.array(features(synthetic_audio(args.seconds)))[None]
    encoder_variants(model, feats, args.label)
    embeddings = prompt_inputs(model, tokenizer, model.encode(feats)[0])[1]
    if cuda_kernels.available():
        encoder_kernel_agreement(model, args.label)
        frame_attention_crossover(model, args.label)
    if cuda_kernels.enabled(embeddings.dtype):
        kernel_agreement(model, args.label)
    else:
        report(
            stage="kernel vs ops",
            label=args.label,
            skipped="the CUDA kernels are off here (not a CUDA GPU, or not bf16)",
        )
    decode_variants(model, [embeddings], args.tokens, args.label, DECODE_VARIANTS)
    if not args.quick:
        decode_batched(model, embeddings, args.tokens, args.label)


if __name__ == "__main__":
    main()
