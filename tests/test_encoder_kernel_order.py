"""The encoder's float32 product and linear kernels (`cuda_kernels.attention_scores`, alone or with the FSMN memory
in its launch, `attention_context`, the softmax's weights and the context in one kernel, `split_linear`) add each
output's products in the order that gives cuBLAS's numbers bit for bit (measured on an
H100: bench/exact_gemm.py, BENCHMARKS.md). Here their own CUDA text runs on the CPU (tests/cuda_on_cpu.py) against
that order written out plainly, one thread an output:
- the attention's products: one fma chain over ascending k (the scores' q scaled first, masked keys float32's lowest);
- a linear layer: k's tiles of 8 dealt in turn to `parts` parts, each an fma chain over ascending k, the parts added
  in order, then the bias, then relu if asked (MLX's: NaN kept), then the addends (residuals) in order;
- a LayerNorm after it, in the kernel adding the parts: MLX's layer_norm's order (its threads' sums, each warp's
  butterfly, the warps' with zeros past them; fmas for the squares and the output).
Shapes cover both tile sizes, rows and columns that do not fill a tile, a k that does not fill a stage, and a k
that does not fill cuBLAS's tile of 8."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from funasr_nano_mlx import cuda_kernels
from tests.cuda_on_cpu import Launch, launches, run_on_cpu

HEADS = 4

_REFERENCE_LINEAR = """
  const int rows = x_shape[0], K = x_shape[1], N = bias_shape[0];
  const int index = blockIdx.x * blockDim.x + threadIdx.x, m = index / N, n = index % N;
  if (index >= rows * N) {
    return;
  }
  float sum = 0.0f;
  for (int z = 0; z < PARTS; ++z) {
    float part = 0.0f;
    for (int k0 = 8 * z; k0 < K; k0 += 8 * PARTS) {
      for (int k = k0; k < min(K, k0 + 8); ++k) {
        part = __fmaf_rn(x[m * K + k], weight[n * K + k], part);
      }
    }
    sum = z == 0 ? part : __fadd_rn(sum, part);
  }
  sum = __fadd_rn(sum, bias[n]);
  sum = RELU && !isnan(sum) && !(sum > 0.0f) ? 0.0f : sum;
  if (ADDENDS > 0) {
    sum = __fadd_rn(sum, addend0[index]);
  }
  if (ADDENDS > 1) {
    sum = __fadd_rn(sum, addend1[index]);
  }
  out[index] = sum;
"""

_REFERENCE_ATTENTION = """
  const int frames = qkv_shape[1], width = qkv_shape[2] / 3, frame = 3 * width;
  const int columns = SCORES ? frames : D, index = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = index / (frames * columns), m = index / columns % frames, n = index % columns;
  const int row = plane / HEADS, head = plane % HEADS;
  if (plane >= qkv_shape[0] * HEADS) {
    return;
  }
  const float* frame_rows = qkv + (size_t)row * frames * frame + head * D;
  float acc = 0.0f;
  if (SCORES) {
    for (int k = 0; k < D; ++k) {
      acc = __fmaf_rn(__fmul_rn(frame_rows[m * frame + k], SCALE), frame_rows[n * frame + width + k], acc);
    }
    out[index] = MASKED && !(mask[row * frames + n] > 0.0f) ? std::numeric_limits<float>::lowest() : acc;
  } else {
    for (int k = 0; k < frames; ++k) {
      const float weight = weights[(size_t)plane * frames * frames + m * frames + k];
      acc = __fmaf_rn(weight, frame_rows[k * frame + 2 * width + n], acc);
    }
    out[(row * frames + m) * HEADS * D + head * D + n] = acc;
  }
"""


@pytest.fixture
def recorded(monkeypatch):
    """`launches` of a call, the package's kernel cache emptied around it (it holds MLX's kernels or the recorder's)."""
    cuda_kernels._kernel.cache_clear()
    yield lambda call: launches(call, monkeypatch)
    cuda_kernels._kernel.cache_clear()


def reference(source: str, inputs: dict[str, mx.array], output_shape: tuple, outputs: int, **constants) -> Launch:
    """A launch of `source` over `outputs` threads, 64 a block: the order written out, one thread an output."""
    blocks = (-(-outputs // 64), 1, 1)
    template = list(constants.items())
    placeholder = mx.zeros(output_shape)
    return Launch(
        "reference",
        "",
        source,
        list(inputs),
        list(inputs.values()),
        ["out"],
        [output_shape],
        template,
        blocks,
        64,
        [placeholder],
    )


@pytest.mark.parametrize(
    "rows, n, k, parts, relu, addends, stage",
    [
        (50, 512, 512, 8, False, 2, None),  # the output layer (32 x 32 tiles), plus the memory block and the residual
        (67, 1536, 560, 5, False, 0, None),  # the first layer's q/k/v: 64 x 64 tiles, the last row tile partly filled
        (67, 1536, 560, 5, False, 0, 64),  # ... in stages of 8 tiles
        (53, 2048, 512, 4, True, 0, None),  # the FFN's up layer, relu with the bias after the parts
        (50, 512, 2048, 11, False, 1, None),  # the FFN's down layer, plus the residual
        (50, 512, 2048, 11, False, 0, 64),  # in stages of 8 tiles: three a part, the last partly filled
        (45, 512, 100, 3, True, 0, None),  # k not a multiple of cuBLAS's tile of 8
        (45, 512, 100, 3, True, 0, 32),  # ... in stages of 4 tiles
        (45, 520, 100, 3, True, 1, 32),  # the last column tile partly filled; relu, then an addend
        (50, 1024, 512, 1, True, 0, None),  # unsplit: one kernel, the bias and relu in it
        (40, 512, 512, 1, False, 2, None),  # unsplit, with two addends
    ],
)
def test_split_linear_adds_in_cublas_order(recorded, monkeypatch, rows, n, k, parts, relu, addends, stage):
    if stage:  # the k a stage changes only how many loads are in flight, never the order
        monkeypatch.setitem(cuda_kernels.STAGE_K, "linear", stage)
    rng = np.random.default_rng(rows + n + k + parts)
    x = mx.array(rng.standard_normal((rows, k), dtype=np.float32))
    weight = mx.array(rng.standard_normal((n, k), dtype=np.float32) * k**-0.5)
    bias = mx.array(rng.standard_normal(n, dtype=np.float32))
    terms = tuple(mx.array(rng.standard_normal((rows, n), dtype=np.float32)) for _ in range(addends))
    ours = run_on_cpu(recorded(lambda: cuda_kernels.split_linear(x, weight, bias, parts, relu, terms)))
    unused = (mx.zeros(1),) * (2 - addends)
    inputs = {"x": x, "weight": weight, "bias": bias, **dict(zip(("addend0", "addend1"), terms + unused))}
    order = reference(_REFERENCE_LINEAR, inputs, (rows, n), rows * n, PARTS=parts, RELU=int(relu), ADDENDS=addends)
    expected = run_on_cpu([order])
    assert ours.shape == (rows, n)
    assert np.array_equal(ours, expected)
    assert not relu or addends or (ours == 0).mean() > 0.3  # relu did something


# A warp's reduction by cooperative groups' butterfly: lane l combining lane l ^ mask's, for masks 16 down to 1 (which
# leaves every lane the same value: op is commutative); the references' shared first lines.
_BUTTERFLY = """
  auto plus = [](float a, float b) { return __fadd_rn(a, b); };
  auto butterfly = [](float (&lanes)[32], auto op) {
    for (int mask = 16; mask > 0; mask /= 2) {
      float next[32];
      for (int l = 0; l < 32; ++l) {
        next[l] = op(lanes[l], lanes[l ^ mask]);
      }
      std::copy(next, next + 32, lanes);
    }
    return lanes[0];
  };
"""
# MLX's float32 layer_norm (mlx/backend/cuda/layer_norm.cu) of a row written out plainly, one thread a row: BD
# threads' sums (thread t adding values 4t..4t+3 from 0), each warp's added by `_BUTTERFLY`, the warps' the same with
# zeros past them.
_REFERENCE_NORM = (
    _BUTTERFLY
    + """
  const int rows = y_shape[0], N = y_shape[1], row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) {
    return;
  }
  const float* v = y + (size_t)row * N;
  auto reduced = [&](auto thread_sum) {
    float warps[32] = {};
    for (int w = 0; w < BD / 32; ++w) {
      float lanes[32];
      for (int l = 0; l < 32; ++l) {
        lanes[l] = thread_sum(32 * w + l);
      }
      warps[w] = butterfly(lanes, plus);
    }
    return butterfly(warps, plus);
  };
  const float mean = reduced([&](int t) {
    float sum = 0.0f;
    for (int k = 4 * t; k < 4 * t + 4; ++k) {
      sum = __fadd_rn(sum, k < N ? v[k] : 0.0f);
    }
    return sum;
  }) / N;
  const float squares = reduced([&](int t) {
    float sum = 0.0f;
    for (int k = 4 * t; k < std::min(4 * t + 4, N); ++k) {
      sum = __fmaf_rn(v[k] - mean, v[k] - mean, sum);
    }
    return sum;
  });
  const float inv = rsqrtf(squares / N + EPS);
  for (int k = 0; k < N; ++k) {
    out[row * N + k] = __fmaf_rn(weight[k], (v[k] - mean) * inv, bias[k]);
  }
"""
)


@pytest.mark.parametrize(
    "rows, n, k, parts, relu, addends",
    [
        (50, 512, 512, 8, False, 2),  # SAN-M's output layer: plus the memory block and the residual, then a norm
        (45, 520, 100, 3, False, 0),  # a width that leaves threads of MLX's 256 without values (130 hold them)
        (200, 518, 64, 3, True, 1),  # a width not a multiple of 4 (a thread holds 2); enough rows to tell fmas apart
    ],
)
def test_split_linear_adds_the_norm_in_mlx_order(recorded, rows, n, k, parts, relu, addends):
    rng = np.random.default_rng(rows + n)
    x = mx.array(rng.standard_normal((rows, k), dtype=np.float32))
    weight = mx.array(rng.standard_normal((n, k), dtype=np.float32) * k**-0.5)
    bias = mx.array(rng.standard_normal(n, dtype=np.float32))
    terms = tuple(mx.array(rng.standard_normal((rows, n), dtype=np.float32) + 1.0) for _ in range(addends))
    norm = (mx.array(rng.uniform(0.5, 1.5, n).astype(np.float32)), mx.array(rng.standard_normal(n, dtype=np.float32)))
    launched = recorded(lambda: cuda_kernels.split_linear(x, weight, bias, parts, relu, terms, (*norm, 1e-5)))
    assert len(launched) == 2  # the parts, then one kernel adding them that writes the norm too
    y, normed = run_on_cpu(launched)

    unused = (mx.zeros(1),) * (2 - addends)
    inputs = {"x": x, "weight": weight, "bias": bias, **dict(zip(("addend0", "addend1"), terms + unused))}
    linear = reference(_REFERENCE_LINEAR, inputs, (rows, n), rows * n, PARTS=parts, RELU=int(relu), ADDENDS=addends)
    threads = cuda_kernels.row_threads(n)
    norm_source = f"#define EPS {cuda_kernels._float_literal(1e-5)}\n" + _REFERENCE_NORM
    norm_inputs = {"y": linear.outputs[0], "weight": norm[0], "bias": norm[1]}
    norm_order = reference(norm_source, norm_inputs, (rows, n), rows, BD=threads)
    expected_y, expected_normed = run_on_cpu([linear]), run_on_cpu([linear, norm_order])
    assert np.array_equal(y, expected_y)
    assert np.array_equal(normed, expected_normed)
    assert abs(float(normed.mean())) < 0.5  # normalized: each row's mean near the norm's bias's


@pytest.mark.parametrize(
    "rows, frames, masked, stage",
    [
        (1, 70, False, None),  # one clip: the context's k (frames) over stages, the last partly filled
        (3, 45, True, None),  # a padded batch, its keys masked
        (9, 70, True, None),  # enough planes for the scores' 64 x 64 tiles
        (1, 70, False, 16),  # stages of 16
    ],
)
def test_attention_products_are_single_chains(recorded, monkeypatch, rows, frames, masked, stage):
    if stage:
        monkeypatch.setattr(cuda_kernels, "STAGE_K", dict.fromkeys(cuda_kernels.STAGE_K, stage))
    rng = np.random.default_rng(rows * frames)
    qkv, mask, taps = attention_inputs(rows, frames, masked, rng)
    weights = mx.array(rng.uniform(0, 1, (rows, HEADS, frames, frames)).astype(np.float32))

    scores = run_on_cpu(recorded(lambda: cuda_kernels.attention_scores(qkv, HEADS, mask)))
    assert np.array_equal(scores, run_on_cpu([scores_order(qkv, mask)]))
    assert not masked or (scores == np.finfo(np.float32).min).any()

    # The FSMN memory in the scores' launch: both outputs those of the kernels apart, the memory MLX's ops' within
    # float32's rounding (the emulator adds the taps' products unfused, NVRTC fuses them: the same source either way).
    both = recorded(lambda: cuda_kernels.scores_and_memory(qkv, HEADS, taps, 5, mask))
    assert len(both) == 1 and len(both[0].output_names) == 2
    scores_too, memory = run_on_cpu(both)
    assert np.array_equal(scores_too, scores)
    assert np.array_equal(memory, run_on_cpu(recorded(lambda: cuda_kernels.fsmn_memory(qkv, taps, 5, mask))))
    assert np.allclose(memory, cuda_kernels.fsmn_memory_ops(qkv, taps, 5, mask), atol=1e-5)

    context = run_on_cpu(recorded(lambda: cuda_kernels.attention_context(weights, qkv)))
    dims = 512 // HEADS
    order = reference(
        _REFERENCE_ATTENTION.replace("SCALE", cuda_kernels._float_literal(dims**-0.5)),
        {"qkv": qkv, "mask": mx.zeros(1), "weights": weights},
        context.shape,
        context.size,
        SCORES=0,
        HEADS=HEADS,
        D=dims,
        MASKED=0,
    )
    assert context.shape == (rows, frames, 512)
    assert np.array_equal(context, run_on_cpu([order]))


def attention_inputs(rows: int, frames: int, masked: bool, rng) -> tuple[mx.array, mx.array | None, mx.array]:
    """A fused q/k/v projection (rows, frames, 3 x 512), a mask of lengths from frames down to half (or None) and
    FSMN taps (512, 11, 1)."""
    qkv = mx.array(rng.standard_normal((rows, frames, 3 * 512), dtype=np.float32))
    lengths = np.linspace(frames, frames // 2, rows).astype(int)
    mask = mx.array(np.arange(frames)[None, :] < lengths[:, None], mx.float32) if masked else None
    taps = mx.array(rng.standard_normal((512, 11, 1), dtype=np.float32) / 4)
    return qkv, mask, taps


def scores_order(qkv: mx.array, mask: mx.array | None) -> Launch:
    """The scores of `_REFERENCE_ATTENTION`, one thread an output."""
    rows, frames, _ = qkv.shape
    dims = 512 // HEADS
    inputs = {"qkv": qkv, "mask": mx.zeros(1) if mask is None else mask, "weights": mx.zeros(1)}
    shape = (rows, HEADS, frames, frames)
    source = _REFERENCE_ATTENTION.replace("SCALE", cuda_kernels._float_literal(dims**-0.5))
    return reference(
        source, inputs, shape, math.prod(shape), SCORES=1, HEADS=HEADS, D=dims, MASKED=int(mask is not None)
    )


# MLX's float32 softmax (mlx/backend/cuda/softmax.cu) written out, one thread a row: each of its BD threads' running max
# and normalizer over values 4t..4t+3 (-inf past the row), each warp's butterfly of the max and of the normalizers
# rescaled to it, the same over the warps' (-inf and 0 past them), then __expf(value - max) * (1 / normalizer).
_REFERENCE_SOFTMAX = (
    _BUTTERFLY
    + """
  const int frames = scores_shape[3], rows = scores_shape[0] * scores_shape[1] * frames;
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) {
    return;
  }
  const float* v = scores + (size_t)row * frames;
  const float lowest = std::numeric_limits<float>::lowest(), inf = std::numeric_limits<float>::infinity();
  auto value = [&](int k) { return k < frames ? v[k] : -inf; };
  auto greater = [](float a, float b) { return a < b ? b : a; };
  float maxes[BD], normalizers[BD];
  for (int t = 0; t < BD; ++t) {
    float m = lowest;
    for (int k = 4 * t; k < 4 * t + 4; ++k) {
      m = greater(m, value(k));
    }
    float n = __fmul_rn(0.0f, __expf(__fsub_rn(lowest, m)));
    for (int k = 4 * t; k < 4 * t + 4; ++k) {
      n = __fadd_rn(n, __expf(__fsub_rn(value(k), m)));
    }
    maxes[t] = m, normalizers[t] = n;
  }
  float warp_maxes[32], warp_normalizers[32], lanes[32];
  for (int w = 0; w < BD / 32; ++w) {
    std::copy(maxes + 32 * w, maxes + 32 * w + 32, lanes);
    warp_maxes[w] = butterfly(lanes, greater);
    for (int l = 0; l < 32; ++l) {
      lanes[l] = __fmul_rn(normalizers[32 * w + l], __expf(__fsub_rn(maxes[32 * w + l], warp_maxes[w])));
    }
    warp_normalizers[w] = butterfly(lanes, plus);
  }
  for (int w = 0; w < 32; ++w) {
    lanes[w] = w < BD / 32 ? warp_maxes[w] : -inf;
  }
  const float m = butterfly(lanes, greater);
  for (int w = 0; w < 32; ++w) {
    lanes[w] = w < BD / 32 ? __fmul_rn(warp_normalizers[w], __expf(__fsub_rn(warp_maxes[w], m))) : 0.0f;
  }
  const float inverse = __fdiv_rn(1.0f, butterfly(lanes, plus));
  for (int k = 0; k < frames; ++k) {
    out[(size_t)row * frames + k] = __fmul_rn(__expf(__fsub_rn(v[k], m)), inverse);
  }
"""
)


def test_rows_take_mlx_threads():
    """MLX's block for a row of n (its layer_norm's and softmax's): the warps ceil(n / 4) threads round up to."""
    sizes = {1: 32, 128: 32, 129: 64, 256: 64, 257: 128, 512: 128, 2048: 512, 2049: 1024, 4096: 1024}
    assert {n: cuda_kernels.row_threads(n) for n in sizes} == sizes


@pytest.mark.parametrize(
    "rows, frames, masked, threads",
    [
        (1, 70, False, 32),  # a warp a row, 4 rows a block, the last block's rows partly past the end
        (1, 129, False, 64),  # just past a warp's 128: two warps, the second holding one value
        (2, 167, True, 64),  # 10 s: two warps a row, masked keys; 167 = 41 x 4 + 3 rows
        (1, 300, False, 128),  # three of MLX's four warps a row, the fourth past it
    ],
)
def test_softmax_weights_in_mlx_order(recorded, rows, frames, masked, threads):
    """`weights_and_memory`: the scores' single chains and MLX's softmax order in one kernel, the FSMN memory beside.
    `threads`: MLX's block for the row (dispatch_block_dim over ceil(frames / 4)), written out here."""
    assert cuda_kernels.row_threads(frames) == threads
    rng = np.random.default_rng(frames)
    qkv, mask, taps = attention_inputs(rows, frames, masked, rng)
    launched = recorded(lambda: cuda_kernels.weights_and_memory(qkv, HEADS, taps, 5, mask))
    assert len(launched) == 1
    weights, memory = run_on_cpu(launched)

    scores = scores_order(qkv, mask)
    softmax = reference(
        _REFERENCE_SOFTMAX, {"scores": scores.outputs[0]}, weights.shape, rows * HEADS * frames, BD=threads
    )
    assert np.array_equal(weights, run_on_cpu([scores, softmax]))
    assert np.array_equal(memory, run_on_cpu(recorded(lambda: cuda_kernels.fsmn_memory(qkv, taps, 5, mask))))
    # MLX's own (CPU) softmax of the same scores is within float32's rounding; masked keys weigh nothing.
    expected = mx.softmax(cuda_kernels.attention_scores_ops(qkv, HEADS, mask), axis=-1, precise=True)
    assert np.allclose(weights, expected, atol=1e-6)
    assert not masked or (weights == 0).any()


@pytest.mark.parametrize(
    "rows, frames, masked",
    [
        (1, 70, False),  # 32 threads a row, 4 rows a block: 4 of the context's outputs a thread; a stage partly filled
        (2, 167, True),  # 10 s, a padded batch: 2 outputs a thread, 3 stages of 64 frames
        (1, 300, False),  # 128 threads a row: 1 output a thread
    ],
)
def test_context_in_the_weights_kernel(recorded, rows, frames, masked):
    """`context_and_memory`: the weights kernel goes on to the context, which is `attention_context`'s of the same
    weights (its single chains over the frames), bit for bit; the memory as before."""
    rng = np.random.default_rng(frames + 1)
    qkv, mask, taps = attention_inputs(rows, frames, masked, rng)
    launched = recorded(lambda: cuda_kernels.context_and_memory(qkv, HEADS, taps, 5, mask))
    assert len(launched) == 1
    context, memory = run_on_cpu(launched)
    apart = recorded(
        lambda: cuda_kernels.attention_context(cuda_kernels.weights_and_memory(qkv, HEADS, taps, 5, mask)[0], qkv)
    )
    assert len(apart) == 2
    assert np.array_equal(context, run_on_cpu(apart))
    assert np.array_equal(memory, run_on_cpu(recorded(lambda: cuda_kernels.fsmn_memory(qkv, taps, 5, mask))))
    expected = cuda_kernels.frame_attention_ops(qkv, HEADS, mask)  # MLX's own (CPU), within float32's rounding
    assert np.allclose(context, expected, atol=1e-5)
