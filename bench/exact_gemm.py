"""Can a float32 matmul kernel of our own give cuBLAS's numbers bit for bit at the encoder's shapes?

    python bench/exact_gemm.py [--linear-rows 17 50 ...] [--timing-frames 17 167 ...] [--stage-k 64 32]
                               [--no-attention-sweep] [--frames 167 500]
                               [--model MODEL_DIR [--seconds 10 30 3]]

The encoder's float32 path is exact by contract, and much of its host time is cuBLAS: MLX builds a cublasLt
descriptor and asks its heuristic at every call, then captures the call into the CUDA graph
(mlx/backend/cuda/gemms/cublas_gemm.cpp, cublas_utils.cpp: 17-24 us of host a matmul against 3-4 for a
custom kernel, BENCHMARKS.md). A kernel of our own is cheaper to launch and can read q, k and v where the
fused projection left them (MLX copies them first), but it may replace cuBLAS only if it gives the same
numbers. cuBLAS's SIMT float32 kernels (no TF32: funasr_nano_mlx sets MLX_ENABLE_TF32=0) keep one
accumulator per output and add the products in k order, unless the heuristic splits k over blocks
(split-K), whose partial sums are then added in some order. So for each of the encoder's matmuls (the four
projections with their bias, the attention's two products) at each --frames, this compares MLX's result
with:
- one fma chain over ascending k;
- k split into S runs whose partial sums are added in order (split-K);
- k's tiles of 8 dealt in turn to W parts, added in order (what cuBLAS's split-K kernels turned out to do).
It names the kernels cuBLAS ran (`step_profile.cupti_kernels`, where torch has CUDA) and, for the linears,
the configuration cuBLASLt's heuristic gives MLX (funasr_nano_mlx.cublas_heuristic: SPLITK_NUM against W). The
package's kernels for the attention's products (`cuda_kernels.attention_scores`, `attention_context`), one
chain per output, are checked against the chain and MLX and timed against MLX's call (70 calls submitted at
once, as the encoder's layers are). One JSON line per shape.

Before that, two sweeps: the package's `cuda_kernels.split_linear` with the heuristic's SPLITK_NUM against MLX's
linear at each of the encoder's linear shapes over --linear-rows (`linear_sweep`) and the product kernels' time
at --timing-frames (`attention_timing`), each at every --stage-k; then the attention in the product kernels
against MLX's up to SWEEP_WORK rows x frames^2 (`attention_sweep`). With --model, the encoder +
adaptor with the product and linear kernels off and on (VARIANTS): the same numbers or not, and how fast.
Needs a CUDA GPU.
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
import mlx.nn as nn
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import funasr_nano_mlx  # noqa: E402,F401  (sets MLX_ENABLE_TF32=0 before MLX's first matmul)
from funasr_nano_mlx import cublas_heuristic, cuda_kernels  # noqa: E402
from kernels import warm_ms  # noqa: E402
from step_profile import cupti_kernels  # noqa: E402

HEADS, HEAD_DIM, WIDTH, HIDDEN, FEATS = 4, 128, 512, 2048, 560  # the encoder's (model.EncoderArgs; LFR's 560)
# (name, k, n) of the encoder's linear layers: q/k/v of the first layer and of the others, output, FFN up and down
LINEARS = (("qkv0", FEATS, 3 * WIDTH), ("qkv", WIDTH, 3 * WIDTH), ("out", WIDTH, WIDTH), ("ffn1", WIDTH, HIDDEN),
           ("ffn2", HIDDEN, WIDTH))  # fmt: skip

# out[z, h, m, n] = sum over k in part z of a[h, m, k] * b[h, n, k], one fma chain in ascending k. Operands
# are addressed by strides (template constants): a[A_OFF + h * A_BATCH + m * A_ROW + k * A_K], b likewise.
_CHAIN = """
  const size_t index = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int z = blockIdx.y, h = blockIdx.z, parts = gridDim.y;
  const int CHUNK = chunk_shape[0];  // read from a shape, so that trying another chunk compiles nothing
  if (index >= (size_t)M * N) {
    return;
  }
  const int m = index / N, n = index % N;
  const float* pa = a + A_OFF + (size_t)h * A_BATCH + (size_t)m * A_ROW;
  const float* pb = b + B_OFF + (size_t)h * B_BATCH + (size_t)n * B_ROW;
  float acc = 0.0f;
#if SLICED
  // Part z: the k whose group of CHUNK (k / CHUNK) is z modulo the parts (k tiles dealt out in turn).
  for (int k = z * CHUNK; k < K; ++k) {
    if ((k / CHUNK) % parts != z) {
      continue;
    }
#else
  // Part z: the z-th run of CHUNK consecutive k (blocks splitting k).
  for (int k = z * CHUNK; k < min(K, (z + 1) * CHUNK); ++k) {
#endif
    acc = __fmaf_rn(pa[(size_t)k * A_K], pb[(size_t)k * B_K], acc);
  }
  out[((size_t)z * gridDim.z + h) * M * N + index] = acc;
"""


def linear_layout(k: int) -> dict:
    """Strides of a linear layer's operands for `chain`: a = x (M, K), b = the weight (N, K), both row-major."""
    return dict(A_OFF=0, A_BATCH=0, A_ROW=k, A_K=1, B_OFF=0, B_BATCH=0, B_ROW=k, B_K=1)


def layout(kind: str, frames: int) -> dict:
    """Strides of the attention's operands as the encoder's arrays hold them. Scores: a = q, b = k, both heads of
    the fused projection (frames, 3C). Context: a = the weights (heads, frames, frames), b = v of the fused
    projection, read down its frames."""
    c3 = 3 * WIDTH
    if kind == "scores":
        return dict(A_OFF=0, A_BATCH=HEAD_DIM, A_ROW=c3, A_K=1, B_OFF=WIDTH, B_BATCH=HEAD_DIM, B_ROW=c3, B_K=1)
    if kind == "context":
        a_batch = frames * frames
        return dict(A_OFF=0, A_BATCH=a_batch, A_ROW=frames, A_K=1, B_OFF=2 * WIDTH, B_BATCH=HEAD_DIM, B_ROW=1, B_K=c3)
    raise ValueError(kind)


def chain(a, b, m: int, n: int, k: int, batch: int, strides: dict, splits: int, chunk: int, sliced=False) -> mx.array:
    """Partial sums (splits, batch, m, n): runs of `chunk` k, or with `sliced` every splits-th group of `chunk`."""
    source = f"#define SLICED {int(sliced)}\n" + _CHAIN
    kernel = mx.fast.cuda_kernel(
        name=f"exact_chain_{int(sliced)}", input_names=["a", "b", "chunk"], output_names=["out"], source=source
    )
    return kernel(
        inputs=[a, b, mx.zeros((chunk,), mx.uint32)],
        template=[("M", m), ("N", n), ("K", k), *strides.items()],
        grid=(-(-m * n // 256) * 256, splits, batch),
        threadgroup=(256, 1, 1),
        output_shapes=[(splits, batch, m, n)],
        output_dtypes=[mx.float32],
    )[0]


def combined(partials: mx.array, bias: mx.array | None, order: str) -> mx.array:
    """Partial sums (S, ...) added in chunk order, the bias last ("bias last") or first ("bias first")."""
    total = bias + partials[0] if (order == "bias first" and bias is not None) else partials[0]
    for part in partials[1:]:
        total = total + part
    return total + bias if (order == "bias last" and bias is not None) else total


def heuristic_config(rows: int, n: int, k: int) -> dict | str:
    """cuBLASLt's algorithm for this linear layer as MLX asks for it (funasr_nano_mlx.cublas_heuristic), or why not."""
    try:
        return cublas_heuristic.linear_algorithm(rows, n, k)
    except (OSError, RuntimeError) as error:
        return str(error)


def per_call_us(run, calls: int = 70, repeat: int = 7) -> float:
    """Wall time per call of `calls` calls submitted together (as the encoder's 70 layers are), median, us."""
    mx.eval(run())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        mx.eval([run() for _ in range(calls)])
        times.append(1e6 * (time.perf_counter() - start) / calls)
    return statistics.median(times)


def cases(frames: int, rng: np.random.Generator):
    """(name, MLX's thunk, the package kernel's thunk or None, operands for the chain) for each of a layer's
    matmuls; the kernel's output in the chain's layout (batch, m, n)."""
    qkv = mx.array(rng.standard_normal((1, frames, 3 * WIDTH), dtype=np.float32))
    for name, k, n in LINEARS:
        x = mx.array(rng.standard_normal((1, frames, k), dtype=np.float32))
        linear = nn.Linear(k, n)
        linear.weight = mx.array(rng.standard_normal((n, k), dtype=np.float32) * k**-0.5)
        linear.bias = mx.array(rng.standard_normal((n,), dtype=np.float32))
        yield (
            name,
            lambda x=x, linear=linear: linear(x),
            None,  # no kernel of ours: cuBLAS splits these products' k (see the probe's identical_share)
            (x, linear.weight, linear.bias, frames, n, k, 1, linear_layout(k)),
        )
    # The attention as MLX's fallback computes it (mlx/fast.cpp, scaled_dot_product_attention): q scaled
    # (the model's scale, then the fallback's 1.0), the products of head-first copies.
    q, key, v = cuda_kernels.frame_heads(qkv, HEADS)
    q = (q * HEAD_DIM**-0.5) * 1.0
    weights = mx.softmax(q @ key.swapaxes(-1, -2), axis=-1, precise=True)
    mx.eval(q, weights)
    scaled = mx.concatenate([q.transpose(0, 2, 1, 3).reshape(1, frames, WIDTH), qkv[..., WIDTH:]], axis=-1)
    yield "scores", (lambda: q @ key.swapaxes(-1, -2)), (lambda: cuda_kernels.attention_scores(qkv, HEADS)), (
        scaled, scaled, None, frames, frames, HEAD_DIM, HEADS, layout("scores", frames))  # fmt: skip
    context = lambda: cuda_kernels.attention_context(weights, qkv).reshape(frames, HEADS, HEAD_DIM).transpose(1, 0, 2)  # noqa: E731
    yield "context", (lambda: weights @ v), context, (weights, qkv, None, frames, HEAD_DIM, frames, HEADS,
                                                      layout("context", frames))  # fmt: skip


def probe(frames: int, rng: np.random.Generator) -> None:
    for name, reference, ours, (a, b, bias, m, n, k, batch, strides) in cases(frames, rng):
        expected = reference()
        mx.eval(expected)
        truth = np.array(expected).reshape(batch, m, n)
        found = {}
        for splits in (2, 3, 4, 6, 8) if name not in ("scores", "context") else ():
            for granule in (8, 16, 32, 64):
                chunk = -(-(-(-k // splits)) // granule) * granule
                if (splits - 1) * chunk >= k:
                    continue
                partials = chain(a, b, m, n, k, batch, strides, splits, chunk)
                for order in ("bias last", "bias first") if bias is not None else ("bias last",):
                    got = np.array(combined(partials, bias, order)).reshape(batch, m, n)
                    found[f"S={splits} chunk={chunk} {order}"] = float(np.mean(got == truth))
        for slices in (2, 3, 4, 5, 6, 7, 8, 12, 16) if name not in ("scores", "context") else ():
            partials = chain(a, b, m, n, k, batch, strides, slices, 8, sliced=True)
            for order in ("bias last", "bias first") if bias is not None else ("bias last",):
                got = np.array(combined(partials, bias, order)).reshape(batch, m, n)
                found[f"sliced W={slices} group=8 {order}"] = float(np.mean(got == truth))
        one_chain = combined(chain(a, b, m, n, k, batch, strides, 1, k), bias, "bias last")
        found[f"S=1 chunk={k} bias last"] = float(np.mean(np.array(one_chain).reshape(batch, m, n) == truth))
        kernel = np.array(ours()).reshape(batch, m, n) if ours else None
        row = {
            "case": name,
            "frames": frames,
            "shape": [batch, m, k, n],
            "identical_share": {key: value for key, value in found.items() if value > 0.5} or max(found.values()),
            "chain_share": found[f"S=1 chunk={k} bias last"],
            "kernel_equals_chain": None
            if ours is None
            else bool((kernel == np.array(one_chain).reshape(batch, m, n)).all()),
            "kernel_share_mlx": None if ours is None else float(np.mean(kernel == truth)),
            "max_abs_diff_chain": float(np.max(np.abs(np.array(one_chain).reshape(batch, m, n) - truth))),
            # MLX's kernels for the matmul, with their us (CUPTI): cuBLAS's names tell split-K and tiles.
            "mlx_kernels": cupti_kernels(reference, 1, top=6).get("heaviest_us_and_launches"),
            "cublas_config": heuristic_config(m, n, k) if ours is None else None,
            "mlx_us_per_call": per_call_us(reference),
            "kernel_us_per_call": per_call_us(ours) if ours else None,
        }
        print(json.dumps(row), flush=True)


SWEEP_WORK = 2**18  # ATTENTION_PRODUCTS_MAX_WORK, raised from 2**17 after this sweep found MLX's numbers up to it
SWEEP = [(1, f) for f in (4, 5, 8, 13, 17, 33, 50, 84, 100, 128, 167, 200, 256, 300, 362, 400, 450, 512)]
SWEEP += [(b, f) for b in (2, 4, 8, 16, 32) for f in (17, 50, 64, 90, 128, 181, 256, 362) if b * f * f <= SWEEP_WORK]


def attention_sweep(cases: list[tuple[int, int]], rng: np.random.Generator) -> None:
    """The attention's product kernels with MLX's softmax (`cuda_kernels.frame_attention_products`) against MLX's
    float32 attention (`frame_attention_ops`) at each (rows, frames) up to SWEEP_WORK rows x frames^2,
    a padded batch's rows masked to 100% down to 50% of the frames: the share of outputs bit-identical; and the
    softmax's weights in the scores' kernel with the memory (`weights_and_memory`, whatever its bound) against MLX's
    scores, softmax and FSMN memory (`weights_and_memory_ops`), and the context from it (`context_and_memory`) against
    MLX's attention, where it takes the shape."""
    taps = mx.array(rng.standard_normal((WIDTH, 11, 1), dtype=np.float32))
    for rows, frames in cases:
        qkv = mx.array(rng.standard_normal((rows, frames, 3 * WIDTH), dtype=np.float32))
        lengths = np.linspace(frames, max(1, frames // 2), rows).astype(int)
        mask = mx.array(np.arange(frames)[None, :] < lengths[:, None], mx.float32) if rows > 1 else None
        ours = np.array(cuda_kernels.frame_attention_products(qkv, HEADS, mask))
        theirs = np.array(cuda_kernels.frame_attention_ops(qkv, HEADS, mask))
        row = {"sweep": "attention products", "rows": rows, "frames": frames}
        row["identical_share"] = float(np.mean(ours == theirs))
        if cuda_kernels.softmax_kernel_takes(frames, WIDTH // HEADS):
            weights = [np.array(a) for a in cuda_kernels.weights_and_memory(qkv, HEADS, taps, 5, mask)]
            expected = [np.array(a) for a in cuda_kernels.weights_and_memory_ops(qkv, HEADS, taps, 5, mask)]
            row["weights_identical_share"] = float(np.mean(weights[0] == expected[0]))
            row["memory_identical_share"] = float(np.mean(weights[1] == expected[1]))
            context = np.array(cuda_kernels.context_and_memory(qkv, HEADS, taps, 5, mask)[0])
            row["context_identical_share"] = float(np.mean(context == theirs))
        print(json.dumps(row), flush=True)


LINEAR_ROWS = (17, 50, 84, 128, 167, 250, 334, 500, 668, 1000, 2000, 4000, 8000, 16000)  # batch x frames


def linear_sweep(rows_list, rng: np.random.Generator) -> None:
    """For each of the encoder's linear layers at each number of rows: the configuration cuBLASLt's heuristic gives
    MLX, and `split_linear` with W = its SPLITK_NUM (at cuda_kernels.STAGE_K["linear"]) against MLX's numbers (share
    identical; wall time per call of 20 submitted together; CUPTI's GPU time per call). Where they differ, the
    interleaved chains with W = 1 to 16 find the W that holds, if any."""
    for rows in rows_list:
        for name, k, n in LINEARS:
            x = mx.array(rng.standard_normal((rows, k), dtype=np.float32))
            weight = mx.array(rng.standard_normal((n, k), dtype=np.float32) * k**-0.5)
            bias = mx.array(rng.standard_normal((n,), dtype=np.float32))
            reference = lambda: mx.addmm(bias, x, weight.T)  # noqa: E731  (nn.Linear's call)
            truth = np.array(reference())
            config = heuristic_config(rows, n, k)
            parts = (config.get("splitk_num") or 1) if isinstance(config, dict) else None  # 0 or 1: k not split
            row = {
                "sweep": "linear",
                "case": name,
                "rows": rows,
                "k": k,
                "n": n,
                "stage_k": cuda_kernels.STAGE_K["linear"],
            }
            row["cublas_config"] = config
            if parts:
                candidate = lambda: cuda_kernels.split_linear(x, weight, bias, parts)  # noqa: E731
                row["split_share_mlx"] = share = float(np.mean(np.array(candidate()) == truth))
                if name == "ffn1":  # the FFN's first layer has relu in the kernel
                    relu = cuda_kernels.split_linear(x, weight, bias, parts, relu=True)
                    row["split_relu_share_mlx"] = float(np.mean(np.array(relu) == np.array(nn.relu(reference()))))
                row.update(timed("split", candidate), **timed("mlx", reference))
                if share < 1.0:
                    row["mlx_kernels"] = cupti_kernels(reference, 1, top=4).get("heaviest_us_and_launches")
                    for slices in range(1, 17):
                        partials = chain(x, weight, rows, n, k, 1, linear_layout(k), slices, 8, sliced=True)
                        if np.array_equal(np.array(combined(partials, bias, "bias last")).reshape(truth.shape), truth):
                            row["w_found"] = slices
                            break
            print(json.dumps(row), flush=True)


def timed(label: str, run) -> dict:
    """`run`'s wall time per call of 20 submitted together and CUPTI's GPU time per call (us), keyed by label."""
    gpu = cupti_kernels(run, 20, top=1).get("gpu_us_per_call")
    return {f"{label}_us_per_call": per_call_us(run, calls=20, repeat=5), f"{label}_gpu_us": gpu}


def attention_timing(frames_list, rng: np.random.Generator) -> None:
    """The attention's two product kernels (at their cuda_kernels.STAGE_K) against MLX's matmuls for one clip of each
    length: identical or not, and `timed`."""
    for frames in frames_list:
        qkv = mx.array(rng.standard_normal((1, frames, 3 * WIDTH), dtype=np.float32))
        weights = mx.softmax(cuda_kernels.attention_scores_ops(qkv, HEADS), axis=-1, precise=True)
        mx.eval(weights)
        scores = (cuda_kernels.attention_scores, cuda_kernels.attention_scores_ops)
        context = (cuda_kernels.attention_context, cuda_kernels.attention_context_ops)
        pairs = {
            "scores": [lambda f=f: f(qkv, HEADS) for f in scores],
            "context": [lambda f=f: f(weights, qkv) for f in context],
        }
        for name, (ours, theirs) in pairs.items():
            row = {"sweep": "attention timing", "case": name, "frames": frames, "stage_k": cuda_kernels.STAGE_K[name]}
            row["identical_share"] = float(np.mean(np.array(ours()) == np.array(theirs())))
            row.update(timed("kernel", ours), **timed("mlx", theirs))
            print(json.dumps(row), flush=True)


# What `encoder_candidate` compares: the encoder's float32 matmuls in cuBLAS (MLX's ops), the attention's products in
# kernels of ours, and its linear layers too (`cuda_kernels.ATTENTION_PRODUCTS`, `EXACT_LINEARS`), with the norms
# after the output and FFN-down layers in their last kernel or in MLX's (`NORM_IN_LINEAR`), the softmax in the scores'
# kernel (up to its bound, or at every length) or MLX's (`SOFTMAX_IN_SCORES`), the context in that kernel too or in its
# own (`CONTEXT_IN_WEIGHTS`), the FSMN memory in the scores' launch or in its own (`SCORES_WITH_MEMORY`).
VARIANTS = {
    "MLX's ops": dict(ATTENTION_PRODUCTS=False, EXACT_LINEARS=False),
    "attention products": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=False),
    "products and linears": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, NORM_IN_LINEAR=True),
    "norms apart": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, NORM_IN_LINEAR=False),
    "softmax apart": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, SOFTMAX_IN_SCORES=False),
    "context apart": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, CONTEXT_IN_WEIGHTS=False),
    "context apart, any length": dict(
        ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, SOFTMAX_IN_SCORES_MAX_WORK=2**40, CONTEXT_IN_WEIGHTS=False
    ),
    "softmax in scores, any length": dict(
        ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, SOFTMAX_IN_SCORES_MAX_WORK=2**40
    ),
    "memory and softmax apart": dict(ATTENTION_PRODUCTS=True, EXACT_LINEARS=True, SCORES_WITH_MEMORY=False),
}


def encoder_candidate(model_dir: Path, seconds: list[float], variants: dict, batch: int = 4) -> None:
    """Encoder + adaptor in each of `variants` (VARIANTS and others: cuda_kernels settings), the bounds
    ATTENTION_PRODUCTS_MAX_WORK and LINEAR_MAX_ROWS lifted for the measurement, alternating: identical output to MLX's
    ops or not, warm ms (median of 10), host ms to submit, CUPTI's GPU time and launches; one clip of each length,
    then a padded batch of `batch` (lengths 100% to 55% of the longest, so the masked kernels run)."""
    from speed import synthetic_audio

    from funasr_nano_mlx import load
    from funasr_nano_mlx.audio import features

    os.environ["FUNASR_NANO_COMPILE"] = "1"
    cuda_kernels.ATTENTION_PRODUCTS_MAX_WORK = cuda_kernels.LINEAR_MAX_ROWS = 2**40  # measured at every size here
    model, _ = load(model_dir)
    inputs = {f"1 x {s:g} s": (mx.array(features(synthetic_audio(s)))[None], None) for s in seconds}
    rows = [features(synthetic_audio(seconds[0] * (1 - 0.15 * i))) for i in range(batch)]
    longest = max(len(r) for r in rows)
    padded = np.stack([np.pad(r, [(0, longest - len(r)), (0, 0)]) for r in rows])
    inputs[f"{batch} x {seconds[0]:g} s, padded"] = (mx.array(padded), mx.array([len(r) for r in rows]))
    defaults = {name: getattr(cuda_kernels, name) for settings in variants.values() for name in settings}
    for name, (feats, lengths) in inputs.items():
        outputs, rows_out = {}, []
        for _ in range(2):  # alternating, so that a host's drift hits all alike
            for variant, settings in variants.items():
                for setting, value in {**defaults, **settings}.items():  # what a variant leaves unnamed is the default
                    setattr(cuda_kernels, setting, value)
                warm, submit = warm_ms(lambda: model.encode(feats, lengths), 10)
                outputs[variant] = np.array(model.encode(feats, lengths))
                kernels = cupti_kernels(lambda: model.encode(feats, lengths), 4, top=12)
                rows_out.append({"input": name, "variant": variant, "warm_ms": warm, "submit_ms": submit, **kernels})
        for setting, value in defaults.items():
            setattr(cuda_kernels, setting, value)
        for row in rows_out:
            print(json.dumps(row), flush=True)
        reference = outputs["MLX's ops"]
        for variant, output in outputs.items():
            same, difference = float((output == reference).mean()), float(np.max(np.abs(output - reference)))
            print(json.dumps({"input": name, "variant": variant, "identical_share": same, "max_abs_diff": difference}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[167, 500], help="frames of the matmul probe")
    parser.add_argument(
        "--model", type=Path, help="also the encoder + adaptor of this model with the kernels off and on"
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 3.0])
    parser.add_argument(
        "--linear-rows", type=int, nargs="*", default=list(LINEAR_ROWS), help="rows of the linear sweep"
    )
    parser.add_argument("--no-attention-sweep", action="store_true", help="leave out the attention's sweep")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help="which of the encoder's VARIANTS to run (MLX's ops always: the others are compared with it)",
    )
    parser.add_argument(
        "--timing-frames", type=int, nargs="*", default=[17, 50, 167, 362], help="frames of the attention's timing"
    )
    parser.add_argument(
        "--stage-k",
        type=int,
        nargs="+",
        default=[0],
        help="k a stage for every kernel (cuda_kernels.STAGE_K) in the linear sweep, the attention's timing and the "
        "encoder; 0: the package's own (the first is kept for the attention's sweep; the others are more variants "
        "of the encoder)",
    )
    args = parser.parse_args()
    if mx.default_device().type != mx.DeviceType.gpu:
        raise SystemExit("exact_gemm.py needs MLX's CUDA backend")

    rng = np.random.default_rng(0)
    own = dict(cuda_kernels.STAGE_K)
    stages = {k: dict.fromkeys(own, k) if k else own for k in args.stage_k}
    for stage_k in reversed(args.stage_k):  # the first last, so that it stays set
        cuda_kernels.STAGE_K = stages[stage_k]
        linear_sweep(args.linear_rows, rng)
        attention_timing(args.timing_frames, rng)
    if not args.no_attention_sweep:
        attention_sweep(SWEEP, rng)
    for frames in args.frames:
        probe(frames, rng)
    if args.model:
        variants = {name: VARIANTS[name] for name in VARIANTS if name in {"MLX's ops", *args.variants}}
        for stage_k in args.stage_k[1:]:
            name = f"products and linears, stage {stage_k or 'own'}"
            variants[name] = dict(VARIANTS["products and linears"], STAGE_K=stages[stage_k])
        encoder_candidate(args.model, args.seconds, variants)


if __name__ == "__main__":
    main()
