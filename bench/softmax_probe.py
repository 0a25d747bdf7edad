"""Can a kernel of ours compute MLX's float32 softmax bit for bit, so that the encoder's attention scores kernel could
write the softmax's weights itself and save its launch (70 a clip)?

    python bench/softmax_probe.py [--rows 668 2000] [--frames 17 50 167 362]

MLX's softmax (mlx/backend/cuda/softmax.cu, softmax; float32 accumulates in float32 whatever `precise` says) takes
a row with the threads kernel_utils.cuh's dispatch_block_dim gives ceil(frames / 4), thread t holding values 4t..4t+3
(-inf past the row) in an online pass: its running max from float32's lowest (cooperative groups' greater: b if a < b
else a), the normalizer scaled by __expf(previous max - max), then each __expf(value - max) added. Each warp reduces
the max and, rescaled, the normalizer with cooperative groups' butterfly (shuffles xor 16, 8, 4, 2, 1); the warps' do
the same (-inf and 0 past them); the weights are __expf(value - max) * (1 / normalizer). In one pass (rows of up to
4096) no product meets a sum that nvcc could contract into an fma; the division is IEEE's by nvcc's default, which
this checks against the approximate one (FAST_RECIPROCAL). Against mx.softmax(precise=True) on scores like the
encoder's (rows of a head's attention): per form and shape the share of weights identical. One JSON line each.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from funasr_nano_mlx.cuda_kernels import _ROW_NORM, layer_norm_threads  # noqa: E402

# One row a block of MLX's threads (the same count as its layer_norm's: dispatch_block_dim over a quarter of the row).
_PROBE = """
  const int frames = scores_shape[1];
  const size_t row = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* in = scores + row * frames;
  __shared__ float warp_max[BD / 32], warp_normalizer[BD / 32];
  auto greater = [](float a, float b) { return a < b ? b : a; };
  auto warp_reduce_max = [&](float v) {
    for (int mask = 16; mask > 0; mask /= 2) {
      v = greater(v, __shfl_xor_sync(0xffffffffu, v, mask));
    }
    return v;
  };
  float values[4];
  for (int i = 0; i < 4; ++i) {
    const int k = 4 * threadIdx.x + i;
    values[i] = k < frames ? in[k] : -cuda::std::numeric_limits<float>::infinity();
  }
  float max_value = cuda::std::numeric_limits<float>::lowest(), normalizer = 0.0f;
  float previous = max_value;
  for (int i = 0; i < 4; ++i) {
    max_value = greater(max_value, values[i]);
  }
  normalizer = __fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value)));
  for (int i = 0; i < 4; ++i) {
    normalizer = __fadd_rn(normalizer, __expf(__fsub_rn(values[i], max_value)));
  }
  previous = max_value;
  max_value = warp_reduce_max(max_value);
  normalizer = warp_sum(__fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value))));
  previous = max_value;
  if (lane == 0) {
    warp_max[warp] = max_value;
  }
  __syncthreads();
  max_value = warp_reduce_max(lane < BD / 32 ? warp_max[lane] : -cuda::std::numeric_limits<float>::infinity());
  normalizer = __fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value)));
  if (lane == 0) {
    warp_normalizer[warp] = normalizer;
  }
  __syncthreads();
  normalizer = warp_sum(lane < BD / 32 ? warp_normalizer[lane] : 0.0f);
#if FAST_RECIPROCAL
  normalizer = __fdividef(1.0f, normalizer);
#else
  normalizer = __fdiv_rn(1.0f, normalizer);
#endif
  for (int i = 0; i < 4; ++i) {
    const int k = 4 * threadIdx.x + i;
    if (k < frames) {
      out[row * frames + k] = __fmul_rn(__expf(__fsub_rn(values[i], max_value)), normalizer);
    }
  }
"""


def ours(scores: mx.array, fast_reciprocal: bool) -> mx.array:
    """MLX's softmax over the last axis of scores (rows, frames), frames at most 4096, in a kernel of ours."""
    kernel = mx.fast.cuda_kernel(
        name=f"softmax_probe_{int(fast_reciprocal)}",
        input_names=["scores"],
        output_names=["out"],
        source=_PROBE,
        header=f"#define FAST_RECIPROCAL {int(fast_reciprocal)}\n" + _ROW_NORM,
    )
    rows, frames = scores.shape
    threads = layer_norm_threads(frames)
    return kernel(
        inputs=[scores],
        template=[("BD", threads)],
        grid=(rows * threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[scores.shape],
        output_dtypes=[mx.float32],
    )[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[668, 2000], help="rows: heads x query frames")
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 50, 167, 362])
    args = parser.parse_args()
    if mx.default_device().type != mx.DeviceType.gpu:
        raise SystemExit("softmax_probe.py needs MLX's CUDA backend")
    rng = np.random.default_rng(0)
    for frames in args.frames:
        for rows in args.rows:
            # Scores like a head's: q . k / sqrt(128) of unit-scale rows spreads them over a few units.
            scores = mx.array(
                (rng.standard_normal((rows, frames)) * rng.uniform(0.5, 4.0, (rows, 1))).astype(np.float32)
            )
            truth = np.array(mx.softmax(scores, axis=-1, precise=True))
            for fast_reciprocal in (False, True):
                got = np.array(ours(scores, fast_reciprocal))
                row = {"rows": rows, "frames": frames, "fast_reciprocal": fast_reciprocal}
                row["identical_share"] = float(np.mean(got == truth))
                row["max_abs_diff"] = float(np.max(np.abs(got - truth)))
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
