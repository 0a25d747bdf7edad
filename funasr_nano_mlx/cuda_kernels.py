"""CUDA kernels for the greedy decode step, each replacing several MLX kernels, with the MLX ops they replace
(`*_ops`) as the path everywhere else: attention of one query over the written slots, the q/k RMSNorms with
RoPE, and, for one row, the two in one kernel, the projections with the RMSNorm, residual add or swiglu
around them inside, the write of every layer's key and value, and a 4-bit embedding's rows. Also, for the
encoder, its FSMN memory block, its attention's two float32 products and its float32 linear layers (MLX's numbers,
bit for bit) and (opt-in) its whole attention; and one prompt's heads and causal attention.

Why by hand: a decode step of Qwen3-0.6B is bound by the host, not the GPU. MLX spends a few microseconds
of CPU per kernel it submits, and a step was about 500 kernels (3.1 ms on an H100, while the weights take
~0.4 ms to read). MLX has no fused form of these patterns, and its attention kernel for a single
query takes no array mask, so a preallocated cache (which the compiled step needs) sent every layer to
separate matmul and softmax kernels. Each function here computes what its `*_ops` twin computes, in the
same float32 steps and the same roundings to the model's dtype, so that the two agree to float32 rounding
order; the projections repeat MLX's own kernels' order too, and agreed with them bit for bit on an H100 in
this form (b99b70d) and in two later ones (bench/kernels.py; BENCHMARKS.md).

Used only where `enabled(dtype)`: the default device is a CUDA GPU, the activations are bf16 (the dtype
they were verified in; a float32 model stays the exact path, op for op as on the CPU) and
FUNASR_NANO_KERNELS is not 0. Metal has no twin of these kernels yet (no Mac to verify one on), so
Apple silicon runs the ops.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu

from . import cublas_heuristic

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
// One key into a warp's online softmax, in float32: its score and value (this lane's E elements) rescale the
// running maximum, the sum of weights and the weighted values.
template <int E>
__device__ inline void softmax_add(float score, const float (&v)[E], float& running_max, float& total, float (&acc)[E]) {
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

// A warp's online softmax into the block's shared arrays, for the merge across warps after the barrier.
template <int WARPS, int D, int E>
__device__ inline void share_softmax(
    int warp, int lane, float running_max, float total, const float (&acc)[E],
    float (&warp_max)[WARPS], float (&warp_sum)[WARPS], float (&warp_acc)[WARPS][D]) {
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = total;
  }
#pragma unroll
  for (int i = 0; i < E; ++i) {
    warp_acc[warp][lane * E + i] = acc[i];
  }
  __syncthreads();
}

// One head of a fused q/k/v projection's q or k part, x (D elements), through its RMSNorm (weight, eps) and
// RoPE at `position` (non-traditional: element i pairs with i + D/2; `periods` as mx.fast.rope takes them),
// by one warp, into y (D elements of T). Lane l holds elements l, l + 32, ... The roundings are those of MLX's
// rms_norm and rope kernels (mlx/backend/cuda/rms_norm.cu, rope.cu): normalized in float32, rounded to T,
// times the weight in T; rotated in float32 and rounded to T. Only the sum of squares is added in another
// order than MLX's (a warp's butterfly against its block reduce), so a normalizer can differ in its last
// float32 bit and, rarely, round one output the other way.
template <typename T, int D>
__device__ inline void norm_rope_head(
    const T* x, const T* weight, float eps, const float* periods, float position, int lane, T* y) {
  constexpr int E = D / 32;
  float values[E], squares = 0.0f;
#pragma unroll
  for (int t = 0; t < E; ++t) {
    values[t] = static_cast<float>(x[lane + 32 * t]);
    squares += values[t] * values[t];
  }
  const float normalizer = rsqrt(warp_total(squares) / D + eps);
  T normed[E];
#pragma unroll
  for (int t = 0; t < E; ++t) {
    normed[t] = weight[lane + 32 * t] * static_cast<T>(values[t] * normalizer);
  }
#pragma unroll
  for (int t = 0; t < E / 2; ++t) {
    const int i = lane + 32 * t;
    const float theta = position * (float)(1.0 / periods[i]);
    const float c = cos(theta), s = sin(theta);
    const float x1 = static_cast<float>(normed[t]), x2 = static_cast<float>(normed[t + E / 2]);
    y[i] = static_cast<T>(x1 * c - x2 * s);
    y[i + D / 2] = static_cast<T>(x1 * s + x2 * c);
  }
}
"""

# The end of an attention kernel whose block is one query of one head (blockIdx.x): each warp's online softmax
# (running_max, total, acc) merged in warp order, and the context written at out[row_head * D + d], row_head being
# the block's index. A warp that saw no key (running maximum -inf) adds 0, as long as one warp saw one.
_WARP_MERGE = """  __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][D];
  share_softmax<WARPS, D, E>(warp, lane, running_max, total, acc, warp_max, warp_sum, warp_acc);
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

# One block of WARPS warps per (row, query head). Each warp walks every WARPS-th key of the row's valid slots
# [first[row], last[0]] with an online softmax (running maximum, sum and weighted values, in float32);
# the partial results are then merged in warp order. Keys past `last` (not written yet) and before `first` (left
# padding) are never read, which is the mask; this step's slot `last` is always valid, so no row is empty.
# Its key and value are read from `step_key` and `step_value`, since the buffer's slot is written only after the
# step's last layer (decode_step: one write a step). Queries are scaled before the product, as MLX's kernel does.
# The walk and merge; the block's indices, its query q[E] and the step's key and value come first
# (_ATTENTION_FROM_HEADS, _STEP_ATTENTION_HEADS).
ATTENTION_WARPS = 8  # warps a block; each walks every WARPS-th slot, so the order of the sums depends on it
_ATTENTION_INDICES = """
  constexpr int E = D / 32;
  const float NEG_INF = -cuda::std::numeric_limits<float>::infinity();
  const int row_head = blockIdx.x;
  const int row = row_head / HQ;
  const int kv_head = (row_head % HQ) / (HQ / HKV);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int batch = kv_shape[1];
  const int capacity = kv_shape[3];
  const int newest = last[0];
"""
_ATTENTION_WALK = (
    """
#pragma unroll
  for (int i = 0; i < E; ++i) {
    q[i] *= SCALE;
  }
  const size_t head_base = (size_t)(row * HKV + kv_head) * capacity * D + lane * E;
  const size_t values_base = (size_t)batch * HKV * capacity * D;  // the values follow the keys
  float running_max = NEG_INF, total = 0.0f, acc[E];
#pragma unroll
  for (int i = 0; i < E; ++i) {
    acc[i] = 0.0f;
  }
  for (int slot = first[row] + warp; slot <= newest; slot += WARPS) {
    const bool stepped = slot == newest;
    float k[E], v[E];
    load_floats<E>(stepped ? step_key : kv + head_base + (size_t)slot * D, k);
    float score = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      score += q[i] * k[i];
    }
    score = warp_total(score);
    load_floats<E>(stepped ? step_value : kv + values_base + head_base + (size_t)slot * D, v);
    softmax_add<E>(score, v, running_max, total, acc);
  }

"""
    + _WARP_MERGE
)
# `decode_attention`: the queries and the step's key and value from `step_heads`' outputs.
_ATTENTION_FROM_HEADS = """
  float q[E];
  load_floats<E>(queries + (size_t)row_head * D + lane * E, q);
  const T* step_key = step_kv + (size_t)(row * HKV + kv_head) * D + lane * E;
  const T* step_value = step_key + (size_t)batch * HKV * D;
"""
# `step_attention`: the block computes its query head and the step's key head from the fused q/k/v projection
# first (`norm_rope_head`, warps 0 and 1, into shared memory), and the block of each key head's first query head
# writes that key and the value to step_kv, as `step_heads` does: the same numbers, one kernel fewer a layer.
_STEP_ATTENTION_HEADS = """
  __shared__ alignas(16) T query_head[D], key_head[D];
  const T* x = qkv + (size_t)row * (HQ + 2 * HKV) * D;
  const float position = static_cast<float>(positions[row]);
  const bool writes_kv = (row_head % HQ) % (HQ / HKV) == 0;
  T* kv_out = step_kv + (size_t)(row * HKV + kv_head) * D;
  const T* value = x + (HQ + HKV + kv_head) * D;  // value heads follow the key heads in the fused projection
  if (warp == 0) {
    norm_rope_head<T, D>(x + (row_head % HQ) * D, q_weight, EPS, freqs, position, lane, query_head);
  } else if (warp == 1) {
    norm_rope_head<T, D>(x + (HQ + kv_head) * D, k_weight, EPS, freqs, position, lane, key_head);
  }
  __syncthreads();
  if (warp == 1 && writes_kv) {
#pragma unroll
    for (int t = 0; t < E; ++t) {
      kv_out[lane + 32 * t] = key_head[lane + 32 * t];
      kv_out[(size_t)batch * HKV * D + lane + 32 * t] = value[lane + 32 * t];
    }
  }
  float q[E];
  load_floats<E>(query_head + lane * E, q);
  const T* step_key = key_head + lane * E;
  const T* step_value = value + lane * E;
"""

# One warp per (row, head) of the fused q/k/v projection's q and k parts: `norm_rope_head` at the row's position.
# A key head's warp also copies the value head of its index, so that the step's key and value leave in one
# array, (2, B, HKV, 1, D).
_STEP_HEADS = """
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
  T* y = is_query ? q_out + ((size_t)row * HQ + head) * D : kv_out + ((size_t)row * HKV + head - HQ) * D;
  norm_rope_head<T, D>(x, is_query ? q_weight : k_weight, EPS, freqs, static_cast<float>(positions[row]), lane, y);
  if (!is_query) {
    const T* value = x + HKV * D;  // value heads follow the key heads in the fused projection
    T* value_out = kv_out + ((size_t)(qkv_shape[0] + row) * HKV + head - HQ) * D;
#pragma unroll
    for (int t = 0; t < D / 32; ++t) {
      value_out[lane + 32 * t] = value[lane + 32 * t];
    }
  }
"""

# One clip's step keys and values, one (2, 1, HKV, 1, D) array a layer (`parts`, LAYERS of them), written into
# slot slot[0] of a copy of every layer's buffer (LAYERS, 2, 1, HKV, capacity, D): each thread copies 8 elements.
# It replaces stacking the layers' arrays (a copy kernel each) and MLX's dynamic write (a kernel for the offset,
# a copy): 30 kernels a step for Qwen3-0.6B. The copy of the whole buffer costs what MLX's write cost too: it was
# in place only where the GPU had finished the step before's attention, which reads the buffer, and in a profile
# MLX copied the buffer in 15 of 16 steps (BENCHMARKS.md).
_WRITE_STEP = """
  constexpr int V = 8;
  const int hkv = buffer_shape[3], capacity = buffer_shape[4];
  const size_t element = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
  const size_t total = (size_t)buffer_shape[0] * 2 * hkv * capacity * D;
  if (element >= total) {
    return;
  }
  const int d = element % D;
  const int s = (element / D) % capacity;
  const size_t rest = element / ((size_t)D * capacity);  // (layer, key or value, head)
  const T* source = buffer + element;
  if (s == slot[0]) {
    PARTS  // the layers' pointers, parts[]: indexed at run time, so in local memory, filled by the slot's threads only
    source = parts[rest / (2 * hkv)] + (rest % (2 * hkv)) * D + d;
  }
  mlx::core::cu::unsafe_store_vector<V>(out + element, 0, mlx::core::cu::unsafe_load_vector<V>(source, 0));
"""

# Rows `tokens` (B,) of a 4-bit affine-quantized embedding, from `pack_quantized`'s buffer of ROWS rows of K
# (read through the projection header's `AffineRows::packed`), dequantized as MLX's affine_dequantize computes
# each element (mlx/backend/cuda/quantized/affine_quantize.cu: scale * T(q) + bias, in T): one thread per 8
# elements, a word. It replaces MLX's three gathers (weight, scales, biases) and its dequantize.
_EMBED_AFFINE = """
  const size_t thread = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (thread >= (size_t)tokens_shape[0] * (K / 8)) {
    return;
  }
  const size_t row = thread / (K / 8), word_index = thread % (K / 8);
  const size_t token = tokens[row];
  const auto packed = projection::AffineRows<T, K, 4, GROUP>::packed(buffer, ROWS);
  const uint32_t word = packed.weight[token * (K / 8) + word_index];
  const size_t group = token * (K / GROUP) + word_index * 8 / GROUP;
  const T scale = packed.scales[group], bias = packed.biases[group];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint8_t q = (word >> (4 * i)) & 0x0f;
    out[row * K + word_index * 8 + i] = scale * static_cast<T>(q) + bias;
  }
"""

# SAN-M's FSMN memory block ([F] sense_voice/model.py:152-165; `fsmn_memory_ops`) from the fused q/k/v
# projection, one thread per output: the value third of qkv (B, T, 3C), masked by the frame mask if FSMN_MASKED,
# through the depthwise convolution of K taps (zero outside the utterance's frames, LEFT of them before), plus
# itself, masked again. The taps are summed in float32 in order; the sum rounds to T, as MLX's convolution
# output does, before the residual add in T. Frames and rows are read from the input's shape, so one compiled
# source serves every length. It replaces MLX's pad (2 kernels), the two copies its convolution makes to put
# the channel groups first (mlx/backend/cuda/conv.cpp, group_transpose), cuDNN's convolution (captured into
# the CUDA graph at each call) and the add.
# `index` is the output this thread computes (set before the source: `fsmn_memory`'s a thread of its grid, and a
# thread of the blocks past the attention's in `scores_and_memory` and `weights_and_memory`: `_MEMORY_BLOCKS`).
_FSMN = """
  const int frames = qkv_shape[1];
  if (index >= (size_t)qkv_shape[0] * frames * C) {
    return;
  }
  const int channel = index % C;
  const int frame = (index / C) % frames;
  const size_t row = index / ((size_t)C * frames);
  const T* values = qkv + row * frames * 3 * C + 2 * C + channel;  // frame s's value: values[s * 3 * C]
  float sum = 0.0f;
#pragma unroll
  for (int tap = 0; tap < TAPS; ++tap) {
    const int source = frame + tap - LEFT;
    if (source >= 0 && source < frames) {
      float value = static_cast<float>(values[(size_t)source * 3 * C]);
#if FSMN_MASKED
      value = static_cast<float>(static_cast<T>(value * static_cast<float>(mask[row * frames + source])));
#endif
      sum += value * static_cast<float>(weight[channel * TAPS + tap]);
    }
  }
  T own = values[(size_t)frame * 3 * C];
#if FSMN_MASKED
  const float keep = static_cast<float>(mask[row * frames + frame]);
  own = static_cast<T>(static_cast<float>(own) * keep);
#endif
  T memory = static_cast<T>(static_cast<float>(static_cast<T>(sum)) + static_cast<float>(own));
#if FSMN_MASKED
  memory = static_cast<T>(static_cast<float>(memory) * keep);
#endif
  memory_out[index] = memory;
"""

# SAN-M's self-attention over every frame ([F] sense_voice/model.py:230-258; model.SANMAttention) from the
# fused q/k/v projection, (B, T, 3C) with C = HEADS x D: one block of WARPS warps per (row, head, query frame),
# each warp walking every WARPS-th key frame with an online softmax in float32 (running maximum, sum and weighted
# values), merged in warp order, as the decode attention above. The query is scaled in T before the products,
# as the model scales it (`q * D ** -0.5`, the scale rounded to T as MLX rounds a Python float). With
# FRAMES_MASKED, key frames whose mask is 0 (a padded batch's) are skipped. The context is written as
# (B, T, C), the layout the output projection reads: MLX's ops take three copies to put the heads first, two
# matmuls, a softmax and a copy back (float32 has no fused attention kernel in MLX on CUDA).
ENCODER_ATTENTION_WARPS = 4
# Opt-in (FUNASR_NANO_ENCODER_ATTENTION_KERNEL=1): its float32 numbers are not MLX's (bench/kernels.py on an
# H100: at most 1.7e-5 from them for values up to 7.4, and 3.3e-6 from float64 where they are 1.5e-5; in
# bf16, 80% identical, and as far from float64 as they are), and float32 stays the exact path by default.
# Used up to FRAME_ATTENTION_MAX_WORK query-key pairs a head (rows x frames^2), MLX's ops above it: each
# query's block reads every key and value (from L2: no tile is shared between queries), so the kernel's work
# grows as frames squared, while MLX's matmuls do it in tiles and one clip's short encoder is bound by the
# host (about 22 kernels a layer; the kernel replaces seven). Measured on an H100 (encoder + adaptor, warm,
# the kernel's time over the ops'): 0.80 at 1 x 167 frames (10 s), 0.93 at 4 x 167; 1.17 at 1 x 500,
# 1.19 at 8 x 300, 1.35 at 32 x 300, 1.66 at 1 x 1000 (BENCHMARKS.md). The bound lies between the two groups.
FRAME_ATTENTION_MAX_WORK = 2**17
_FRAME_ATTENTION = """
  constexpr int E = D / 32;
  constexpr int C = HEADS * D;
  const float NEG_INF = -cuda::std::numeric_limits<float>::infinity();
  const int frames = qkv_shape[1];
  const int frame = blockIdx.x % frames;
  const int head = (blockIdx.x / frames) % HEADS;
  const size_t row = blockIdx.x / ((size_t)frames * HEADS);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const T* heads = qkv + row * frames * 3 * C + head * D + lane * E;  // frame f's q at f * 3C, its k C after, v 2C

  float q[E];
  load_floats<E>(heads + (size_t)frame * 3 * C, q);
  const T scale = static_cast<T>(SCALE);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    q[i] = static_cast<float>(static_cast<T>(q[i] * static_cast<float>(scale)));
  }
  float running_max = NEG_INF, total = 0.0f, acc[E];
#pragma unroll
  for (int i = 0; i < E; ++i) {
    acc[i] = 0.0f;
  }
  for (int key = warp; key < frames; key += WARPS) {
#if FRAMES_MASKED
    if (static_cast<float>(mask[row * frames + key]) == 0.0f) {
      continue;
    }
#endif
    float k[E], v[E];
    load_floats<E>(heads + (size_t)key * 3 * C + C, k);
    float score = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      score += q[i] * k[i];
    }
    score = warp_total(score);
    load_floats<E>(heads + (size_t)key * 3 * C + 2 * C, v);
    softmax_add<E>(score, v, running_max, total, acc);
  }

  __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][D];
  share_softmax<WARPS, D, E>(warp, lane, running_max, total, acc, warp_max, warp_sum, warp_acc);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float m = NEG_INF;
    for (int w = 0; w < WARPS; ++w) {
      m = fmaxf(m, warp_max[w]);
    }
    float sum = 0.0f, value = 0.0f;
    for (int w = 0; w < WARPS; ++w) {
      const float factor = warp_max[w] == NEG_INF ? 0.0f : expf(warp_max[w] - m);  // a warp that saw no key
      sum += warp_sum[w] * factor;
      value += warp_acc[w][d] * factor;
    }
    out[((row * frames) + frame) * C + head * D + d] = static_cast<T>(value / sum);
  }
"""

# One decoder layer of a single row in kernels of its own plus MLX's: each RMSNorm is computed inside the
# matrix-vector product that reads it, each residual add inside the product whose output it adds, and the
# gate/up product hands on silu(gate) * up. Every number is MLX's: the products repeat MLX's one-row kernels
# step for step (mlx/backend/cuda/gemms/gemv.cu, gemv_impl with 4 elements a load; quantized/qmm/qmv.cu,
# qmv_kernel_impl), the norm repeats rms_norm_small (rms_norm.cu) and the elementwise steps call the functors
# MLX's compiled kernels call, each rounded to T where MLX's intermediate is T.
#
# Each projection shape (`ProjectionShape`) is a source of its own, everything in it a compile-time constant,
# and the kernel reads no array but its operands. Two forms that shared one source among shapes read their
# shape or case and the norm's eps from small arrays, which MLX keeps in CUDA managed memory, and they made
# a decode step slower on an H100 (2.77 and 4.33 ms a token against 2.02 and 2.19 in the same processes,
# BENCHMARKS.md). The price: MLX compiles each distinct source at its first use in a process (about a
# second each, mostly for its own header; it keeps no copy on disk), four for Qwen3-0.6B.
_PROJECTION_HEADER = """
#include <cooperative_groups/reduce.h>
#include "mlx/backend/cuda/device/binary_ops.cuh"
#include "mlx/backend/cuda/device/unary_ops.cuh"

namespace projection {
namespace cg = cooperative_groups;
using mlx::core::cu::unsafe_load_vector;
constexpr int ROWS_PER_BLOCK = 8;  // one warp per output row, as MLX's gemv and qmv

// The RMSNorm of x (K elements) into `out` (shared), as MLX's rms_norm_small<T, NORM_BLOCK, CHUNKS>: threads
// [0, NORM_BLOCK) each add the squares of CHUNKS vectors of 8, a warp reduce, then a reduce of the warps'.
template <typename T, int K, int NORM_BLOCK, int CHUNKS>
__device__ void rms_norm(const T* x, const T* weight, float eps, T* out) {
  __shared__ float warp_sums[32];
  __shared__ float normalizer;
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int index = threadIdx.x;
  if (index < NORM_BLOCK) {
    float sum = 0;
#pragma unroll
    for (int i = 0; i < CHUNKS; i++) {
      auto v = unsafe_load_vector<8>(x, NORM_BLOCK * i + index);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float t = static_cast<float>(v[j]);
        sum += t * t;
      }
    }
    sum = cg::reduce(warp, sum, cg::plus<float>{});
    if (warp.thread_rank() == 0) {
      warp_sums[warp.meta_group_rank()] = sum;
    }
  }
  __syncthreads();
  if (index < 32) {
    float sum = warp_sums[0];
    if constexpr (NORM_BLOCK > 32) {
      sum = cg::reduce(warp, index < NORM_BLOCK / 32 ? warp_sums[index] : 0.0f, cg::plus<float>{});
    }
    if (index == 0) {
      normalizer = rsqrt(sum / static_cast<float>(K) + eps);
    }
  }
  __syncthreads();
  if (index < NORM_BLOCK) {
#pragma unroll
    for (int i = 0; i < CHUNKS; i++) {
      auto v = unsafe_load_vector<8>(x, NORM_BLOCK * i + index);
      auto w = unsafe_load_vector<8>(weight, NORM_BLOCK * i + index);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float y = static_cast<float>(v[j]) * normalizer;
        out[(NORM_BLOCK * i + index) * 8 + j] = w[j] * static_cast<T>(y);
      }
    }
  }
  __syncthreads();
}

// Rows of a bf16/fp16 weight (n, K): MLX's gemv_impl<T, 8, 4> for one row.
template <typename T, int K>
struct DenseRows {
  const T* weight;
  __device__ float dot(int row, const T* vec) const {
    auto warp = cg::tiled_partition<32>(cg::this_thread_block());
    float sum = 0;
    for (int col = 4 * warp.thread_rank(); col < K; col += 32 * 4) {
      auto m = unsafe_load_vector<4>(weight + (size_t)row * K + col, 0);
      auto v = unsafe_load_vector<4>(vec + col, 0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        sum += static_cast<float>(m[j]) * static_cast<float>(v[j]);
      }
    }
    return cg::reduce(warp, sum, cg::plus<float>{});
  }
};

// Rows of MLX's affine quantization (weight packed BITS to an element, low bits first; a scale and a bias
// per GROUP): MLX's qmv_kernel_impl for one row. Below 8 bits it keeps its per-lane sums in T.
template <typename T, int K, int BITS, int GROUP>
struct AffineRows {
  const uint32_t* weight;
  const T* scales;
  const T* biases;
  // From one buffer of `rows` rows (pack_quantized): the weight, then the scales, then the biases.
  static __device__ AffineRows packed(const uint32_t* buffer, size_t rows) {
    const T* scales = reinterpret_cast<const T*>(buffer + rows * (K * BITS / 32));
    return {buffer, scales, scales + rows * (K / GROUP)};
  }
  static constexpr int PER_LANE = (sizeof(T) <= 2 && BITS <= 4) ? 16 : 8;
  using Sum = cuda::std::conditional_t<(BITS >= 8), float, T>;
  __device__ float dot(int row, const T* vec) const {
    auto warp = cg::tiled_partition<32>(cg::this_thread_block());
    const auto* packed = reinterpret_cast<const uint8_t*>(weight) + (size_t)row * (K * BITS / 8);
    const T* row_scales = scales + (size_t)row * (K / GROUP);
    const T* row_biases = biases + (size_t)row * (K / GROUP);
    Sum sums[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      sums[i] = static_cast<Sum>(0.0f);
    }
    for (int r = 0; r < K / (32 * PER_LANE); ++r) {
      const int idx = warp.thread_rank() * PER_LANE + r * 32 * PER_LANE;
      const T scale = row_scales[idx / GROUP], bias = row_biases[idx / GROUP];
      const uint64_t bits = *reinterpret_cast<const uint64_t*>(packed + idx * BITS / 8);
      T x[PER_LANE];
#pragma unroll
      for (int i = 0; i < PER_LANE; i += 8) {
        auto v = unsafe_load_vector<8>(vec + idx + i, 0);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          x[i + j] = v[j];
        }
      }
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) {
        const T q = static_cast<T>(static_cast<float>((bits >> (BITS * i)) & ((1u << BITS) - 1)));
        const T w = __hadd(__hmul(q, scale), bias);
        if constexpr (BITS >= 8) {
          sums[i] = fmaf(static_cast<float>(x[i]), static_cast<float>(w), sums[i]);
        } else {
          sums[i] = __hfma(x[i], w, sums[i]);
        }
      }
    }
    float sum = 0;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      sum += static_cast<float>(sums[i]);
    }
    return cg::reduce(warp, sum, cg::plus<float>{});
  }
};

// out = Rows . rms_norm(x): n outputs.
template <typename T, int K, int NORM_BLOCK, int CHUNKS, typename Rows>
__device__ void norm_project(const T* x, const T* norm_weight, float eps, Rows rows, T* out, int n) {
  __shared__ alignas(16) T normed[K];
  rms_norm<T, K, NORM_BLOCK, CHUNKS>(x, norm_weight, eps, normed);
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row < n) {
    const float sum = rows.dot(row, normed);
    if (threadIdx.x % 32 == 0) {
      out[row] = static_cast<T>(sum);
    }
  }
}

// out = residual + Rows . x: n outputs.
template <typename T, typename Rows>
__device__ void project_add(const T* x, Rows rows, const T* residual, T* out, int n) {
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row < n) {
    const float sum = rows.dot(row, x);
    if (threadIdx.x % 32 == 0) {
      out[row] = mlx::core::cu::Add{}(residual[row], static_cast<T>(sum));
    }
  }
}

// out = silu(gate) * up, gate and up the two halves (n each) of Rows . rms_norm(x): mlx-lm's swiglu.
template <typename T, int K, int NORM_BLOCK, int CHUNKS, typename Rows>
__device__ void norm_swiglu(const T* x, const T* norm_weight, float eps, Rows rows, T* out, int n) {
  __shared__ alignas(16) T normed[K];
  rms_norm<T, K, NORM_BLOCK, CHUNKS>(x, norm_weight, eps, normed);
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row < n) {
    const T gate = static_cast<T>(rows.dot(row, normed));
    const T up = static_cast<T>(rows.dot(row + n, normed));
    if (threadIdx.x % 32 == 0) {
      const T silu = mlx::core::cu::Multiply{}(gate, mlx::core::cu::Sigmoid{}(gate));
      out[row] = mlx::core::cu::Multiply{}(silu, up);
    }
  }
}
}  // namespace projection
"""
# The quantizations (bits, group size) whose products were compared with MLX's on a GPU. The reader takes
# 8 bits and other groups as MLX's qmv does, but nothing has compared those yet, so they keep MLX's ops.
MEASURED_QUANTIZATIONS = {(4, 64)}


class ProjectionShape(NamedTuple):
    """One projection as the kernels compute it: what its source is compiled for, besides the norm's eps and the
    output length."""

    mode: str  # "norm_project", "project_add" or "norm_swiglu" (`norm_project` and its kin)
    kind: str  # the weight's reader: "dense" or "affine"
    k: int  # input length
    norm_block: int  # MLX's rms_norm launch for k (`_norm_layout`), 0 without a norm
    chunks: int
    bits: int  # the affine quantization, 0 for dense
    group: int


def _norm_layout(k: int) -> tuple[int, int] | None:
    """MLX's rms_norm launch for rows of k bf16 elements (mlx/backend/cuda/rms_norm.cu, dispatch_num_chunks
    with 8 elements a load): (threads, loads per thread), or None where MLX takes a kernel not repeated here
    (rows not a whole number of loads per thread, or longer than 8192)."""
    vectors, remainder = divmod(k, 8)
    if remainder:
        return None
    if k <= 8 * 64:
        block, chunks = 64, 1
    elif vectors % 128 == 0 and vectors // 128 <= 8:
        block, chunks = 128, vectors // 128
    elif vectors % 64 == 0 and vectors // 64 <= 8:
        block, chunks = 64, vectors // 64
    else:
        return None
    return (block, chunks) if k == 8 * block * chunks else None


def _weight_kind(linear, k: int, dtype: mx.Dtype) -> str | None:
    """Which reader takes this layer's weight at input length k; None for a layer the kernels do not take
    (a bias, another dtype, a row length MLX's gemv reads other than 4 elements a load, a quantization
    other than MLX's affine in MEASURED_QUANTIZATIONS)."""
    if "bias" in linear:
        return None
    if type(linear) is nn.Linear:
        return "dense" if linear.weight.dtype == dtype and k % 128 == 0 else None
    if type(linear) is not nn.QuantizedLinear:
        return None
    per_lane = 16 if linear.bits == 4 else 8  # elements a lane reads per step in MLX's qmv
    return "affine" if _packed_affine(linear, dtype) and k % (32 * per_lane) == 0 else None


def _packed_affine(layer, dtype: mx.Dtype) -> bool:
    """Whether the kernels read this quantized layer (or embedding): MLX's affine mode, a quantization in
    MEASURED_QUANTIZATIONS, packed (`pack_quantized`), scales of the activations' dtype."""
    measured = (layer.bits, layer.group_size) in MEASURED_QUANTIZATIONS
    affine = getattr(layer, "mode", "affine") == "affine"
    return affine and measured and packed_quantized(layer) is not None and layer.scales.dtype == dtype


def embedding_fits(embedding, dtype: mx.Dtype) -> bool:
    """Whether `embed_affine` computes this embedding's rows for activations of this dtype: a 4-bit embedding the
    kernels read (`_packed_affine`)."""
    return type(embedding) is nn.QuantizedEmbedding and embedding.bits == 4 and _packed_affine(embedding, dtype)


def embed_affine(tokens: mx.array, embedding) -> mx.array:
    """embedding(tokens[:, None]) for tokens (B,) int32, in one kernel: (B, 1, K), an embedding
    `embedding_fits` takes."""
    rows, k = embedding.weight.shape[0], embedding.weight.shape[1] * 8
    kernel = _kernel(f"embed_affine_{k}", ("tokens", "buffer"), ("out",), _EMBED_AFFINE, _PROJECTION_HEADER)
    threads = tokens.shape[0] * (k // 8)
    return kernel(
        inputs=[tokens, packed_quantized(embedding)],
        template=[("T", embedding.scales.dtype), ("K", k), ("GROUP", embedding.group_size), ("ROWS", rows)],
        grid=(-(-threads // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(tokens.shape[0], 1, k)],
        output_dtypes=[embedding.scales.dtype],
    )[0]


def embed_affine_ops(tokens: mx.array, embedding) -> mx.array:
    """`embed_affine` as MLX's ops: the embedding layer's own call."""
    return embedding(tokens[:, None])


def pack_quantized(linear) -> None:
    """Keep an affine-quantized layer's (or embedding's) weight, scales and biases in one buffer, each a view into
    it (no memory added): the projection kernels then take one input where they took three, as for a dense layer
    (`embed_affine` likewise). Why: MLX's host work for a kernel grows with its inputs (about 0.45 us each on an
    H200, BENCHMARKS.md), and a decode step at 4 bits had 2 x 112 more than at bf16 while its GPU work was less.
    A layer it cannot pack (another kind, an odd number of scales) is left as it is, and the kernels leave it to
    MLX's ops."""
    kinds = (nn.QuantizedLinear, nn.QuantizedEmbedding)
    if type(linear) not in kinds or getattr(linear, "mode", "affine") != "affine" or "bias" in linear:
        return
    weight, scales, biases = linear.weight, linear.scales, linear.biases
    if scales.dtype.size != 2 or scales.size % 2 or weight.dtype != mx.uint32:
        return
    parts = [weight.reshape(-1), *(mx.view(part.reshape(-1), mx.uint32) for part in (scales, biases))]
    buffer = mx.concatenate(parts)
    ends = [0]
    for part in parts:
        ends.append(ends[-1] + part.size)
    linear.weight = buffer[: ends[1]].reshape(weight.shape)
    linear.scales = mx.view(buffer[ends[1] : ends[2]], scales.dtype).reshape(scales.shape)
    linear.biases = mx.view(buffer[ends[2] :], biases.dtype).reshape(biases.shape)
    mx.eval(linear.weight, linear.scales, linear.biases)
    views = (linear.weight, linear.scales, linear.biases)
    object.__setattr__(linear, "_packed", (buffer, views))  # a plain attribute: not a parameter


def packed_quantized(linear) -> mx.array | None:
    """The buffer `pack_quantized` made for this layer, if none of its arrays has been replaced since (a cast
    of the layer, `set_dtype`, replaces the scales and biases only)."""
    packed = linear.__dict__.get("_packed")
    if packed is None:
        return None
    buffer, views = packed
    return buffer if all(a is b for a, b in zip((linear.weight, linear.scales, linear.biases), views)) else None


def projection_shape(mode: str, linear, k: int, norm, dtype: mx.Dtype) -> ProjectionShape | None:
    """The shape of `mode` (`norm_project`, `project_add` or `norm_swiglu`) over this layer at input length k,
    after the RMSNorm `norm` (None for project_add), with activations of this dtype; None where the kernels do
    not repeat MLX's numbers for it."""
    kind = _weight_kind(linear, k, dtype)
    layout = (0, 0) if norm is None else _norm_layout(k)
    if kind is None or layout is None or (norm is not None and norm.weight.dtype != dtype):
        return None
    bits, group = (linear.bits, linear.group_size) if kind == "affine" else (0, 0)
    return ProjectionShape(mode, kind, k, *layout, bits, group)


def _projection_call(shape: ProjectionShape, eps: float) -> str:
    """The kernel body for this shape: one call of the templates above, with its constants."""
    if shape.kind == "dense":
        rows = f"projection::DenseRows<T, {shape.k}>{{weight}}"
    else:
        rows = f"projection::AffineRows<T, {shape.k}, {shape.bits}, {shape.group}>::packed(weight, ROWS)"
    if shape.mode == "project_add":
        return f"  projection::project_add<T>(x, {rows}, residual, out, N);\n"
    template = f"T, {shape.k}, {shape.norm_block}, {shape.chunks}"
    return f"  projection::{shape.mode}<{template}>(x, norm_weight, {_float_literal(eps)}, {rows}, out, N);\n"


def _project(mode: str, x: mx.array, linear, norm=None, residual: mx.array | None = None) -> mx.array:
    """One projection kernel for one row x (1, 1, K)."""
    if x.ndim != 3 or x.shape[:2] != (1, 1):
        raise ValueError(f"the projection kernels take one row (1, 1, K), got {x.shape}")
    shape = projection_shape(mode, linear, x.shape[-1], norm, x.dtype)
    if shape is None:
        raise ValueError(f"the projection kernels do not take this layer ({linear}): see projection_shape")
    rows = linear.weight.shape[0]
    inputs = {"x": x, **({"norm_weight": norm.weight} if norm is not None else {})}
    inputs["weight"] = linear.weight if shape.kind == "dense" else packed_quantized(linear)
    if residual is not None:
        inputs["residual"] = residual
    body = _projection_call(shape, norm.eps if norm is not None else 0.0)
    kernel = _kernel(f"{mode}_{shape.kind}_{shape.k}", tuple(inputs), ("out",), body, _PROJECTION_HEADER)
    n = rows // (2 if mode == "norm_swiglu" else 1)
    return kernel(
        inputs=list(inputs.values()),
        template=[("T", x.dtype), ("N", n), *([("ROWS", rows)] if shape.kind == "affine" else [])],
        grid=(-(-n // 8) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(*x.shape[:-1], n)],
        output_dtypes=[x.dtype],
    )[0]


def available() -> bool:
    """Whether the default device is a CUDA GPU and FUNASR_NANO_KERNELS is not 0."""
    if os.environ.get("FUNASR_NANO_KERNELS", "1") in ("", "0"):
        return False
    return mx.default_device().type == mx.DeviceType.gpu and mx.cuda.is_available()


def enabled(dtype: mx.Dtype) -> bool:
    """Whether the decode step uses these kernels for activations of this dtype (see the module's docstring)."""
    return dtype == mx.bfloat16 and available()


# A warp's lanes split a head into aligned vector loads of 2, 4 or 8 elements; `norm_rope_head` needs 2 at least,
# since a lane rotates pairs (i, i + D/2) it holds both of (with 1, a head of 32, it would write nothing).
HEAD_DIMS = (64, 128, 256)


def fits(head_dim: int, q_heads: int, kv_heads: int) -> bool:
    """Whether the kernels are written for these shapes: a head size in HEAD_DIMS (Qwen3-0.6B: 128 = 32 x 4),
    and query heads that share key heads evenly."""
    return head_dim in HEAD_DIMS and q_heads % kv_heads == 0


# The dtypes the encoder's kernels were compared with MLX's ops in on a GPU (bench/kernels.py).
ENCODER_DTYPES = (mx.float32, mx.bfloat16)


def encoder_choices() -> tuple:
    """What the encoder's layers take from here when traced (model.compiled_layer keys its traces by it):
    whether the kernels are on, whether the attention kernel is chosen and up to how much work, whether the
    attention's product kernels are on and from how many frames up to how much work, whether the linear
    layers' kernels are on and for how many rows, whether a norm after one comes from its last kernel, whether the FSMN
    memory comes from the scores' launch, the softmax from the scores' kernel (up to how much work, in how much shared
    memory) and the context from that kernel too, and the k a stage of the products (a template constant of theirs)."""
    return (
        available(),
        frame_attention_chosen(),
        FRAME_ATTENTION_MAX_WORK,
        ATTENTION_PRODUCTS,
        ATTENTION_PRODUCTS_MIN_FRAMES,
        ATTENTION_PRODUCTS_MAX_WORK,
        EXACT_LINEARS,
        LINEAR_MIN_ROWS,
        LINEAR_MAX_ROWS,
        NORM_IN_LINEAR,
        SCORES_WITH_MEMORY,
        SOFTMAX_IN_SCORES,
        SOFTMAX_IN_SCORES_MAX_WORK,
        SOFTMAX_ROWS_A_BLOCK,
        SHARED_MEMORY,
        CONTEXT_IN_WEIGHTS,
        tuple(STAGE_K.items()),
    )


def fsmn_fits(dtype: mx.Dtype) -> bool:
    """Whether `fsmn_memory` computes the FSMN block of activations of this dtype here."""
    return available() and dtype in ENCODER_DTYPES


def frame_attention_chosen() -> bool:
    """Whether FUNASR_NANO_ENCODER_ATTENTION_KERNEL (set, and not 0) opts in to `frame_attention` (FRAME_ATTENTION_MAX_WORK)."""
    return os.environ.get("FUNASR_NANO_ENCODER_ATTENTION_KERNEL", "0") not in ("", "0")  # as FUNASR_NANO_KERNELS reads


def frame_attention_fits(rows: int, frames: int, head_dim: int, dtype: mx.Dtype) -> bool:
    """Whether `frame_attention` computes SAN-M's attention of this call here: chosen, and small enough."""
    small = rows * frames * frames <= FRAME_ATTENTION_MAX_WORK
    return available() and frame_attention_chosen() and small and head_dim in HEAD_DIMS and dtype in ENCODER_DTYPES


def heads_fit(attention) -> bool:
    """Whether `step_heads` computes the queries, keys and values of this Qwen3 attention layer (model.Qwen3Attention):
    shapes it is written for, and one eps for the q and k norms (the kernel takes one)."""
    same_eps = attention.q_norm.eps == attention.k_norm.eps
    return same_eps and fits(attention.rope.dims, attention.n_heads, attention.n_kv_heads)


def _float_literal(value: float) -> str:
    return f"{float(value)!r}f"  # the double's repr, rounded to float by the compiler as MLX rounds a Python float


@lru_cache(maxsize=None)
def _kernel(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...], body: str, header: str = _HEADER):
    return mx.fast.cuda_kernel(
        name=name, input_names=list(inputs), output_names=list(outputs), source=body, header=header
    )


def decode_attention(
    queries: mx.array, kv: mx.array, step_kv: mx.array, first: mx.array, last: mx.array, scale: float
) -> mx.array:
    """Attention of one query per row over the slots first[row]..last[0] of a preallocated buffer whose
    slot last[0] is not written yet: queries (B, HQ, 1, D); kv (2, B, HKV, capacity, D), keys then values;
    step_kv (2, B, HKV, 1, D), this step's key and value (`step_heads`); first (B,) and last (1,) int32.
    Returns (B, HQ, 1, D), as `mx.fast.scaled_dot_product_attention` with the mask those slots make."""
    batch, heads, _, dims = queries.shape
    constants = f"  constexpr float SCALE = {_float_literal(scale)};\n  constexpr int WARPS = {ATTENTION_WARPS};\n"
    kernel = _kernel(
        f"decode_attention_{dims}_{ATTENTION_WARPS}",
        ("queries", "kv", "step_kv", "first", "last"),
        ("out",),
        constants + _ATTENTION_INDICES + _ATTENTION_FROM_HEADS + _ATTENTION_WALK,
    )
    return kernel(
        inputs=[queries, kv, step_kv, first, last],
        template=[("T", queries.dtype), ("D", dims), ("HQ", heads), ("HKV", kv.shape[2])],
        grid=(batch * heads * 32 * ATTENTION_WARPS, 1, 1),
        threadgroup=(32 * ATTENTION_WARPS, 1, 1),
        output_shapes=[queries.shape],
        output_dtypes=[queries.dtype],
    )[0]


def step_attention(qkv, q_norm, k_norm, rope, positions, kv, first, last, q_heads: int, kv_heads: int, scale: float):
    """`step_heads` and `decode_attention` in one kernel: from the fused q/k/v projection of one token per row,
    qkv (B, 1, (HQ + 2 HKV) D), at positions (B,), over the buffer kv (2, B, HKV, capacity, D) whose slots
    first[row]..last[0] - 1 are written. Returns the context (B, HQ, 1, D) and the step's key and value
    (2, B, HKV, 1, D), for the buffer's slot last[0]."""
    batch, dims = qkv.shape[0], rope.dims
    if dims > 32 * ATTENTION_WARPS:
        raise ValueError(f"step_attention merges heads of up to {32 * ATTENTION_WARPS} elements, got {dims}")
    constants = (
        f"  constexpr float SCALE = {_float_literal(scale)};\n  constexpr int WARPS = {ATTENTION_WARPS};\n"
        f"  constexpr float EPS = {_float_literal(q_norm.eps)};\n"
    )
    kernel = _kernel(
        f"step_attention_{dims}_{ATTENTION_WARPS}",
        ("qkv", "q_weight", "k_weight", "freqs", "positions", "kv", "first", "last"),
        ("out", "step_kv"),
        constants + _ATTENTION_INDICES + _STEP_ATTENTION_HEADS + _ATTENTION_WALK,
    )
    return tuple(
        kernel(
            inputs=[qkv, q_norm.weight, k_norm.weight, rope.periods, positions, kv, first, last],
            template=[("T", qkv.dtype), ("D", dims), ("HQ", q_heads), ("HKV", kv_heads)],
            grid=(batch * q_heads * 32 * ATTENTION_WARPS, 1, 1),
            threadgroup=(32 * ATTENTION_WARPS, 1, 1),
            output_shapes=[(batch, q_heads, 1, dims), (2, batch, kv_heads, 1, dims)],
            output_dtypes=[qkv.dtype, qkv.dtype],
        )
    )


def step_attention_ops(
    qkv, q_norm, k_norm, rope, positions, kv, first, last, q_heads: int, kv_heads: int, scale: float
):
    """`step_attention` as MLX's ops: `step_heads_ops`, then `decode_attention_ops`."""
    queries, step_kv = step_heads_ops(qkv, q_norm, k_norm, rope, positions, q_heads, kv_heads)
    return decode_attention_ops(queries, kv, step_kv, first, last, scale), step_kv


def write_step_kv(buffer: mx.array, step_kvs: list[mx.array], slot: mx.array) -> mx.array:
    """One clip's buffer of every layer's keys and values, buffer (layers, 2, 1, HKV, capacity, D), with each
    layer's step key and value, step_kvs (2, 1, HKV, 1, D) each, written at slot slot[0] (1,) int32: a copy, in
    one kernel."""
    layers, dims = len(step_kvs), buffer.shape[-1]
    expected = (2, 1, *buffer.shape[3:4], 1, dims)
    if buffer.ndim != 6 or buffer.shape[:3] != (layers, 2, 1) or any(kv.shape != expected for kv in step_kvs):
        raise ValueError(
            f"write_step_kv writes one clip's step: got {buffer.shape} and {[kv.shape for kv in step_kvs]}"
        )
    names = tuple(f"kv_{layer}" for layer in range(layers))
    source = _WRITE_STEP.replace("PARTS", f"const T* parts[{layers}] = {{{', '.join(names)}}};")
    kernel = _kernel(f"write_step_kv_{layers}", ("buffer", "slot", *names), ("out",), source)
    threads = buffer.size // 8
    return kernel(
        inputs=[buffer, slot, *step_kvs],
        template=[("T", buffer.dtype), ("D", dims)],
        grid=(-(-threads // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[buffer.shape],
        output_dtypes=[buffer.dtype],
    )[0]


def write_step_kv_ops(buffer: mx.array, step_kvs: list[mx.array], slot: mx.array) -> mx.array:
    """`write_step_kv` as MLX's ops: the step's keys and values stacked, then written at the slot."""
    return mx.slice_update(buffer, mx.stack(step_kvs), slot, axes=(4,))


def decode_attention_ops(
    queries: mx.array, kv: mx.array, step_kv: mx.array, first: mx.array, last: mx.array, scale: float
) -> mx.array:
    """`decode_attention` as MLX's ops: the step's key and value written to a copy of the buffer, then
    `masked_attention` over it."""
    keys, values = mx.slice_update(kv, step_kv, last, axes=(3,))
    return masked_attention(queries, keys, values, first, last, scale)


def masked_attention(
    queries: mx.array, keys: mx.array, values: mx.array, first: mx.array, last: mx.array, scale: float
) -> mx.array:
    """Attention of one query per row over the slots first[row]..last[0] of keys and values (B, HKV, S, D),
    with a mask of those slots. MLX's kernel for one query takes no array mask, so this falls back to
    separate matmul and softmax kernels."""
    slots = mx.arange(keys.shape[2])[None]
    valid = (slots >= first[:, None]) & (slots <= last)
    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=valid[:, None, None, :])


def step_heads(qkv: mx.array, q_norm, k_norm, rope, positions: mx.array, q_heads: int, kv_heads: int):
    """From a fused q/k/v projection of one token per row, qkv (B, 1, (HQ + 2 HKV) D): the queries
    (B, HQ, 1, D) after their RMSNorm and RoPE, and the step's key and value (2, B, HKV, 1, D), the key
    after its RMSNorm and RoPE (`q_norm`, `k_norm`, nn.RMSNorm, one eps; `rope`, model.UpstreamRoPE: all
    D dims rotated, not traditional, no scaling) at each row's position, positions (B,) int32."""
    batch, dims = qkv.shape[0], rope.dims
    kernel = _kernel(
        f"step_heads_{dims}",
        ("qkv", "q_weight", "k_weight", "freqs", "positions"),
        ("q_out", "kv_out"),
        f"  constexpr float EPS = {_float_literal(q_norm.eps)};\n" + _STEP_HEADS,
    )
    warps = batch * (q_heads + kv_heads)
    return tuple(
        kernel(
            inputs=[qkv, q_norm.weight, k_norm.weight, rope.periods, positions],
            template=[("T", qkv.dtype), ("D", dims), ("HQ", q_heads), ("HKV", kv_heads)],
            grid=(warps * 32, 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(batch, q_heads, 1, dims), (2, batch, kv_heads, 1, dims)],
            output_dtypes=[qkv.dtype, qkv.dtype],
        )
    )


def prompt_token_heads(qkv: mx.array, q_norm, k_norm, rope, q_heads: int, kv_heads: int):
    """`step_heads` of one prompt from position 0, qkv (1, L, W), each token a row: token-major queries
    (L, HQ, 1, D) and keys and values (2, L, HKV, 1, D), as `prompt_attention` reads them."""
    length = qkv.shape[1]
    positions = mx.arange(length, dtype=mx.int32)
    return step_heads(qkv.reshape(length, 1, -1), q_norm, k_norm, rope, positions, q_heads, kv_heads)


def prompt_cache_views(kv: mx.array) -> tuple[mx.array, mx.array]:
    """One prompt's token-major keys and values (2, L, HKV, 1, D) as a cache holds them: (1, HKV, L, D) each,
    views."""
    keys, values = kv.transpose(0, 3, 2, 1, 4)
    return keys, values


# One prompt's causal attention from position 0 in one kernel, reading `step_heads`' token-major outputs (each
# token a row): one block of PROMPT_ATTENTION_WARPS warps per (token, query head), each warp walking every
# WARPS-th key up to the token's own with an online softmax in float32, merged in warp order, as the decode
# attention. The context is written (1, L, HQ x D), the layout the output projection reads. It replaces MLX's
# two norms, two RoPEs, the copies around the attention and cuDNN's attention, which planned again at each new
# prompt length tried (31-35 ms from 61 to 97 tokens, 470 ms at 128, on an H200): nearly every clip has a new
# one. Measured on an H200 (BENCHMARKS.md): bf16 error against float64 the same as MLX's path (at most 0.029),
# a warm prefill 5.6 against 6.1 ms, a prefill at a new length 10.5 against 54 ms, and the first token at a
# new clip length after 36-42 against 76-81 ms. Its attention alone took more GPU time than cuDNN's (7.1
# against 6.0 us a layer at 44 tokens, a 10 s clip's prompt): the gain is the launches it saves. Its speed
# near the bound is not measured.
# Bounded (PROMPT_ATTENTION_MAX_TOKENS): each query reads all its keys (no tile shared), so work grows as L^2.
PROMPT_ATTENTION = True
PROMPT_ATTENTION_MAX_TOKENS = 256
PROMPT_ATTENTION_WARPS = 4
_PROMPT_ATTENTION = (
    """
  constexpr int E = D / 32;
  const float NEG_INF = -cuda::std::numeric_limits<float>::infinity();
  const int row_head = blockIdx.x;  // (token, query head), as _WARP_MERGE names the block
  const int token = row_head / HQ;
  const int kv_head = (row_head % HQ) / (HQ / HKV);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int length = kv_shape[1];

  float q[E];
  load_floats<E>(queries + (size_t)row_head * D + lane * E, q);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    q[i] *= SCALE;
  }
  const T* keys = kv + (size_t)kv_head * D + lane * E;  // token s's key at s * HKV * D
  const T* values = keys + (size_t)length * HKV * D;  // the values follow the keys
  float running_max = NEG_INF, total = 0.0f, acc[E];
#pragma unroll
  for (int i = 0; i < E; ++i) {
    acc[i] = 0.0f;
  }
  for (int key = warp; key <= token; key += WARPS) {
    float k[E], v[E];
    load_floats<E>(keys + (size_t)key * HKV * D, k);
    float score = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      score += q[i] * k[i];
    }
    score = warp_total(score);
    load_floats<E>(values + (size_t)key * HKV * D, v);
    softmax_add<E>(score, v, running_max, total, acc);
  }
"""
    + _WARP_MERGE
)


def prompt_attention_fits(attention, batch: int, length: int, offset, mask, dtype: mx.Dtype) -> bool:
    """Whether `prompt_attention` computes this call of a Qwen3 attention layer: one prompt from position 0
    (mlx-lm's "causal" mask, no padding), within PROMPT_ATTENTION_MAX_TOKENS, where the decode kernels run."""
    one_prompt = batch == 1 and isinstance(offset, int) and offset == 0 and isinstance(mask, str) and mask == "causal"
    small = length <= PROMPT_ATTENTION_MAX_TOKENS
    merged = attention.rope.dims <= 32 * PROMPT_ATTENTION_WARPS  # _WARP_MERGE writes one element a thread
    return PROMPT_ATTENTION and one_prompt and small and merged and enabled(dtype) and heads_fit(attention)


def prompt_attention(qkv: mx.array, q_norm, k_norm, rope, q_heads: int, kv_heads: int, scale: float):
    """One prompt from position 0, qkv (1, L, (HQ + 2 HKV) D), in two kernels (`step_heads` with each token a
    row, then the causal attention): the context (1, L, HQ D) and, for the cache, the keys and values
    (1, HKV, L, D) each, as views."""
    length, dims = qkv.shape[1], rope.dims
    if dims > 32 * PROMPT_ATTENTION_WARPS:
        raise ValueError(f"prompt_attention merges heads of up to {32 * PROMPT_ATTENTION_WARPS} elements, got {dims}")
    queries, kv = prompt_token_heads(qkv, q_norm, k_norm, rope, q_heads, kv_heads)
    constants = (
        f"  constexpr float SCALE = {_float_literal(scale)};\n  constexpr int WARPS = {PROMPT_ATTENTION_WARPS};\n"
    )
    kernel = _kernel(
        f"prompt_attention_{dims}_{PROMPT_ATTENTION_WARPS}", ("queries", "kv"), ("out",), constants + _PROMPT_ATTENTION
    )
    context = kernel(
        inputs=[queries, kv],
        template=[("T", qkv.dtype), ("D", dims), ("HQ", q_heads), ("HKV", kv_heads)],
        grid=(length * q_heads * 32 * PROMPT_ATTENTION_WARPS, 1, 1),
        threadgroup=(32 * PROMPT_ATTENTION_WARPS, 1, 1),
        output_shapes=[(1, length, q_heads * dims)],
        output_dtypes=[qkv.dtype],
    )[0]
    return (context, *prompt_cache_views(kv))


def prompt_attention_ops(qkv: mx.array, q_norm, k_norm, rope, q_heads: int, kv_heads: int, scale: float):
    """`prompt_attention` as MLX's ops: as mlx-lm's Qwen3 attention computes a prompt from position 0."""
    length = qkv.shape[1]
    queries, keys = qk_norm_rope_ops(qkv, q_norm, k_norm, rope, 0, q_heads, kv_heads)
    values = value_heads(qkv, q_heads, kv_heads, rope.dims)
    context = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask="causal")
    return context.transpose(0, 2, 1, 3).reshape(1, length, -1), keys, values


def step_heads_ops(qkv: mx.array, q_norm, k_norm, rope, positions, q_heads: int, kv_heads: int):
    """`step_heads` as MLX's ops, for any length L: (B, HQ, L, D) queries and (2, B, HKV, L, D) keys and values."""
    queries, keys = qk_norm_rope_ops(qkv, q_norm, k_norm, rope, positions, q_heads, kv_heads)
    return queries, mx.stack([keys, value_heads(qkv, q_heads, kv_heads, rope.dims)])


def qk_norm_rope_ops(qkv: mx.array, q_norm, k_norm, rope, positions, q_heads: int, kv_heads: int):
    """The queries and keys of a fused q/k/v projection as mlx-lm's Qwen3 attention computes them
    (mlx_lm/models/qwen3.py:79-90), for any length L: qkv (B, L, (HQ + 2 HKV) D), positions an int or (B,),
    returns (B, HQ, L, D), (B, HKV, L, D)."""
    batch, length, _ = qkv.shape
    queries, keys, _ = mx.split(qkv, [q_heads * rope.dims, (q_heads + kv_heads) * rope.dims], axis=-1)
    queries = q_norm(queries.reshape(batch, length, q_heads, -1)).transpose(0, 2, 1, 3)
    keys = k_norm(keys.reshape(batch, length, kv_heads, -1)).transpose(0, 2, 1, 3)
    return rope(queries, offset=positions), rope(keys, offset=positions)


def value_heads(qkv: mx.array, q_heads: int, kv_heads: int, head_dim: int) -> mx.array:
    """The v part of a fused q/k/v projection (B, L, (HQ + 2 HKV) D) as (B, HKV, L, D)."""
    batch, length, _ = qkv.shape
    values = qkv[..., (q_heads + kv_heads) * head_dim :]
    return values.reshape(batch, length, kv_heads, -1).transpose(0, 2, 1, 3)


def norm_project(x: mx.array, norm, linear) -> mx.array:
    """linear(norm(x)) for one row x (1, 1, K), in one kernel: `norm` an nn.RMSNorm, `linear` a layer
    `projection_shape` takes."""
    return _project("norm_project", x, linear, norm=norm)


def project_add(x: mx.array, linear, residual: mx.array) -> mx.array:
    """residual + linear(x) for one row x (1, 1, K), in one kernel."""
    return _project("project_add", x, linear, residual=residual)


def norm_swiglu(x: mx.array, norm, linear) -> mx.array:
    """mlx-lm's swiglu(gate, up) of linear(norm(x)) split in halves, for one row x (1, 1, K), in one kernel:
    `linear` the gate and up projections fused (model.FusedLinear)."""
    return _project("norm_swiglu", x, linear, norm=norm)


def norm_project_ops(x: mx.array, norm, linear) -> mx.array:
    return linear(norm(x))


def project_add_ops(x: mx.array, linear, residual: mx.array) -> mx.array:
    return residual + linear(x)


def norm_swiglu_ops(x: mx.array, norm, linear) -> mx.array:
    return swiglu(*mx.split(linear(norm(x)), 2, axis=-1))


_FSMN_THREAD = "  const size_t index = (size_t)blockIdx.x * blockDim.x + threadIdx.x;\n"


def _memory_inputs(qkv: mx.array, weight: mx.array, mask: mx.array | None) -> tuple[int, int, dict]:
    """The FSMN block's channels and taps (weight (C, K, 1)), and a kernel's inputs for it: qkv (B, T, 3C), the weight,
    the mask where given."""
    channels, taps, _ = weight.shape
    if qkv.shape[-1] != 3 * channels:
        raise ValueError(f"qkv's last axis should be 3 x {channels}, got {qkv.shape[-1]}")
    return channels, taps, {"qkv": qkv, "weight": weight, **({"mask": mask} if mask is not None else {})}


def fsmn_memory(qkv: mx.array, weight: mx.array, left: int, mask: mx.array | None = None) -> mx.array:
    """SAN-M's FSMN memory block (`fsmn_memory_ops`) of the value third of a fused q/k/v projection qkv (B, T, 3C), in one kernel:
    weight the depthwise convolution's (C, K, 1), `left` its zero frames before the first, mask (B, T) or None.
    Returns (B, T, C) in qkv's dtype."""
    batch, frames, _ = qkv.shape
    channels, taps, inputs = _memory_inputs(qkv, weight, mask)
    masked = mask is not None
    source = f"#define FSMN_MASKED {int(masked)}\n" + _FSMN_THREAD + _FSMN  # the masked form reads a third input
    name = f"fsmn_memory_{'masked' if masked else 'whole'}"
    kernel = _kernel(name, tuple(inputs), ("memory_out",), source, header="")  # it needs none of _HEADER
    threads = batch * frames * channels
    return kernel(
        inputs=list(inputs.values()),
        template=[("T", qkv.dtype), ("C", channels), ("TAPS", taps), ("LEFT", left)],
        grid=(-(-threads // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(batch, frames, channels)],
        output_dtypes=[qkv.dtype],
    )[0]


def fsmn_memory_ops(qkv: mx.array, weight: mx.array, left: int, mask: mx.array | None = None) -> mx.array:
    """`fsmn_memory` as MLX's ops: SAN-M's FSMN memory block ([F] sense_voice/model.py:152-165). Upstream zeroes
    padded frames before and after it, so a valid frame sees zeros past its utterance's end, as at B = 1."""
    values = mx.split(qkv, 3, axis=-1)[2]
    if mask is not None:
        values = values * mask[..., None]
    taps = weight.shape[1]
    padded = mx.pad(values, [(0, 0), (left, taps - 1 - left), (0, 0)])
    memory = mx.conv1d(padded, weight, groups=weight.shape[0]) + values
    return memory if mask is None else memory * mask[..., None]


def frame_attention(qkv: mx.array, heads: int, mask: mx.array | None = None) -> mx.array:
    """SAN-M's multi-head self-attention of a fused q/k/v projection qkv (B, T, 3C) in one kernel: every frame's
    query, scaled by head_dim ** -0.5, over the key frames (those whose mask (B, T) is not 0). Returns the
    context (B, T, C), heads side by side, in qkv's dtype."""
    batch, frames, width = qkv.shape
    dims = width // (3 * heads)
    if dims not in HEAD_DIMS:
        raise ValueError(f"frame_attention takes heads of {HEAD_DIMS} elements, got {dims}")
    masked = mask is not None
    inputs = {"qkv": qkv, **({"mask": mask} if masked else {})}
    source = f"#define FRAMES_MASKED {int(masked)}\n  constexpr float SCALE = {_float_literal(dims**-0.5)};\n"
    source += f"  constexpr int WARPS = {ENCODER_ATTENTION_WARPS};\n" + _FRAME_ATTENTION
    kernel = _kernel(f"frame_attention_{'masked' if masked else 'whole'}", tuple(inputs), ("out",), source)
    return kernel(
        inputs=list(inputs.values()),
        template=[("T", qkv.dtype), ("D", dims), ("HEADS", heads)],
        grid=(batch * heads * frames * 32 * ENCODER_ATTENTION_WARPS, 1, 1),
        threadgroup=(32 * ENCODER_ATTENTION_WARPS, 1, 1),
        output_shapes=[(batch, frames, heads * dims)],
        output_dtypes=[qkv.dtype],
    )[0]


def key_mask(mask: mx.array | None) -> mx.array | None:
    """A (B, T) frame mask as an attention mask over keys, (B, 1, 1, T) boolean."""
    return None if mask is None else (mask > 0)[:, None, None, :]


def frame_heads(qkv: mx.array, heads: int) -> tuple[mx.array, mx.array, mx.array]:
    """q, k and v of a fused projection qkv (B, T, 3C), each (B, heads, T, C / heads)."""
    batch, frames, _ = qkv.shape
    return tuple(t.reshape(batch, frames, heads, -1).transpose(0, 2, 1, 3) for t in mx.split(qkv, 3, axis=-1))


def frame_attention_ops(qkv: mx.array, heads: int, mask: mx.array | None = None) -> mx.array:
    """`frame_attention` as MLX's ops: SAN-M scales q before the q @ k^T product (the adaptor scales after it)."""
    batch, frames, _ = qkv.shape
    q, k, v = frame_heads(qkv, heads)
    q = q * (q.shape[-1] ** -0.5)
    context = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=key_mask(mask))
    return context.transpose(0, 2, 1, 3).reshape(batch, frames, -1)


# SAN-M's attention products in float32 with the numbers of MLX's (cuBLAS's) by default: MLX's fallback attention
# (float32 has no fused attention kernel in MLX on CUDA; mlx/fast.cpp) copies q, k and v to put the heads first,
# multiplies q by its scale, runs two cuBLAS matmuls around its softmax and copies the context back. cuBLAS ran
# both products at the encoder's shapes as single chains, one accumulator per output adding the products in k
# order from 0 (no split-K: bench/exact_gemm.py, on an H100 at 167 and 500 frames), so the kernels here keep that
# order: `attention_scores` reads q and k where the fused projection wrote them, scaling q as the model does
# (rounded to float32), and `attention_context` writes the context where the output projection reads it. With
# MLX's softmax between them a layer's attention is 3 kernels instead of about 7, the same numbers bit for bit
# (a clip of 3, 10 and 30 s and a padded batch of 4 x 10 s, and the transcription's tokens: BENCHMARKS.md).
# Why by hand: MLX builds a cublasLt descriptor and runs its heuristic at every matmul, then captures the call
# into its CUDA graph (mlx/backend/cuda/gemms/cublas_gemm.cpp, cublas_utils.cpp: several times a custom kernel's
# host time), and one clip's encoder is bound by the host. With their operands staged (`staged_product`) the two
# kernels take less GPU time than MLX's copies and matmuls at 10 s (on an H100, 9.7 + 8.5 us a layer) and as much at
# 30 s (the encoder's GPU time 13.7 ms either way), so they are used up to ATTENTION_PRODUCTS_MAX_WORK (rows x
# frames^2: one clip of up to about 31 s, 4 of 15 s, where the sweep found MLX's numbers at every size tried; timed
# above 2^17 only for one clip of 30 s); MLX's ops above it.
#
# The linear layers are not single chains: cuBLAS splits their k by shape (`split_linear`, below).
#
# Tiles: 32 x 32 outputs a block (the scores in 64 x 64 where that still gives a block to each of an H100's 132
# SMs), STAGE_K of k a stage through shared memory (`staged_product`), 4 x 4 (8 x 4) adjacent outputs a thread read
# four at a time. MODE 1, the scores of one (row, head) per grid plane: q scaled times k; with FRAMES_MASKED a key
# frame whose mask is not > 0 scores float32's lowest (MLX's fallback: `where(mask, scores, finfo.min)`). MODE 2, the
# softmax weights (B, HEADS, T, T) times v, written as (B, T, C). Frames are read from qkv's shape, so one source
# serves every length.
ATTENTION_PRODUCTS = True
ATTENTION_PRODUCTS_MAX_WORK = 2**18
# From 17 frames (1 s): bench/exact_gemm.py's sweep found MLX's numbers at every size it tried on an H100, one clip
# of 4 to 512 frames and masked batches of 2 to 32 rows from 17 frames, up to 2^18. (Under 4, MLX runs another
# kernel.)
ATTENTION_PRODUCTS_MIN_FRAMES = 17
# The k a stage of `staged_product` in each of the encoder's product and linear kernels: a multiple of cuBLAS's k tile
# (8), at most 64 (two operands' 64 x 64 tiles of it, 35 KB, within the 48 KB of shared memory a block declares
# statically). The numbers do not depend on it; the time does. Measured in the encoder at 10 s on an H100, a kernel's
# GPU time (us) with stages of 64 / 32 / the first form's (16 for the products, 8 for the linears): the scores 9.8 /
# 12.6 / 15.3, the context 10.1 / 8.5 / 21.8, the 64 x 64 and 32 x 32 linears 18.4, 17.7 / 17.4, 16.8 / 16.1, 15.0
# (BENCHMARKS.md). So each takes its fastest.
STAGE_K = {"scores": 64, "context": 32, "linear": 8}
# One k of a tiled float32 product: this thread's TM rows of a and TN columns of b (adjacent, four at a load) from
# k-major tiles in shared memory (rows padded by 4), each product added to its output's fma chain.
TILE_STEP = """
template <int BK, int A_WIDTH, int B_WIDTH, int TM, int TN>
__device__ inline void tile_step(
    const float (&as)[BK][A_WIDTH], const float (&bs)[BK][B_WIDTH], int kk, int tx, int ty, float (&acc)[TM][TN]) {
  float x[TM], y[TN];
#pragma unroll
  for (int i = 0; i < TM; i += 4) {
    const float4 v = *reinterpret_cast<const float4*>(&as[kk][ty * TM + i]);
    x[i] = v.x, x[i + 1] = v.y, x[i + 2] = v.z, x[i + 3] = v.w;
  }
#pragma unroll
  for (int j = 0; j < TN; j += 4) {
    const float4 v = *reinterpret_cast<const float4*>(&bs[kk][tx * TN + j]);
    y[j] = v.x, y[j + 1] = v.y, y[j + 2] = v.z, y[j + 3] = v.w;
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      acc[i][j] = __fmaf_rn(x[i], y[j], acc[i][j]);
    }
  }
}

// A block's BM x BN outputs of a float32 product, this thread's TM x TN of them added into acc: k runs through shared
// memory in stages of BK rows, stage s's row kk being k = k_at(s, kk), of which the first stage_rows(s) are added
// (a prefix: nothing past the end, not even a zero). a_at(m, k) and b_at(n, k) read the operands (zero past their
// rows). Each output is one fma chain over the stages' rows in order, whatever BK is: BK sets only how many loads
// are in flight at once, all of the next stage's, into registers while this one is added (one stage at a time
// left the kernels waiting on memory: 15-22 us a call where cuBLAS's pipelined kernels take 6). B_N_MAJOR: b's
// consecutive n are adjacent in memory (else its consecutive k), so consecutive threads load along it.
template <int BM, int BN, int BK, int TM, int TN, bool B_N_MAJOR, class Rows, class KAt, class AAt, class BAt>
__device__ inline void staged_product(
    int stages, Rows stage_rows, KAt k_at, AAt a_at, BAt b_at, int m0, int n0, float (&acc)[TM][TN]) {
  constexpr int THREADS_N = BN / TN, THREADS = (BM / TM) * THREADS_N;
  // A thread loads one k of a stage at rows (or columns) a fixed step apart; with B_N_MAJOR, b's one column at k a
  // fixed step apart.
  constexpr int A_LOADS = BM * BK / THREADS, A_STEP = THREADS / BK;
  constexpr int B_LOADS = BN * BK / THREADS, B_STEP = B_N_MAJOR ? THREADS / BN : THREADS / BK;
  static_assert(THREADS % BK == 0 && THREADS % (B_N_MAJOR ? BN : BK) == 0, "each thread loads alike");
  static_assert(A_LOADS * THREADS == BM * BK && B_LOADS * THREADS == BN * BK && A_LOADS > 0 && B_LOADS > 0,
                "the threads load every element of a stage");
  __shared__ __align__(16) float as[BK][BM + 4], bs[BK][BN + 4];  // k-major; rows padded, 16-byte aligned
  const int tx = threadIdx.x % THREADS_N, ty = threadIdx.x / THREADS_N;
  const int a_k = threadIdx.x % BK, a_m = threadIdx.x / BK;
  const int b_k = B_N_MAJOR ? threadIdx.x / BN : threadIdx.x % BK;
  const int b_n = B_N_MAJOR ? threadIdx.x % BN : threadIdx.x / BK;
  float ra[A_LOADS], rb[B_LOADS];
  auto fetch = [&](int s) {
    const int rows = stage_rows(s);
    const bool a_in = a_k < rows;
    const int a_at_k = k_at(s, a_k);
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
      ra[i] = a_in ? a_at(m0 + a_m + i * A_STEP, a_at_k) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
      if (B_N_MAJOR) {
        const int kk = b_k + i * B_STEP;
        rb[i] = kk < rows ? b_at(n0 + b_n, k_at(s, kk)) : 0.0f;
      } else {
        rb[i] = b_k < rows ? b_at(n0 + b_n + i * B_STEP, k_at(s, b_k)) : 0.0f;
      }
    }
  };
  if (stages > 0) {
    fetch(0);
  }
  for (int s = 0; s < stages; ++s) {
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
      as[a_k][a_m + i * A_STEP] = ra[i];
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
      if (B_N_MAJOR) {
        bs[b_k + i * B_STEP][b_n] = rb[i];
      } else {
        bs[b_k][b_n + i * B_STEP] = rb[i];
      }
    }
    __syncthreads();
    const int rows = stage_rows(s);
    if (s + 1 < stages) {
      fetch(s + 1);  // in flight while this stage is added
    }
    if (rows == BK) {
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        tile_step(as, bs, kk, tx, ty, acc);
      }
    } else {
      for (int kk = 0; kk < rows; ++kk) {
        tile_step(as, bs, kk, tx, ty, acc);
      }
    }
    __syncthreads();
  }
}
"""
_ATTENTION_PRODUCTS = """
  constexpr int THREADS_N = BN / TN;
  const int tx = threadIdx.x % THREADS_N, ty = threadIdx.x / THREADS_N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, z = blockIdx.z;
  const int frames = qkv_shape[1], width = qkv_shape[2] / 3, head = z % HEADS;
  const size_t row = z / HEADS, frame = 3 * width;
  const float* frame_rows = qkv + row * frames * frame + head * D;  // frame f's q at f * 3C, k at + C, v at + 2C
#if MODE == 1
  constexpr int K = D;
  const int N = frames;
  auto a_at = [&](int m, int k) { return m < frames ? __fmul_rn(frame_rows[m * frame + k], SCALE) : 0.0f; };
  auto b_at = [&](int n, int k) { return n < N ? frame_rows[n * frame + width + k] : 0.0f; };
#else
  const int K = frames;
  constexpr int N = D;
  const float* weights_plane = weights + (size_t)z * frames * frames;
  auto a_at = [&](int m, int k) { return m < frames ? weights_plane[(size_t)m * frames + k] : 0.0f; };
  auto b_at = [&](int n, int k) { return n < N ? frame_rows[k * frame + 2 * width + n] : 0.0f; };
#endif
  float acc[TM][TN] = {};
  staged_product<BM, BN, BK, TM, TN, MODE == 2>(
      (K + BK - 1) / BK, [&](int s) { return min(BK, K - s * BK); }, [](int s, int kk) { return s * BK + kk; },
      a_at, b_at, m0, n0, acc);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty * TM + i;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx * TN + j;
      if (m >= frames || n >= N) {
        continue;
      }
#if MODE == 1
      float value = acc[i][j];
#if FRAMES_MASKED
      if (!(static_cast<float>(mask[row * frames + n]) > 0.0f)) {
        value = cuda::std::numeric_limits<float>::lowest();
      }
#endif
      out[((size_t)z * frames + m) * frames + n] = value;
#else
      out[(row * frames + m) * HEADS * D + head * D + n] = acc[i][j];
#endif
    }
  }
"""

# The attention kernels' blocks past their planes (z from B x HEADS) compute SAN-M's FSMN memory from the same qkv, a
# thread an output in `fsmn_memory`'s order (its source), so that the layer's readers of the projection take one launch:
# the blocks of the two never wait on each other, and a launch costs the host more than either's GPU time at 10 s.
_MEMORY_BLOCKS = (
    """
  if (blockIdx.z >= qkv_shape[0] * HEADS) {
    const size_t block = ((size_t)(blockIdx.z - qkv_shape[0] * HEADS) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const size_t index = block * blockDim.x + threadIdx.x;
"""
    + _FSMN
    + """
    return;
  }
"""
)
# Whether `attention_products_and_memory` computes the memory in the scores' launch (else in `fsmn_memory`'s own).
SCORES_WITH_MEMORY = True

# The softmax's weights straight from q and k, MLX's numbers bit for bit: a block holds R query frames of one (row,
# head), each row with the threads MLX's softmax gives it (mlx/backend/cuda/softmax.cu: dispatch_block_dim over a
# quarter of the frames, BD). The block stages the head's keys through shared memory, KT frames at a time (each read
# once, coalesced), a thread computing one score of a query and a staged key as one fma chain over ascending k from
# 0 (`_ATTENTION_PRODUCTS`'s order, q scaled first); thread t of a row then takes the scores of keys 4t..4t+3 (a
# masked key float32's lowest, -inf past the row), the very values MLX's softmax has thread t load, and runs the
# softmax in its order (`_ROW_SOFTMAX`). So the scores never reach memory and the softmax takes no launch of its own;
# with CONTEXT_IN_WEIGHTS the context is computed there too. Blocks past the planes compute the FSMN memory
# (`_MEMORY_BLOCKS`): a SAN-M layer's attention and memory are one launch. On an H200, GPU us a layer (CUPTI): at 167
# frames (10 s) 20.1 for this kernel with the context, against 12.7 + 8.5 with the context apart and 11.7 + 2.3 + 8.5
# for the scores' kernel, MLX's softmax and the context; at 50 frames (3 s) 11.6-14.9, against 8.2 + 4.6; for 4 x 167
# padded 48, against 26 + 11.4 and 17 + 3.9 + 11.4 (BENCHMARKS.md). It spares a launch a layer against the weights
# and the context apart, two against the three kernels, and one clip's encoder was bound by the host in every run so
# far (BENCHMARKS.md), a padded batch's by the GPU. So it runs for one clip up to SOFTMAX_IN_SCORES_MAX_WORK (frames^2:
# up to 167 frames, 10 s, the longest measured), the scores' kernel, MLX's softmax and the context kernel for a batch
# or above it. The keys are read four floats at a time, so qkv's data must start 16-byte aligned: MLX's allocations
# do, and the model's qkv is a linear layer's fresh output.
SOFTMAX_IN_SCORES = True
SOFTMAX_IN_SCORES_MAX_WORK = 167 * 167
SOFTMAX_ROWS_A_BLOCK = 4  # R, where a row's threads leave room (at most 1024 a block)
# With CONTEXT_IN_WEIGHTS the kernel goes on to the context (the weights times v), its order `attention_context`'s:
# the weights never reach memory.
CONTEXT_IN_WEIGHTS = True
_ATTENTION_WEIGHTS = """
  static_assert(D % 4 == 0, "keys are read four floats at a time");
  constexpr int THREADS = R * BD, PITCH = D + 4;  // a staged key's row: 16-byte aligned, and (D % 8 == 0) 8
                                                  // threads' float4 reads of 8 keys' rows hit distinct banks
  const int frames = qkv_shape[1], width = qkv_shape[2] / 3, z = blockIdx.z, head = z % HEADS;
  const size_t row = z / HEADS, frame = 3 * width;
  const float* frame_rows = qkv + row * frames * frame + head * D;  // frame f's q at f * 3C, k at + C
  const int r = threadIdx.x / BD, t = threadIdx.x % BD;
  __shared__ __align__(16) float queries[R][D], keys[KT][PITCH], scores[R][4 * BD];
  for (int i = threadIdx.x; i < R * D; i += THREADS) {
    const int query = blockIdx.x * R + i / D;
    queries[i / D][i % D] = query < frames ? __fmul_rn(frame_rows[(size_t)query * frame + i % D], SCALE) : 0.0f;
  }
  auto stage = [&](int first, int offset) {  // frames first.. first + KT - 1 of k (offset C) or v (2C), coalesced
    __syncthreads();  // what the last stage held read (and the queries, or the weights, written)
    for (int i = threadIdx.x; i < KT * (D / 4); i += THREADS) {
      const int j = i / (D / 4), k = 4 * (i % (D / 4)), n = first + j;
      const float4 zero = {0.0f, 0.0f, 0.0f, 0.0f};
      *reinterpret_cast<float4*>(&keys[j][k]) =
          n < frames ? *reinterpret_cast<const float4*>(frame_rows + (size_t)n * frame + offset + k) : zero;
    }
    __syncthreads();
  };
  for (int first = 0; first < frames; first += KT) {  // KT keys a stage, each read once
    stage(first, width);
    for (int i = threadIdx.x; i < R * KT; i += THREADS) {  // a thread a score: query i / KT, key first + i % KT
      const int query = i / KT, j = i % KT;
      if (first + j < frames) {
        float acc = 0.0f;
        for (int k = 0; k < D; k += 4) {
          const float4 q = *reinterpret_cast<const float4*>(&queries[query][k]);
          const float4 key = *reinterpret_cast<const float4*>(&keys[j][k]);
          acc = __fmaf_rn(q.w, key.w, __fmaf_rn(q.z, key.z, __fmaf_rn(q.y, key.y, __fmaf_rn(q.x, key.x, acc))));
        }
        scores[query][first + j] = acc;
      }
    }
  }
  __syncthreads();
  const float4 held = *reinterpret_cast<const float4*>(&scores[r][4 * t]);
  float values[4] = {held.x, held.y, held.z, held.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = 4 * t + i;
    values[i] = n < frames ? values[i] : -cuda::std::numeric_limits<float>::infinity();
#if FRAMES_MASKED
    if (n < frames && !(static_cast<float>(mask[row * frames + n]) > 0.0f)) {
      values[i] = cuda::std::numeric_limits<float>::lowest();
    }
#endif
  }
  row_softmax<R, BD>(values, r, t);
#if CONTEXT
  // The context of the block's R query frames, each output one fma chain over the key frames in order from 0
  // (`_ATTENTION_PRODUCTS`' context): the weights from shared memory, v staged KT frames at a time.
  constexpr int OUTPUTS = (R * D + THREADS - 1) / THREADS;  // a thread's
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // where this thread read its scores; the next stage's barrier precedes any other read
    scores[r][4 * t + i] = values[i];
  }
  float context[OUTPUTS] = {};
  for (int first = 0; first < frames; first += KT) {
    stage(first, 2 * width);
    const int staged = min(KT, frames - first);
#pragma unroll
    for (int o = 0; o < OUTPUTS; ++o) {
      const int i = threadIdx.x + o * THREADS, query = i / D, d = i % D;
      if (i < R * D) {
        for (int j = 0; j < staged; ++j) {
          context[o] = __fmaf_rn(scores[query][first + j], keys[j][d], context[o]);
        }
      }
    }
  }
#pragma unroll
  for (int o = 0; o < OUTPUTS; ++o) {
    const int i = threadIdx.x + o * THREADS, query = blockIdx.x * R + i / D;
    if (i < R * D && query < frames) {
      out[(row * frames + query) * HEADS * D + head * D + i % D] = context[o];
    }
  }
#else
  const int m = blockIdx.x * R + r;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = 4 * t + i;
    if (m < frames && n < frames) {
      out[((size_t)z * frames + m) * frames + n] = values[i];
    }
  }
#endif
"""
# MLX's float32 softmax of a row (mlx/backend/cuda/softmax.cu, one pass) held by BD threads of a block, 4 values each
# (`values`, replaced by their weights), row r of R in the block: thread t's running max from float32's lowest
# (cooperative groups' greater: b if a < b else a) and normalizer, rescaled by __expf(previous max - max), plus each
# __expf(value - max); each warp's butterfly (xor 16 to 1) of the max, then of the rescaled normalizer; the same over
# the warps' (-inf and 0 past them); the weights __expf(value - max) * (1 / normalizer), the division IEEE's (nvcc's
# default, as MLX is built). Of MLX's products only the thread's first rescale meets a sum that nvcc contracts (its
# compiled kernel has an fma there), and in one pass that product is 0 x e, exact either way.
_ROW_SOFTMAX = """
__device__ inline float warp_max(float v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, mask);
    v = v < other ? other : v;
  }
  return v;
}

template <int R, int BD>
__device__ inline void row_softmax(float (&values)[4], int r, int t) {
  __shared__ float warp_maxes[R][BD / 32], warp_normalizers[R][BD / 32];
  const int lane = t % 32, warp = t / 32;
  float max_value = cuda::std::numeric_limits<float>::lowest(), normalizer = 0.0f;
  float previous = max_value;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    max_value = max_value < values[i] ? values[i] : max_value;
  }
  normalizer = __fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value)));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    normalizer = __fadd_rn(normalizer, __expf(__fsub_rn(values[i], max_value)));
  }
  previous = max_value;
  max_value = warp_max(max_value);
  normalizer = warp_sum(__fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value))));
  previous = max_value;
  if (lane == 0) {
    warp_maxes[r][warp] = max_value;
  }
  __syncthreads();
  max_value = warp_max(lane < BD / 32 ? warp_maxes[r][lane] : -cuda::std::numeric_limits<float>::infinity());
  normalizer = __fmul_rn(normalizer, __expf(__fsub_rn(previous, max_value)));
  if (lane == 0) {
    warp_normalizers[r][warp] = normalizer;
  }
  __syncthreads();
  normalizer = __fdiv_rn(1.0f, warp_sum(lane < BD / 32 ? warp_normalizers[r][lane] : 0.0f));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    values[i] = __fmul_rn(__expf(__fsub_rn(values[i], max_value)), normalizer);
  }
}
"""


def cublas_float32(dtype: mx.Dtype) -> bool:
    """Whether MLX's matmuls of this dtype are cuBLAS's float32 ones, which the encoder's product and linear kernels
    repeat: float32 without TF32 (the package's default, __init__.py; MLX_ENABLE_TF32=1 makes them TF32)."""
    return dtype == mx.float32 and os.environ.get("MLX_ENABLE_TF32") == "0"


def attention_products_fit(rows: int, frames: int, dtype: mx.Dtype) -> bool:
    """Whether SAN-M's attention products of this call run in `attention_scores` and `attention_context` here:
    from ATTENTION_PRODUCTS_MIN_FRAMES up to ATTENTION_PRODUCTS_MAX_WORK. Never under 4 frames (a quarter of a
    second), where MLX's own vector kernel computes the attention instead of its fallback
    (mlx/backend/cuda/scaled_dot_product_attention.cu, supports_sdpa_vector), in another order; nor where a user
    turned TF32 on (MLX_ENABLE_TF32=1: cuBLAS's products are no longer float32 chains)."""
    sized = max(4, ATTENTION_PRODUCTS_MIN_FRAMES) <= frames and rows * frames * frames <= ATTENTION_PRODUCTS_MAX_WORK
    return ATTENTION_PRODUCTS and available() and sized and cublas_float32(dtype)


def _tile_shape(rows: int, columns: int, planes: int) -> tuple[int, int, int, int]:
    """BM, BN, TM, TN of a tiled float32 product: 64 x 64 outputs a block (8 x 4 a thread) where that still gives
    each of an H100's 132 SMs a block, else 32 x 32 (4 x 4)."""
    big = -(-rows // 64) * -(-columns // 64) * planes >= 132
    return (64, 64, 8, 4) if big else (32, 32, 4, 4)


class MemoryBlocks(NamedTuple):
    planes: int  # of the grid's z, past the attention's
    template: list
    shape: tuple[int, int, int]
    source: str


def _memory_blocks(memory_taps: tuple[int, int, int], rows_frames: tuple[int, int], plane_threads: int, masked: bool):
    """What `_MEMORY_BLOCKS` adds to a launch whose planes (B x HEADS) hold `plane_threads` threads each: memory_taps
    (channels, taps, left) of the FSMN block, rows_frames (B, T) of the projection."""
    channels, taps, left = memory_taps
    outputs = rows_frames[0] * rows_frames[1] * channels
    template = [("T", mx.float32), ("C", channels), ("TAPS", taps), ("LEFT", left)]
    source = f"#define FSMN_MASKED {int(masked)}\n" + _MEMORY_BLOCKS
    return MemoryBlocks(-(-outputs // plane_threads), template, (*rows_frames, channels), source)


MAX_PLANES = 65535  # CUDA's grid in z: a row and head a block, then the memory's blocks


def _check_planes(planes: int) -> None:
    if planes > MAX_PLANES:
        raise ValueError(
            f"the attention's kernels take at most {MAX_PLANES} planes (rows x heads, memory), got {planes}"
        )


def _product_layout(mode: int, frames: int, dims: int, planes: int) -> tuple[tuple[int, int, int, int], int, tuple]:
    """(BM, BN, TM, TN), the threads of a block and the blocks of a plane along x and y of an `_ATTENTION_PRODUCTS`
    launch: the scores (mode 1, frames x frames) or the context (2, frames x dims) of `planes` rows x heads."""
    columns = frames if mode == 1 else dims
    # The context in 32 x 32 tiles only: its 64 x 64 form (a batch of 16 short clips would take it) has not
    # been run on a GPU, and the products are on by default.
    bm, bn, tm, tn = _tile_shape(frames, columns, planes) if mode == 1 else (32, 32, 4, 4)
    return (bm, bn, tm, tn), (bm // tm) * (bn // tn), (-(-columns // bn), -(-frames // bm))


def _attention_product(mode: int, inputs: dict, weights_shape: tuple, memory_taps=None, **flags) -> list[mx.array]:
    """One `_ATTENTION_PRODUCTS` launch; weights_shape (B, HEADS, T, T), the planes and their rows. With
    memory_taps (channels, taps, left: the scores only), blocks past the scores' compute `fsmn_memory`'s output too
    (`_MEMORY_BLOCKS`)."""
    batch, heads, frames, _ = weights_shape
    dims = inputs["qkv"].shape[-1] // (3 * heads)
    planes = batch * heads
    (bm, bn, tm, tn), threads, (blocks_x, blocks_y) = _product_layout(mode, frames, dims, planes)
    stage = STAGE_K["scores" if mode == 1 else "context"]
    template = [("BM", bm), ("BN", bn), ("BK", stage), ("TM", tm), ("TN", tn), ("HEADS", heads), ("D", dims)]
    outputs, output_shapes = ["out"], [weights_shape if mode == 1 else (batch, frames, heads * dims)]
    source = ""
    if memory_taps:
        memory = _memory_blocks(memory_taps, (batch, frames), threads * blocks_x * blocks_y, flags["FRAMES_MASKED"])
        planes, source = planes + memory.planes, memory.source
        template += memory.template
        outputs.append("memory_out")
        output_shapes.append(memory.shape)
    _check_planes(planes)
    defines = {"MODE": mode, **flags}
    source = "".join(f"#define {key} {int(value)}\n" for key, value in defines.items()) + source
    source += f"  constexpr float SCALE = {_float_literal(dims**-0.5)};\n"  # SAN-M scales q by head_dim ** -0.5
    name = "attention_product_" + "_".join(f"{key.lower()}{int(value)}" for key, value in defines.items())
    name += "_memory" if memory_taps else ""
    kernel = _kernel(name, tuple(inputs), tuple(outputs), source + _ATTENTION_PRODUCTS, header=TILE_STEP)
    return kernel(
        inputs=list(inputs.values()),
        template=template,
        grid=(blocks_x * threads, blocks_y, planes),
        threadgroup=(threads, 1, 1),
        output_shapes=output_shapes,
        output_dtypes=[mx.float32] * len(outputs),
    )


def attention_scores(qkv: mx.array, heads: int, mask: mx.array | None = None) -> mx.array:
    """`attention_scores_ops` in one kernel: SAN-M's attention scores (B, heads, T, T) from a fused float32 q/k/v
    projection qkv (B, T, 3C), mask (B, T) or None."""
    batch, frames, _ = qkv.shape
    masked = mask is not None
    inputs = {"qkv": qkv, **({"mask": mask} if masked else {})}
    return _attention_product(1, inputs, (batch, heads, frames, frames), FRAMES_MASKED=masked)[0]


def attention_scores_ops(qkv: mx.array, heads: int, mask: mx.array | None = None) -> mx.array:
    """The scores as MLX's fallback attention computes them in `frame_attention_ops` (mlx/fast.cpp): q scaled
    by head_dim ** -0.5 times k^T; a key frame whose mask is not > 0 scores float32's lowest."""
    q, k, _ = frame_heads(qkv, heads)
    scores = (q * (q.shape[-1] ** -0.5)) @ k.swapaxes(-1, -2)
    return scores if mask is None else mx.where(key_mask(mask), scores, mx.array(mx.finfo(scores.dtype).min))


def attention_context(weights: mx.array, qkv: mx.array) -> mx.array:
    """`attention_context_ops` in one kernel: the softmax weights (B, heads, T, T) times v of the fused float32
    projection qkv (B, T, 3C), as (B, T, C), the heads side by side."""
    return _attention_product(2, {"qkv": qkv, "weights": weights}, weights.shape)[0]


def attention_context_ops(weights: mx.array, qkv: mx.array) -> mx.array:
    batch, heads, frames, _ = weights.shape
    return (weights @ frame_heads(qkv, heads)[2]).transpose(0, 2, 1, 3).reshape(batch, frames, -1)


def frame_attention_products(qkv: mx.array, heads: int, mask: mx.array | None = None) -> mx.array:
    """`frame_attention_ops` as `attention_scores`, MLX's softmax and `attention_context`."""
    weights = mx.softmax(attention_scores(qkv, heads, mask), axis=-1, precise=True)
    return attention_context(weights, qkv)


def scores_and_memory(
    qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """`attention_scores` and `fsmn_memory` of a fused float32 projection qkv (B, T, 3C) in one launch, each
    output theirs bit for bit (the same sources): fsmn_weight (C, K, 1), `left` its zero frames before the first."""
    batch, frames, _ = qkv.shape
    channels, taps, inputs = _memory_inputs(qkv, fsmn_weight, mask)
    shape = (batch, heads, frames, frames)
    return tuple(_attention_product(1, inputs, shape, (channels, taps, left), FRAMES_MASKED=mask is not None))


def scores_and_memory_ops(qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None):
    return attention_scores_ops(qkv, heads, mask), fsmn_memory_ops(qkv, fsmn_weight, left, mask)


def softmax_in_scores_fits(rows: int, frames: int, head_dim: int) -> bool:
    """Whether `weights_and_memory` (or `context_and_memory`) computes the softmax's weights of `rows` clips of
    `frames` frames here: one clip, up to SOFTMAX_IN_SCORES_MAX_WORK (a padded batch is bound by the GPU, where the
    kernel measured slower)."""
    small = rows == 1 and frames * frames <= SOFTMAX_IN_SCORES_MAX_WORK
    return SOFTMAX_IN_SCORES and small and softmax_kernel_takes(frames, head_dim)


def softmax_kernel_takes(frames: int, head_dim: int) -> bool:
    """Whether `_ATTENTION_WEIGHTS` is written for rows of `frames` keys and heads of `head_dim`: one pass of MLX's
    softmax (up to 4096), keys read four floats at a time, its arrays in shared memory (`_keys_a_stage`)."""
    return frames <= 4 * 1024 and head_dim % 4 == 0 and _keys_a_stage(frames, head_dim) is not None


SHARED_MEMORY = 48 * 1024  # bytes of a block's static shared memory


def _keys_a_stage(frames: int, head_dim: int) -> int | None:
    """KT, the keys `_ATTENTION_WEIGHTS` stages at a time for `frames` frames and heads of `head_dim`: 64, or 32
    where 64 would not leave its queries, keys and scores in SHARED_MEMORY (with room for the softmax's), or None."""
    threads, rows, _ = _weights_layout(frames)
    for keys in (64, 32):
        floats = rows * head_dim + keys * (head_dim + 4) + rows * 4 * threads
        if 4 * floats + 1024 <= SHARED_MEMORY:
            return keys
    return None


def attention_source(frames: int, heads: int, head_dim: int, dtype: mx.Dtype):
    """Which source of the attention's kernels one clip of `frames` frames takes (a kernel is compiled once for each,
    at its first use), or None where they do not run: the softmax's kernel with its template (R, BD, KT), or the
    scores' kernel with its tiles (the context's kernel past the bound has one source)."""
    if not attention_products_fit(1, frames, dtype):
        return None
    if softmax_in_scores_fits(1, frames, head_dim):
        return ("softmax", _weights_layout(frames)[:2], _keys_a_stage(frames, head_dim))
    return ("scores", _product_layout(1, frames, head_dim, heads)[0])


def attention_sources_frames(heads: int, head_dim: int, dtype: mx.Dtype, seen: int) -> tuple[int, ...]:
    """The fewest frames of one clip at which each source of `attention_source` first runs, but the source a clip of
    `seen` frames takes: a warm-up that encoded that clip and encodes one of each leaves no compile to a first pass."""
    firsts = {}
    for frames in range(1, math.isqrt(ATTENTION_PRODUCTS_MAX_WORK) + 1):
        firsts.setdefault(attention_source(frames, heads, head_dim, dtype), frames)
    for taken in (None, attention_source(seen, heads, head_dim, dtype)):
        firsts.pop(taken, None)
    return tuple(firsts.values())


def _weights_layout(frames: int) -> tuple[int, int, int]:
    """BD, R and the blocks of a plane of `weights_and_memory` for `frames` frames: MLX's softmax threads a row, rows
    a block, a block each R query frames."""
    threads = row_threads(frames)
    rows = max(1, min(SOFTMAX_ROWS_A_BLOCK, 1024 // threads))
    return threads, rows, -(-frames // rows)


def _planes_with_memory(batch: int, frames: int, heads: int, channels: int, softmax: bool) -> int:
    """The grid's planes (z) of `weights_and_memory` (softmax) or `scores_and_memory`: B x heads, then the memory's."""
    if softmax:
        threads, rows, groups = _weights_layout(frames)
        plane_threads = groups * rows * threads
    else:
        _, threads, (blocks_x, blocks_y) = _product_layout(1, frames, 0, batch * heads)
        plane_threads = threads * blocks_x * blocks_y
    return batch * heads + _memory_blocks((channels, 0, 0), (batch, frames), plane_threads, False).planes


def weights_and_memory(
    qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """`scores_and_memory` with MLX's float32 softmax (precise) of the scores in the same kernel (`_ATTENTION_WEIGHTS`):
    the weights (B, heads, T, T) and the FSMN memory, bit for bit those of the scores' kernel, mx.softmax and
    `fsmn_memory`, for T up to 4096 where its shared memory holds the heads (`_keys_a_stage`)."""
    return _attention_weights(qkv, heads, fsmn_weight, left, mask, context=False)


def context_and_memory(
    qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """`weights_and_memory` with the weights' product with v in the same kernel too: the attention's context (B, T, C)
    and the FSMN memory, bit for bit those of `weights_and_memory` and `attention_context`."""
    return _attention_weights(qkv, heads, fsmn_weight, left, mask, context=True)


def _attention_weights(qkv, heads: int, fsmn_weight, left: int, mask, context: bool) -> tuple[mx.array, mx.array]:
    """One `_ATTENTION_WEIGHTS` launch: the weights or (`context`) the context, and the memory."""
    batch, frames, width = qkv.shape
    channels, taps, inputs = _memory_inputs(qkv, fsmn_weight, mask)
    dims = width // (3 * heads)
    if not softmax_kernel_takes(frames, dims):
        raise ValueError(
            f"the softmax's kernel takes up to 4096 frames and heads of a multiple of 4 up to about 200, got {frames}, "
            f"{dims}"
        )
    masked = mask is not None
    threads, rows, groups = _weights_layout(frames)
    keys = _keys_a_stage(frames, dims)
    memory = _memory_blocks((channels, taps, left), (batch, frames), groups * rows * threads, masked)
    planes = batch * heads + memory.planes
    _check_planes(planes)
    source = f"#define FRAMES_MASKED {int(masked)}\n#define CONTEXT {int(context)}\n" + memory.source
    source += f"  constexpr float SCALE = {_float_literal(dims**-0.5)};\n" + _ATTENTION_WEIGHTS
    name = f"attention_{'context' if context else 'weights'}_{'masked' if masked else 'whole'}_memory"
    kernel = _kernel(name, tuple(inputs), ("out", "memory_out"), source, header=_ROW_NORM + _ROW_SOFTMAX)
    shape = (batch, frames, width // 3) if context else (batch, heads, frames, frames)
    return tuple(
        kernel(
            inputs=list(inputs.values()),
            template=[("R", rows), ("BD", threads), ("KT", keys), ("HEADS", heads), ("D", dims), *memory.template],
            grid=(groups * rows * threads, 1, planes),
            threadgroup=(rows * threads, 1, 1),
            output_shapes=[shape, memory.shape],
            output_dtypes=[mx.float32, mx.float32],
        )
    )


def weights_and_memory_ops(qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None):
    scores, memory = scores_and_memory_ops(qkv, heads, fsmn_weight, left, mask)
    return mx.softmax(scores, axis=-1, precise=True), memory


def context_and_memory_ops(qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None):
    return frame_attention_ops(qkv, heads, mask), fsmn_memory_ops(qkv, fsmn_weight, left, mask)


def attention_products_and_memory(
    qkv: mx.array, heads: int, fsmn_weight: mx.array, left: int, mask: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """SAN-M's attention context (`frame_attention_products`) and FSMN memory (`fsmn_memory`) of a fused float32
    projection qkv (B, T, 3C). With SCORES_WITH_MEMORY the memory comes from the launch of the scores
    (`scores_and_memory`) or, with SOFTMAX_IN_SCORES and small enough, of the softmax's weights
    (`weights_and_memory`), with CONTEXT_IN_WEIGHTS of the context itself (`context_and_memory`); without, each is a
    launch of its own."""
    batch, frames, width = qkv.shape
    softmax = softmax_in_scores_fits(batch, frames, width // (3 * heads))
    planes = _planes_with_memory(batch, frames, heads, fsmn_weight.shape[0], softmax)
    if not SCORES_WITH_MEMORY or planes > MAX_PLANES:  # the grid's z too small for the memory's blocks: apart
        return frame_attention_products(qkv, heads, mask), fsmn_memory(qkv, fsmn_weight, left, mask)
    if softmax and CONTEXT_IN_WEIGHTS:
        return context_and_memory(qkv, heads, fsmn_weight, left, mask)
    if softmax:
        weights, memory = weights_and_memory(qkv, heads, fsmn_weight, left, mask)
    else:
        scores, memory = scores_and_memory(qkv, heads, fsmn_weight, left, mask)
        weights = mx.softmax(scores, axis=-1, precise=True)
    return attention_context(weights, qkv), memory


# The encoder's linear layers in float32 with cuBLAS's numbers, bit for bit, by default. cuBLAS runs them as SIMT
# float32 GEMMs that split k (split-K) where its heuristic finds the output too small to fill the GPU: k's tiles of 8
# are dealt in turn to SPLITK_NUM parts, each part one fma chain per output in ascending k, and the parts are added in
# order, then the bias (its epilogue); unsplit, one chain plus the bias. `split_linear` adds the same products in the
# same order, with the number of parts the heuristic gives MLX (cublas_heuristic.split_k_parts, asked once per shape,
# and only for the GPU and algorithms measured): on an H100 its numbers were MLX's for the encoder's five linear
# shapes at every row count tried from 50 to 16000 (bench/exact_gemm.py's linear sweep; BENCHMARKS.md). At 17 rows one
# shape took another algorithm, whose order no form tried reproduced; the kernels start at LINEAR_MIN_ROWS, the
# shortest measured. Why by hand: as for the attention's products, MLX builds a cublasLt descriptor and runs the
# heuristic at every matmul (several times a custom kernel's host time) and one clip's encoder is bound by the host; 4
# of its 7 matmuls a layer are these linears. At 10 s their GPU time is about cuBLAS's (on an H100, 15.6-15.9 us a
# split kernel and 2.2-3.9 adding its parts, against cuBLAS's 14.3 and 4.2 on another), above it with more rows, so
# the encoder gains where the host bounds it and loses where the GPU does (encoder + adaptor on an H100 with the
# attention's products, against with the linears too: 3 s 12.9-13.9 -> 9.3-9.4 ms, 10 s 12.6-12.7 -> 12.0-12.1, 30 s
# 17.4-17.7 -> 19.9-20.5 with stages of 64; on a noisier H100 with STAGE_K's, 3 s 16.5-17.0 -> 11.3, 20 s 16.7-16.8
# -> 18.0-18.9; BENCHMARKS.md). So they run up to LINEAR_MAX_ROWS, one clip of 10 s, the longest measured faster.
EXACT_LINEARS = True
LINEAR_MIN_ROWS = 50
LINEAR_MAX_ROWS = 167
# Where a layer's split products land: BM x BN outputs a block, TM x TN adjacent ones a thread, block z of the grid's
# third axis adding k's tiles z, z + parts, z + 2 parts, ... of 8 (cuBLAS's k tile), BK / 8 of its tiles a stage of
# `staged_product`. With SPLIT the part's sums go to out[z] for `_PARTS_ADDED`; without, the bias is added here
# (`biased`) and the addends (`ADDED`). x (rows, K) and the weight (N, K) row-major.
_SPLIT_LINEAR = """
  static_assert(BK % 8 == 0, "a stage holds whole tiles of cuBLAS's 8");
  constexpr int TILES_A_STAGE = BK / 8;
  const int rows = x_shape[0], K = x_shape[1], N = weight_shape[0];
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, z = blockIdx.z, parts = gridDim.z;
  const int tiles = (K + 7) / 8, own = z < tiles ? (tiles - z + parts - 1) / parts : 0;  // this part's tiles
  auto k_at = [=](int s, int kk) { return (z + (s * TILES_A_STAGE + kk / 8) * parts) * 8 + kk % 8; };
  auto stage_rows = [=](int s) {  // whole tiles, but K's last tile may be short: it is its part's last
    const int last = min((s + 1) * TILES_A_STAGE, own) - 1;
    return (last - s * TILES_A_STAGE) * 8 + min(8, K - (z + last * parts) * 8);
  };
  auto a_at = [&](int m, int k) { return m < rows ? x[(size_t)m * K + k] : 0.0f; };
  auto b_at = [&](int n, int k) { return n < N ? weight[(size_t)n * K + k] : 0.0f; };
  float acc[TM][TN] = {};
  staged_product<BM, BN, BK, TM, TN, false>(
      (own + TILES_A_STAGE - 1) / TILES_A_STAGE, stage_rows, k_at, a_at, b_at, m0, n0, acc);
  constexpr int THREADS_N = BN / TN;
  const int tx = threadIdx.x % THREADS_N, ty = threadIdx.x / THREADS_N;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int m = m0 + ty * TM + i, n = n0 + tx * TN + j;
      if (m < rows && n < N) {
#if SPLIT
        out[((size_t)z * rows + m) * N + n] = acc[i][j];
#else
        const size_t index = (size_t)m * N + n;
        out[index] = ADDED(biased(acc[i][j], bias[n]));
#endif
      }
    }
  }
"""
# The parts (parts, rows, N) added in order, then the bias and relu, then the addends.
_PARTS_ADDED = """
  const size_t index = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int parts = partials_shape[0], N = bias_shape[0];
  const size_t outputs = (size_t)partials_shape[1] * N;
  if (index >= outputs) {
    return;
  }
  float sum = partials[index];
  for (int z = 1; z < parts; ++z) {
    sum = __fadd_rn(sum, partials[(size_t)z * outputs + index]);
  }
  out[index] = ADDED(biased(sum, bias[index % N]));
"""
# With a LayerNorm after the layer (in SAN-M, the FFN's norm after the attention's output layer, the next layer's norm1
# or the stack's last norm after the FFN's second layer, each reading the sum with the residual), the kernel adding
# the parts holds whole rows, one a block, and writes the norm's output too, saving the norm's launch
# (NORM_IN_LINEAR; off, MLX's layer_norm follows), for float32 norms of rows up to NORM_MAX_WIDTH. It repeats MLX's
# float32 layer_norm (mlx/backend/cuda/layer_norm.cu, layer_norm) for a row: BD threads (the launch's,
# kernel_utils.cuh's dispatch_block_dim over N / 4), thread t holding values 4t..4t+3 and adding them from 0 in turn;
# each warp's sums by cooperative groups' reduce (details/coalesced_reduce.h: shuffles xor 16, 8, 4, 2, 1), then the
# warps' by one more (zeros past them); mean = sum / N; the squares of (x - mean) the same way (a thread past the row
# adds none); inv = rsqrtf(squares / N + eps); out = w * ((x - mean) * inv) + b. The squares and the output are fmas
# where nvcc contracted MLX's kernel: bench/norm_probe.py found this form, and only it, bit for bit on an H100 (widths
# 512 and 560, 50 to 500 rows; BENCHMARKS.md).
NORM_IN_LINEAR = True
NORM_MAX_WIDTH = 4 * 1024  # one pass of MLX's largest block (1024 threads, 4 values each): MLX loops past that
_ROW_NORM = """
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) {
    v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, mask));
  }
  return v;
}

template <int BD>
__device__ inline float block_sum(float v) {  // every thread gets the sum
  __shared__ float warp_sums[BD / 32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) {
    warp_sums[threadIdx.x / 32] = v;
  }
  __syncthreads();
  v = warp_sum(threadIdx.x % 32 < BD / 32 ? warp_sums[threadIdx.x % 32] : 0.0f);
  __syncthreads();  // before the next call writes warp_sums
  return v;
}
"""
_PARTS_ADDED_NORMED = """
  const int parts = partials_shape[0], N = bias_shape[0], k0 = 4 * threadIdx.x;
  const size_t outputs = (size_t)partials_shape[1] * N, row = blockIdx.x;
  float values[4], sum = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int k = k0 + i;
    values[i] = 0.0f;
    if (k < N) {
      const size_t index = row * N + k;
      float parts_sum = partials[index];
      for (int z = 1; z < parts; ++z) {
        parts_sum = __fadd_rn(parts_sum, partials[(size_t)z * outputs + index]);
      }
      values[i] = ADDED(biased(parts_sum, bias[k]));
      out[index] = values[i];
    }
    sum = __fadd_rn(sum, values[i]);
  }
  const float mean = __fdiv_rn(block_sum<BD>(sum), (float)N);
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (k0 + i < N) {
      const float d = __fsub_rn(values[i], mean);
      squares = __fmaf_rn(d, d, squares);
    }
  }
  const float inv = rsqrtf(__fadd_rn(__fdiv_rn(block_sum<BD>(squares), (float)N), EPS));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int k = k0 + i;
    if (k < N) {
      normed[row * N + k] = __fmaf_rn(norm_weight[k], __fmul_rn(__fsub_rn(values[i], mean), inv), norm_bias[k]);
    }
  }
"""


def row_threads(n: int) -> int:
    """The threads a row of n takes in MLX's float32 layer_norm and softmax on CUDA (dispatch_block_dim over n / 4)."""
    return next((d for d in (32, 64, 128, 256, 512) if -(-n // 4) <= d), 1024)


# cuBLAS's bias epilogue, then with RELU MLX's relu (maximum(x, 0): NaN kept, -0 to +0; device/binary_ops.cuh).
_BIASED = """
__device__ inline float biased(float sum, float bias) {
  const float value = __fadd_rn(sum, bias);
#if RELU
  return isnan(value) ? value : (value > 0.0f ? value : 0.0f);
#else
  return value;
#endif
}
"""


# ADDED(value): value plus the addends of the output's index, in order: the layer's residuals, as
# `(linear(x) + addend0) + addend1` in MLX's ops (float32 additions, each rounded; MLX's compiled kernels fuse them
# alike), so that the kernel that adds the bias writes the sum instead of one more elementwise kernel doing it.
_ADDENDS = ("addend0", "addend1")


def _biased(relu: bool = False, addends: int = 0) -> str:
    """`_BIASED` with relu or without and ADDED for `addends` addends, for a kernel's header."""
    added = "value"
    for name in _ADDENDS[:addends]:
        added = f"__fadd_rn({added}, {name}[index])"
    return f"#define RELU {int(relu)}\n#define ADDED(value) {added}\n" + _BIASED


def linear_parts(rows: int, n: int, k: int, dtype: mx.Dtype) -> int | None:
    """In how many parts `split_linear` adds a float32 linear layer's products for `rows` rows (1: unsplit), or None
    where it does not compute this layer here: switched off, outside LINEAR_MIN_ROWS..LINEAR_MAX_ROWS, not float32
    or with TF32 on (`cublas_float32`), or cuBLAS's choice not known (cublas_heuristic.split_k_parts)."""
    sized = LINEAR_MIN_ROWS <= rows <= LINEAR_MAX_ROWS
    if not (EXACT_LINEARS and available() and sized and cublas_float32(dtype)):
        return None
    return cublas_heuristic.split_k_parts(rows, n, k)


def split_linear(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    parts: int,
    relu: bool = False,
    addends: tuple = (),
    norm: tuple | None = None,
):
    """`split_linear_ops` in one kernel (`parts` 1) or two: x (..., K) @ weight.T + bias, weight (N, K), with k's
    tiles of 8 dealt in turn to `parts` parts (`linear_parts`), then relu if asked, then plus each of `addends`
    (float32 arrays of the output's shape) in order. With `norm` (a LayerNorm's weight, bias and eps), the output and
    the norm of it (`_PARTS_ADDED_NORMED` where the layer is split and the norm float32, else MLX's layer_norm)."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.size // k
    if len(addends) > len(_ADDENDS) or any(a.shape != (*x.shape[:-1], n) or a.dtype != mx.float32 for a in addends):
        raise ValueError(f"split_linear adds at most {len(_ADDENDS)} float32 arrays of the output's shape")
    # Tiles by the layer's width alone, not its rows: a source per tile shape is compiled at its first use (about a
    # second), so every length that cuBLAS splits (every one measured from 50 to 167 rows) runs what the first
    # compiled. The order of each output's sum, and so the numbers, do not depend on the tiles.
    bm, bn, tm, tn = (64, 64, 8, 4) if n >= 1024 else (32, 32, 4, 4)
    threads = (bm // tm) * (bn // tn)
    split = parts > 1
    addend_inputs = dict(zip(_ADDENDS, addends))
    # Split, this kernel only sums each part, and `_PARTS_ADDED` adds the bias, relu and the addends: one source.
    inputs = {"x": x.reshape(rows, k), "weight": weight, **({} if split else {"bias": bias, **addend_inputs})}
    source = f"#define SPLIT {int(split)}\n" + _SPLIT_LINEAR
    header = TILE_STEP + (_biased() if split else _biased(relu, len(addends)))
    name = "split_linear_1" if split else f"split_linear_0_{int(relu)}_{len(addends)}"
    kernel = _kernel(name, tuple(inputs), ("out",), source, header=header)
    out = kernel(
        inputs=list(inputs.values()),
        template=[("BM", bm), ("BN", bn), ("BK", STAGE_K["linear"]), ("TM", tm), ("TN", tn)],
        grid=(-(-n // bn) * threads, -(-rows // bm), parts),
        threadgroup=(threads, 1, 1),
        output_shapes=[(parts, rows, n) if split else (*x.shape[:-1], n)],
        output_dtypes=[mx.float32],
    )[0]
    if not split:
        return normed(out, norm)
    header = _biased(relu, len(addends))
    if norm is None or not NORM_IN_LINEAR or n > NORM_MAX_WIDTH or norm[0].dtype != mx.float32:
        added_kernel = _kernel(
            f"parts_added_{int(relu)}_{len(addends)}",
            ("partials", "bias", *addend_inputs),
            ("out",),
            _PARTS_ADDED,
            header,
        )
        summed = added_kernel(
            inputs=[out, bias, *addends],
            grid=(-(-rows * n // 256) * 256, 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(*x.shape[:-1], n)],
            output_dtypes=[mx.float32],
        )[0]
        return normed(summed, norm)
    norm_weight, norm_bias, eps = norm
    threads = row_threads(n)
    normed_kernel = _kernel(
        f"parts_added_normed_{int(relu)}_{len(addends)}",
        ("partials", "bias", *addend_inputs, "norm_weight", "norm_bias"),
        ("out", "normed"),
        _PARTS_ADDED_NORMED,
        f"#define EPS {_float_literal(eps)}\n" + header + _ROW_NORM,
    )
    return tuple(
        normed_kernel(
            inputs=[out, bias, *addends, norm_weight, norm_bias],
            template=[("BD", threads)],
            grid=(rows * threads, 1, 1),
            threadgroup=(threads, 1, 1),
            output_shapes=[(*x.shape[:-1], n)] * 2,
            output_dtypes=[mx.float32] * 2,
        )
    )


def split_linear_ops(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    parts: int,
    relu: bool = False,
    addends: tuple = (),
    norm: tuple | None = None,
):
    """The layer as MLX computes it (nn.Linear: one addmm, cuBLAS on CUDA), then MLX's relu if asked, then the addends
    in order, then with `norm` (weight, bias, eps) the output and its LayerNorm; `parts` unused."""
    y = mx.addmm(bias, x, weight.T)
    return normed(added(nn.relu(y) if relu else y, addends), norm)


def normed(y: mx.array, norm: tuple | None = None):
    """y, or with `norm` (a LayerNorm's weight, bias and eps) y and its norm as nn.LayerNorm computes it."""
    return y if norm is None else (y, mx.fast.layer_norm(y, *norm))


def added(y: mx.array, addends: tuple = ()) -> mx.array:
    """y plus each of `addends` in order, in MLX's ops."""
    for addend in addends:
        y = y + addend
    return y
