"""Can a float32 matmul kernel of our own give cuBLAS's numbers bit for bit at the encoder's shapes?

    python bench/exact_gemm.py [--frames 167 ...] [--model MODEL_DIR [--seconds 10 30 3]]

The encoder's float32 path is exact by contract, and about half of its host time is cuBLAS: MLX builds a
cublasLt descriptor and asks its heuristic at every call, then captures the call into the CUDA graph
(mlx/backend/cuda/gemms/cublas_gemm.cpp, cublas_utils.cpp: 17-24 us of host a matmul against 3-4 for a
custom kernel, BENCHMARKS.md). A kernel of our own is cheaper to launch and can read q, k and v where the
fused projection left them (MLX copies them first), but it may replace cuBLAS only if it gives the same
numbers. cuBLAS's SIMT float32 kernels (no TF32: funasr_nano_mlx sets MLX_ENABLE_TF32=0) keep one
accumulator per output and add the products in k order, unless the heuristic splits k over blocks
(split-K), whose partial sums are then added in some order. So for each of the encoder's matmuls (the
four projections with their bias, the attention's two products) at several lengths, this compares MLX's
result with one fma chain over ascending k, with k split into S runs whose partial sums are added in
order (split-K), and with k tiles split among warps (sliced-K: every W-th group), and names the kernels cuBLAS ran (CUPTI through torch.profiler, where torch has CUDA).
A tiled kernel with the same per-output order (`tiled_matmul`) is checked against the chain and timed
against MLX's call. One JSON line per shape. With --model, the encoder + adaptor with the matmul kernels of
`funasr_nano_mlx.cuda_kernels` (`EXACT_MATMULS`) off and on: the same numbers or not, and how fast.
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
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import funasr_nano_mlx  # noqa: E402,F401  (sets MLX_ENABLE_TF32=0 before MLX's first matmul)
from kernels import warm_ms  # noqa: E402

HEADS, HEAD_DIM, WIDTH, HIDDEN, FEATS = 4, 128, 512, 2048, 560  # the encoder's (model.EncoderArgs; LFR's 560)

# out[z, h, m, n] = sum over k in part z of a[h, m, k] * b[h, n, k], one fma chain in ascending k. Operands
# are addressed by strides (template constants): a[A_OFF + h * A_BATCH + m * A_ROW + k * A_K], b likewise.
_CHAIN = """
  const size_t index = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int z = blockIdx.y, h = blockIdx.z;
  if (index >= (size_t)M * N) {
    return;
  }
  const int m = index / N, n = index % N;
  const float* pa = a + A_OFF + (size_t)h * A_BATCH + (size_t)m * A_ROW;
  const float* pb = b + B_OFF + (size_t)h * B_BATCH + (size_t)n * B_ROW;
  float acc = 0.0f;
#if SLICED
  // Part z: the k whose group of CHUNK (k / CHUNK) is z modulo the parts (warps splitting each k tile).
  for (int k = z * CHUNK; k < K; ++k) {
    if ((k / CHUNK) % gridDim.y != z) {
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

# The same per-output order in tiles: a block of BM x BN outputs, BK of k at a time through shared memory,
# each thread TM x TN outputs (rows ty + i * (BM / TM), columns tx + j * (BN / TN)), each output one fma
# chain in ascending k, then + bias[n] (one rounding, as cublasLt's bias epilogue) where BIAS.
_TILED = """
  constexpr int THREADS_N = BN / TN, THREADS = (BM / TM) * THREADS_N;
  __shared__ float as[BK][BM + 1], bs[BK][BN + 1];
  const int h = blockIdx.z, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tx = threadIdx.x % THREADS_N, ty = threadIdx.x / THREADS_N;
  const float* pa = a + A_OFF + (size_t)h * A_BATCH;
  const float* pb = b + B_OFF + (size_t)h * B_BATCH;
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      acc[i][j] = 0.0f;
    }
  }
  for (int k0 = 0; k0 < K; k0 += BK) {
    // Tiles into shared memory, consecutive threads on the operand's contiguous axis; zeros outside.
    for (int e = threadIdx.x; e < BM * BK; e += THREADS) {
      const int r = A_K == 1 ? e / BK : e % BM, kk = A_K == 1 ? e % BK : e / BM;
      const int m = m0 + r, k = k0 + kk;
      as[kk][r] = (m < M && k < K) ? pa[(size_t)m * A_ROW + (size_t)k * A_K] : 0.0f;
    }
    for (int e = threadIdx.x; e < BN * BK; e += THREADS) {
      const int c = B_K == 1 ? e / BK : e % BN, kk = B_K == 1 ? e % BK : e / BN;
      const int n = n0 + c, k = k0 + kk;
      bs[kk][c] = (n < N && k < K) ? pb[(size_t)n * B_ROW + (size_t)k * B_K] : 0.0f;
    }
    __syncthreads();
    const int steps = min(BK, K - k0);  // past K nothing is added, so each chain is exactly K products long
    for (int kk = 0; kk < steps; ++kk) {
      float x[TM], y[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        x[i] = as[kk][ty + i * (BM / TM)];
      }
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        y[j] = bs[kk][tx + j * THREADS_N];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          acc[i][j] = __fmaf_rn(x[i], y[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty + i * (BM / TM);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx + j * THREADS_N;
      if (m < M && n < N) {
#if BIAS
        out[((size_t)h * M + m) * N + n] = __fadd_rn(acc[i][j], bias[n]);
#else
        out[((size_t)h * M + m) * N + n] = acc[i][j];
#endif
      }
    }
  }
"""


def layout(kind: str, frames: int) -> dict:
    """Strides of the operands as the encoder's arrays hold them. Linear: a = x (M, K), b = the weight (N, K).
    Scores: a = q, b = k, both heads of the fused projection (frames, 3C). Context: a = the weights
    (heads, frames, frames), b = v of the fused projection, read down its frames."""
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
        name=f"exact_chain_{int(sliced)}", input_names=["a", "b"], output_names=["out"], source=source
    )
    template = [("M", m), ("N", n), ("K", k), ("CHUNK", chunk), *strides.items()]
    return kernel(
        inputs=[a, b],
        template=template,
        grid=(-(-m * n // 256) * 256, splits, batch),
        threadgroup=(256, 1, 1),
        output_shapes=[(splits, batch, m, n)],
        output_dtypes=[mx.float32],
    )[0]


def tiled_matmul(a, b, bias, m: int, n: int, k: int, batch: int, strides: dict, tile: tuple) -> mx.array:
    bm, bn, bk, tm, tn = tile
    inputs = {"a": a, "b": b, **({"bias": bias} if bias is not None else {})}
    source = f"#define BIAS {int(bias is not None)}\n" + _TILED
    kernel = mx.fast.cuda_kernel(
        name=f"exact_tiled_{int(bias is not None)}", input_names=list(inputs), output_names=["out"], source=source
    )
    template = [("M", m), ("N", n), ("K", k), ("BM", bm), ("BN", bn), ("BK", bk), ("TM", tm), ("TN", tn)]
    threads = (bm // tm) * (bn // tn)
    return kernel(
        inputs=list(inputs.values()),
        template=template + list(strides.items()),
        grid=(-(-n // bn) * threads, -(-m // bm), batch),
        threadgroup=(threads, 1, 1),
        output_shapes=[(batch, m, n)],
        output_dtypes=[mx.float32],
    )[0]


def combined(partials: mx.array, bias: mx.array | None, order: str) -> mx.array:
    """Partial sums (S, ...) added in chunk order, the bias last ("bias last") or first ("bias first")."""
    total = bias + partials[0] if (order == "bias first" and bias is not None) else partials[0]
    for part in partials[1:]:
        total = total + part
    return total + bias if (order == "bias last" and bias is not None) else total


def cublas_kernels(run) -> list[str]:
    """The kernels one evaluation of `run()` launched (names, CUPTI through torch.profiler), or [] without it."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiled:
        mx.eval(run())
        torch.cuda.synchronize()
    return [e.name[:140] for e in profiled.events() if e.device_type == torch.autograd.DeviceType.CUDA]


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
    """(name, reference thunk, operands for the chain and the tiled kernel) for each of a layer's matmuls."""
    qkv = mx.array(rng.standard_normal((1, frames, 3 * WIDTH), dtype=np.float32))
    for name, k, n in (("qkv0", FEATS, 3 * WIDTH), ("qkv", WIDTH, 3 * WIDTH), ("out", WIDTH, WIDTH),
                       ("ffn1", WIDTH, HIDDEN), ("ffn2", HIDDEN, WIDTH)):  # fmt: skip
        x = mx.array(rng.standard_normal((1, frames, k), dtype=np.float32))
        w = mx.array(rng.standard_normal((n, k), dtype=np.float32) * k**-0.5)
        bias = mx.array(rng.standard_normal((n,), dtype=np.float32))
        strides = dict(A_OFF=0, A_BATCH=0, A_ROW=k, A_K=1, B_OFF=0, B_BATCH=0, B_ROW=k, B_K=1)
        yield name, (lambda x=x, w=w, bias=bias: mx.addmm(bias, x, w.T)), (x, w, bias, frames, n, k, 1, strides)
    # The attention as MLX's fallback computes it (mlx/fast.cpp, scaled_dot_product_attention): q scaled
    # (the model's scale, then the fallback's 1.0), the products of head-first copies.
    q, key, v = (t.reshape(1, frames, HEADS, HEAD_DIM).transpose(0, 2, 1, 3) for t in mx.split(qkv, 3, axis=-1))
    q = (q * HEAD_DIM**-0.5) * 1.0
    weights = mx.softmax(q @ key.swapaxes(-1, -2), axis=-1, precise=True)
    mx.eval(q, weights)
    scaled = mx.concatenate([q.transpose(0, 2, 1, 3).reshape(1, frames, WIDTH), qkv[..., WIDTH:]], axis=-1)
    yield "scores", (lambda: q @ key.swapaxes(-1, -2)), (scaled, scaled, None, frames, frames, HEAD_DIM, HEADS,
                                                         layout("scores", frames))  # fmt: skip
    yield "context", (lambda: weights @ v), (weights, qkv, None, frames, HEAD_DIM, frames, HEADS,
                                              layout("context", frames))  # fmt: skip


def tile_for(m: int, n: int) -> tuple:
    """BM, BN, BK, TM, TN: 64 x 64 tiles where they make enough blocks, else 32 x 32 (132 SMs on an H100)."""
    return (64, 64, 16, 4, 4) if -(-m // 64) * -(-n // 64) >= 132 else (32, 32, 16, 2, 2)


def probe(frames: int, rng: np.random.Generator) -> None:
    for name, reference, (a, b, bias, m, n, k, batch, strides) in cases(frames, rng):
        expected = reference()
        mx.eval(expected)
        truth = np.array(expected).reshape(batch, m, n)
        found = {}
        for splits in (1, 2, 3, 4, 6, 8, 16):
            for granule in (1, 8, 16, 32) if splits > 1 else (1,):
                chunk = -(-(-(-k // splits)) // granule) * granule
                if splits > 1 and (splits - 1) * chunk >= k:
                    continue
                partials = chain(a, b, m, n, k, batch, strides, splits, chunk)
                for order in ("bias last", "bias first") if bias is not None and splits > 1 else ("bias last",):
                    got = np.array(combined(partials, bias, order)).reshape(batch, m, n)
                    found[f"S={splits} chunk={chunk} {order}"] = float(np.mean(got == truth))
        for slices in (2, 4):
            for group in (1, 2, 4, 8, 16):
                partials = chain(a, b, m, n, k, batch, strides, slices, group, sliced=True)
                got = np.array(combined(partials, bias, "bias last")).reshape(batch, m, n)
                found[f"sliced W={slices} group={group}"] = float(np.mean(got == truth))
        tile = tile_for(m, n)
        tiled = tiled_matmul(a, b, bias, m, n, k, batch, strides, tile)
        one_chain = combined(chain(a, b, m, n, k, batch, strides, 1, k), bias, "bias last")
        row = {
            "case": name,
            "frames": frames,
            "shape": [batch, m, k, n],
            "identical_share": {key: value for key, value in found.items() if value > 0.5} or max(found.values()),
            "chain_share": found["S=1 chunk=%d bias last" % k],
            "tiled_equals_chain": bool(mx.array_equal(tiled, one_chain.reshape(tiled.shape)).item()),
            "max_abs_diff_chain": float(np.max(np.abs(np.array(one_chain).reshape(batch, m, n) - truth))),
            "cublas_kernels": cublas_kernels(reference),
            "mlx_us_per_call": per_call_us(reference),
            "tiled_us_per_call": per_call_us(lambda: tiled_matmul(a, b, bias, m, n, k, batch, strides, tile)),
            "tile": tile,
        }
        print(json.dumps(row), flush=True)


def encoder_candidate(model_dir: Path, seconds: list[float], batch: int = 4) -> None:
    """Encoder + adaptor with `cuda_kernels.EXACT_MATMULS` off and on, alternating: identical output or not,
    warm ms (median of 10), host ms to submit, CUPTI's GPU time and launches; one clip of each length, then
    a padded batch of `batch` (lengths 100% to 55% of the longest, so the masked kernels run)."""
    from step_profile import cupti_kernels
    from speed import synthetic_audio

    from funasr_nano_mlx import cuda_kernels, load
    from funasr_nano_mlx.audio import features

    os.environ["FUNASR_NANO_COMPILE"] = "1"
    model, _ = load(model_dir)
    inputs = {f"1 x {s:g} s": (mx.array(features(synthetic_audio(s)))[None], None) for s in seconds}
    rows = [features(synthetic_audio(seconds[0] * (1 - 0.15 * i))) for i in range(batch)]
    longest = max(len(r) for r in rows)
    padded = np.stack([np.pad(r, [(0, longest - len(r)), (0, 0)]) for r in rows])
    inputs[f"{batch} x {seconds[0]:g} s, padded"] = (mx.array(padded), mx.array([len(r) for r in rows]))
    for name, (feats, lengths) in inputs.items():
        outputs, rows_out = {}, []
        for _ in range(2):  # alternating, so that a host's drift hits both alike
            for on in (False, True):
                cuda_kernels.EXACT_MATMULS = on
                warm, submit = warm_ms(lambda: model.encode(feats, lengths), 10)
                outputs[on] = np.array(model.encode(feats, lengths))
                kernels = cupti_kernels(lambda: model.encode(feats, lengths), 4, top=12)
                rows_out.append({"input": name, "matmul_kernels": on, "warm_ms": warm, "submit_ms": submit, **kernels})
        cuda_kernels.EXACT_MATMULS = False
        for row in rows_out:
            print(json.dumps(row), flush=True)
        same = outputs[False] == outputs[True]
        difference = float(np.max(np.abs(outputs[False] - outputs[True])))
        print(
            json.dumps({"input": name, "identical_share": float(same.mean()), "max_abs_diff": difference}), flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[167, 84, 500, 17, 1000])
    parser.add_argument(
        "--model", type=Path, help="also the encoder + adaptor of this model with the kernels off and on"
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 3.0])
    args = parser.parse_args()
    if mx.default_device().type != mx.DeviceType.gpu:
        raise SystemExit("exact_gemm.py needs MLX's CUDA backend")

    rng = np.random.default_rng(0)
    for frames in args.frames:
        probe(frames, rng)
    if args.model:
        encoder_candidate(args.model, args.seconds)


if __name__ == "__main__":
    main()
