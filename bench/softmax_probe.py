"""Does the package's softmax (cuda_kernels._ROW_SOFTMAX, which `weights_and_memory` runs after the attention's scores)
compute MLX's float32 softmax bit for bit on this GPU?

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
from funasr_nano_mlx.cuda_kernels import _ROW_NORM, _ROW_SOFTMAX, row_threads  # noqa: E402

# One row a block of MLX's threads (`row_threads`: dispatch_block_dim over a quarter of the row), through the package's
# `row_softmax` (cuda_kernels._ROW_SOFTMAX), whose reciprocal is IEEE's; FAST_RECIPROCAL swaps in the approximate one.
_PROBE = """
  const int frames = scores_shape[1];
  const size_t row = blockIdx.x;
  float values[4];
  for (int i = 0; i < 4; ++i) {
    const int k = 4 * threadIdx.x + i;
    values[i] = k < frames ? scores[row * frames + k] : -cuda::std::numeric_limits<float>::infinity();
  }
  row_softmax<1, BD>(values, 0, threadIdx.x);
  for (int i = 0; i < 4; ++i) {
    const int k = 4 * threadIdx.x + i;
    if (k < frames) {
      out[row * frames + k] = values[i];
    }
  }
"""


def ours(scores: mx.array, fast_reciprocal: bool) -> mx.array:
    """MLX's softmax over the last axis of scores (rows, frames), frames at most 4096, in a kernel of ours."""
    row_softmax = _ROW_SOFTMAX.replace("__fdiv_rn(1.0f,", "__fdividef(1.0f,") if fast_reciprocal else _ROW_SOFTMAX
    kernel = mx.fast.cuda_kernel(
        name=f"softmax_probe_{int(fast_reciprocal)}",
        input_names=["scores"],
        output_names=["out"],
        source=_PROBE,
        header=_ROW_NORM + row_softmax,
    )
    rows, frames = scores.shape
    threads = row_threads(frames)
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
