"""Can a kernel of ours compute MLX's float32 LayerNorm bit for bit, so that a norm can move into the kernel that
writes its input (the encoder's split linears' last kernel: `cuda_kernels._PARTS_ADDED_NORMED`) and save its launch?

    python bench/norm_probe.py [--rows 50 167 500] [--widths 512 560]

MLX's layer_norm (mlx/backend/cuda/layer_norm.cu, layer_norm; its block of threads from kernel_utils.cuh,
dispatch_block_dim over width / 4) sums a row in a fixed order: thread t adds x[4t..4t+3] in turn from 0, each
warp's sums go through cooperative groups' butterfly (coalesced_reduce: shuffles xor 16, 8, 4, 2, 1), the warps'
through one more with zeros past them; mean = sum / width; the same for (x - mean)^2 (a thread past the row adds
nothing); 1 / sqrt(that / width + eps) with rsqrtf; then w * ((x - mean) * that) + b. nvcc compiled MLX's kernel,
and may have contracted `normalizer += t * t` and `w * norm + b` into fmas: this tries the four combinations
(SQUARE_FMA, OUT_FMA) against mx.fast.layer_norm on random rows at the encoder's widths (512; 560 for its first
layer) and prints, per combination and shape, the share of outputs identical. One JSON line each. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from funasr_nano_mlx.cuda_kernels import _ROW_NORM, _float_literal, row_threads  # noqa: E402
from funasr_nano_mlx.model import ENCODER_LN_EPS  # noqa: E402

ROWS_A_BLOCK = 8
THREADS = 256

# The package's warp_sum (cooperative groups' reduce of a warp), with several rows a block.
_ROWS_NORM = """
// Row r's mean and 1 / sqrt(variance + eps) of ROWS rows of x (width K) into mean[r], inv[r], in MLX's order, BD
// threads a row as MLX's kernel (4 values a thread); called by every thread of the block, ends with a barrier.
template <int ROWS, int BD>
__device__ void row_norm_stats(
    const float* x, int K, int valid_rows, float eps, float (&mean)[ROWS], float (&inv)[ROWS],
    float (&partial)[ROWS][BD / 32]) {
  constexpr int WARPS_A_ROW = BD / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  auto at = [&](int r, int k) { return r < valid_rows && k < K ? x[(size_t)r * K + k] : 0.0f; };
  for (int job = warp; job < ROWS * WARPS_A_ROW; job += warps) {
    const int r = job / WARPS_A_ROW, t = (job % WARPS_A_ROW) * 32 + lane;
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum = __fadd_rn(sum, at(r, 4 * t + i));
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      partial[r][job % WARPS_A_ROW] = sum;
    }
  }
  __syncthreads();
  for (int r = warp; r < ROWS; r += warps) {
    const float sum = warp_sum(lane < WARPS_A_ROW ? partial[r][lane] : 0.0f);
    if (lane == 0) {
      mean[r] = __fdiv_rn(sum, (float)K);
    }
  }
  __syncthreads();
  for (int job = warp; job < ROWS * WARPS_A_ROW; job += warps) {
    const int r = job / WARPS_A_ROW, t = (job % WARPS_A_ROW) * 32 + lane;
    float squares = 0.0f;
    for (int k = 4 * t; k < min(4 * t + 4, K); ++k) {
      const float d = __fsub_rn(at(r, k), mean[r]);
#if SQUARE_FMA
      squares = __fmaf_rn(d, d, squares);
#else
      squares = __fadd_rn(squares, __fmul_rn(d, d));
#endif
    }
    squares = warp_sum(squares);
    if (lane == 0) {
      partial[r][job % WARPS_A_ROW] = squares;
    }
  }
  __syncthreads();
  for (int r = warp; r < ROWS; r += warps) {
    const float squares = warp_sum(lane < WARPS_A_ROW ? partial[r][lane] : 0.0f);
    if (lane == 0) {
      inv[r] = rsqrtf(__fadd_rn(__fdiv_rn(squares, (float)K), eps));
    }
  }
  __syncthreads();
}

__device__ inline float normalized(float x, float mean, float inv, float w, float b) {
  const float norm = __fmul_rn(__fsub_rn(x, mean), inv);
#if OUT_FMA
  return __fmaf_rn(w, norm, b);
#else
  return __fadd_rn(__fmul_rn(w, norm), b);
#endif
}
"""

_PROBE = """
  const int K = x_shape[1], rows = x_shape[0], r0 = blockIdx.x * ROWS;
  __shared__ float mean[ROWS], inv[ROWS], partial[ROWS][BD / 32];
  row_norm_stats<ROWS, BD>(x + (size_t)r0 * K, K, rows - r0, EPS, mean, inv, partial);
  for (int i = threadIdx.x; i < ROWS * K; i += blockDim.x) {
    const int r = i / K, k = i % K;
    if (r0 + r < rows) {
      out[(size_t)(r0 + r) * K + k] = normalized(x[(size_t)(r0 + r) * K + k], mean[r], inv[r], weight[k], bias[k]);
    }
  }
"""


def ours(x: mx.array, weight: mx.array, bias: mx.array, square_fma: bool, out_fma: bool) -> mx.array:
    defines = f"#define SQUARE_FMA {int(square_fma)}\n#define OUT_FMA {int(out_fma)}\n"
    eps = f"#define EPS {_float_literal(ENCODER_LN_EPS)}\n"
    kernel = mx.fast.cuda_kernel(
        name=f"norm_probe_{int(square_fma)}{int(out_fma)}",
        input_names=["x", "weight", "bias"],
        output_names=["out"],
        source=_PROBE,
        header=defines + eps + _ROW_NORM + _ROWS_NORM,
    )
    rows = x.shape[0]
    return kernel(
        inputs=[x, weight, bias],
        template=[("ROWS", ROWS_A_BLOCK), ("BD", row_threads(x.shape[1]))],
        grid=(-(-rows // ROWS_A_BLOCK) * THREADS, 1, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[mx.float32],
    )[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50, 167, 500])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 560])
    args = parser.parse_args()
    if mx.default_device().type != mx.DeviceType.gpu:
        raise SystemExit("norm_probe.py needs MLX's CUDA backend")
    rng = np.random.default_rng(0)
    for width in args.widths:
        for rows in args.rows:
            # Rows like a residual stream's: an offset and a spread per row, so that the mean matters.
            scale = rng.uniform(0.5, 4.0, (rows, 1))
            x = mx.array(
                (rng.standard_normal((rows, width)) * scale + rng.uniform(-1, 1, (rows, 1))).astype(np.float32)
            )
            weight = mx.array(rng.uniform(0.5, 1.5, width).astype(np.float32))
            bias = mx.array(rng.standard_normal(width).astype(np.float32) * 0.1)
            truth = np.array(mx.fast.layer_norm(x, weight, bias, ENCODER_LN_EPS))
            for square_fma in (False, True):
                for out_fma in (False, True):
                    got = np.array(ours(x, weight, bias, square_fma, out_fma))
                    row = {"rows": rows, "width": width, "square_fma": square_fma, "out_fma": out_fma}
                    row["identical_share"] = float(np.mean(got == truth))
                    row["max_abs_diff"] = float(np.max(np.abs(got - truth)))
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
