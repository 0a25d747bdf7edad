"""Two CUDA kernels for the greedy decode step, each replacing several MLX kernels, with the MLX ops they
replace (`*_ops`; for `decode_attention`, the masked attention of decode_step._StepCache) as the path
everywhere else.

Why by hand: a decode step of Qwen3-0.6B is bound by the host, not the GPU. MLX spends a few microseconds
of CPU per kernel it submits, and a step was about 500 kernels (3.1 ms on an H100, while the weights take
~0.4 ms to read). MLX has no fused form of these patterns, and its attention kernel for a single
query takes no array mask, so a preallocated cache (which the compiled step needs) sent every layer to
separate matmul and softmax kernels. Each function here computes what its `*_ops` twin computes, in the
same float32 steps and the same roundings to the model's dtype, so that the two agree to float32 rounding
order (measured in bench/kernels.py; BENCHMARKS.md).

Used only where `enabled(dtype)`: the default device is a CUDA GPU, the activations are bf16 (the dtype
they were verified in; a float32 model stays the exact path, op for op as on the CPU) and
FUNASR_NANO_KERNELS is not 0. Metal has no twin of these kernels yet (no Mac to verify one on), so
Apple silicon runs the ops.
"""

from __future__ import annotations

import os
from functools import lru_cache

import mlx.core as mx

_HEADER = """
// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ inline float warp_total(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffff, x, offset);
  }
  return x;
}

// E consecutive elements as floats, in one aligned load.
template <int E, typename T>
__device__ inline void load_floats(const T* p, float (&out)[E]) {
  auto v = mlx::core::cu::unsafe_load_vector<E>(p, 0);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    out[i] = static_cast<float>(v[i]);
  }
}
"""

# One block of 8 warps per (row, query head). Each warp walks every 8th key of the row's valid slots
# [first[row], last[0]] with an online softmax (running maximum, sum and weighted values, in float32);
# the 8 partial results are then merged. Keys past `last` (not written yet) and before `first` (left
# padding) are never read, which is the mask; the slot being written is always valid, so no row is empty.
# Queries are scaled before the product, as MLX's kernel does.
_ATTENTION = """
  constexpr int E = D / 32;
  constexpr int WARPS = 8;
  const float NEG_INF = -cuda::std::numeric_limits<float>::infinity();
  const int row_head = blockIdx.x;
  const int row = row_head / HQ;
  const int kv_head = (row_head % HQ) / (HQ / HKV);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int capacity = keys_shape[2];

  float q[E];
  load_floats<E>(queries + (size_t)row_head * D + lane * E, q);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    q[i] *= SCALE;
  }
  const size_t head_base = (size_t)(row * HKV + kv_head) * capacity * D + lane * E;
  float running_max = NEG_INF, total = 0.0f, acc[E];
#pragma unroll
  for (int i = 0; i < E; ++i) {
    acc[i] = 0.0f;
  }
  for (int slot = first[row] + warp; slot <= last[0]; slot += WARPS) {
    float k[E], v[E];
    load_floats<E>(keys + head_base + (size_t)slot * D, k);
    float score = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      score += q[i] * k[i];
    }
    score = warp_total(score);
    load_floats<E>(values + head_base + (size_t)slot * D, v);
    const float new_max = fmaxf(running_max, score);
    const float rescale = expf(running_max - new_max);
    const float weight = expf(score - new_max);
    total = total * rescale + weight;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      acc[i] = acc[i] * rescale + weight * v[i];
    }
    running_max = new_max;
  }

  __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][D];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = total;
  }
#pragma unroll
  for (int i = 0; i < E; ++i) {
    warp_acc[warp][lane * E + i] = acc[i];
  }
  __syncthreads();
  if (threadIdx.x < D) {
    float m = NEG_INF;
    for (int w = 0; w < WARPS; ++w) {
      m = fmaxf(m, warp_max[w]);
    }
    float sum = 0.0f, value = 0.0f;
    for (int w = 0; w < WARPS; ++w) {
      const float factor = expf(warp_max[w] - m);  // 0 for a warp that saw no key
      sum += warp_sum[w] * factor;
      value += warp_acc[w][threadIdx.x] * factor;
    }
    out[(size_t)row_head * D + threadIdx.x] = static_cast<T>(value / sum);
  }
"""

# One warp per (row, head) of the fused q/k/v projection's q and k parts: RMSNorm with the head's norm
# weight, then RoPE at the row's position (non-traditional: element i pairs with i + D/2). Lane l holds
# elements l, l + 32, ... The roundings are those of MLX's rms_norm and rope kernels
# (mlx/backend/cuda/rms_norm.cu, rope.cu): normalized in float32, rounded to T, times the weight in T;
# rotated in float32 and rounded to T. Only the sum of squares is added in another order than MLX's
# (a warp's butterfly against its block reduce), so a normalizer can differ in its last float32 bit and,
# rarely, round one output the other way.
_QK_NORM_ROPE = """
  constexpr int E = D / 32;
  constexpr int HEADS = HQ + HKV;
  const int global_warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (global_warp >= qkv_shape[0] * HEADS) {
    return;
  }
  const int row = global_warp / HEADS;
  const int head = global_warp % HEADS;  // q heads, then k heads: the order of the fused projection
  const bool is_query = head < HQ;
  const T* x = qkv + ((size_t)row * (HQ + 2 * HKV) + head) * D;
  const T* weight = is_query ? q_weight : k_weight;

  float values[E], squares = 0.0f;
#pragma unroll
  for (int t = 0; t < E; ++t) {
    values[t] = static_cast<float>(x[lane + 32 * t]);
    squares += values[t] * values[t];
  }
  const float normalizer = rsqrt(warp_total(squares) / D + EPS);
  T normed[E];
#pragma unroll
  for (int t = 0; t < E; ++t) {
    normed[t] = weight[lane + 32 * t] * static_cast<T>(values[t] * normalizer);
  }

  T* y = is_query ? q_out + ((size_t)row * HQ + head) * D : k_out + ((size_t)row * HKV + head - HQ) * D;
  const float position = static_cast<float>(positions[row]);
#pragma unroll
  for (int t = 0; t < E / 2; ++t) {
    const int i = lane + 32 * t;
    const float theta = position * (float)(1.0 / freqs[i]);
    const float c = cos(theta), s = sin(theta);
    const float x1 = static_cast<float>(normed[t]), x2 = static_cast<float>(normed[t + E / 2]);
    y[i] = static_cast<T>(x1 * c - x2 * s);
    y[i + D / 2] = static_cast<T>(x1 * s + x2 * c);
  }
"""


def enabled(dtype: mx.Dtype) -> bool:
    """Whether the decode step uses these kernels for activations of this dtype (see the module's docstring)."""
    if os.environ.get("FUNASR_NANO_KERNELS", "1") in ("", "0") or dtype != mx.bfloat16:
        return False
    return mx.default_device().type == mx.DeviceType.gpu and mx.cuda.is_available()


def fits(head_dim: int, q_heads: int, kv_heads: int) -> bool:
    """Whether the kernels are written for these shapes: a warp's lanes split a head into aligned vector
    loads of 1, 2, 4 or 8 elements (Qwen3-0.6B: 128 = 32 x 4), and query heads share key heads evenly."""
    return head_dim in (32, 64, 128, 256) and q_heads % kv_heads == 0


def _float_literal(value: float) -> str:
    return f"{float(value)!r}f"  # the double's repr, rounded to float by the compiler as MLX rounds a Python float


@lru_cache(maxsize=None)
def _kernel(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...], body: str):
    return mx.fast.cuda_kernel(
        name=name, input_names=list(inputs), output_names=list(outputs), source=body, header=_HEADER
    )


def decode_attention(
    queries: mx.array, keys: mx.array, values: mx.array, first: mx.array, last: mx.array, scale: float
) -> mx.array:
    """Attention of one query per row over the slots first[row]..last[0] of preallocated key and value
    buffers: queries (B, HQ, 1, D); keys, values (B, HKV, capacity, D); first (B,) and last (1,) int32.
    Returns (B, HQ, 1, D), as `mx.fast.scaled_dot_product_attention` with the mask those slots make."""
    batch, heads, _, dims = queries.shape
    kernel = _kernel(
        f"decode_attention_{dims}",
        ("queries", "keys", "values", "first", "last"),
        ("out",),
        f"  constexpr float SCALE = {_float_literal(scale)};\n" + _ATTENTION,
    )
    return kernel(
        inputs=[queries, keys, values, first, last],
        template=[("T", queries.dtype), ("D", dims), ("HQ", heads), ("HKV", keys.shape[1])],
        grid=(batch * heads * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[queries.shape],
        output_dtypes=[queries.dtype],
    )[0]


def qk_norm_rope(qkv: mx.array, q_norm, k_norm, rope, positions: mx.array, q_heads: int, kv_heads: int):
    """From a fused q/k/v projection of one token per row, qkv (B, 1, (HQ + 2 HKV) D): the queries
    (B, HQ, 1, D) and keys (B, HKV, 1, D) after their RMSNorms (`q_norm`, `k_norm`, nn.RMSNorm, one eps)
    and RoPE (`rope`, model.UpstreamRoPE: all D dims rotated, not traditional, no scaling) at each row's
    position, positions (B,) int32."""
    batch, dims = qkv.shape[0], rope.dims
    kernel = _kernel(
        f"qk_norm_rope_{dims}",
        ("qkv", "q_weight", "k_weight", "freqs", "positions"),
        ("q_out", "k_out"),
        f"  constexpr float EPS = {_float_literal(q_norm.eps)};\n" + _QK_NORM_ROPE,
    )
    warps = batch * (q_heads + kv_heads)
    return tuple(
        kernel(
            inputs=[qkv, q_norm.weight, k_norm.weight, rope.periods, positions],
            template=[("T", qkv.dtype), ("D", dims), ("HQ", q_heads), ("HKV", kv_heads)],
            grid=(warps * 32, 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(batch, q_heads, 1, dims), (batch, kv_heads, 1, dims)],
            output_dtypes=[qkv.dtype, qkv.dtype],
        )
    )


def qk_norm_rope_ops(qkv: mx.array, q_norm, k_norm, rope, positions, q_heads: int, kv_heads: int):
    """`qk_norm_rope` as mlx-lm's Qwen3 attention computes it (mlx_lm/models/qwen3.py:79-90), for any
    length L: qkv (B, L, (HQ + 2 HKV) D), positions an int or (B,), returns (B, HQ, L, D), (B, HKV, L, D)."""
    batch, length, _ = qkv.shape
    queries, keys, _ = mx.split(qkv, [q_heads * rope.dims, (q_heads + kv_heads) * rope.dims], axis=-1)
    queries = q_norm(queries.reshape(batch, length, q_heads, -1)).transpose(0, 2, 1, 3)
    keys = k_norm(keys.reshape(batch, length, kv_heads, -1)).transpose(0, 2, 1, 3)
    return rope(queries, offset=positions), rope(keys, offset=positions)
