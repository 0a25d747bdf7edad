"""What one operation costs the host on a GPU, by kind: MLX's per-op work, not the arithmetic.

    python bench/host_cost.py [--chain 200] [--label L]

For each kind of operation at the encoder's and the prefill's shapes (one 10 s clip: 167 frames of 512
float32 channels; a 60-token prompt of 1024 bf16 channels), a chain of --chain copies (each the input of
the next) is built, submitted and computed; one JSON line per kind with the medians over 5 chains, per
operation: build_us (Python making the graph), submit_us (MLX encoding its kernels, until async_eval
returns) and wall_us (until the result is there). A chain that finishes no sooner than it is submitted
is bound by the host. Custom kernels of 1 to 8 inputs weigh what each input adds. Then, for the kinds
whose library plans for each shape, a first call at each of several new lengths against a warm one
(`new_length_costs`). MLX reads MLX_USE_CUDA_GRAPHS and MLX_MAX_OPS_PER_BUFFER
once a process, so each value needs a process of its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import lru_cache

import mlx.core as mx

# A matmul written as a plain CUDA kernel, one thread an output, to weigh a custom kernel's launch against
# cuBLAS's: the arithmetic is not the point.
_MATMUL = """
  const int index = blockIdx.x * blockDim.x + threadIdx.x;
  const int rows = x_shape[0], inner = x_shape[1], cols = w_shape[1];
  if (index >= rows * cols) return;
  const int r = index / cols, c = index % cols;
  float sum = 0.0f;
  for (int k = 0; k < inner; ++k) sum += static_cast<float>(x[r * inner + k]) * static_cast<float>(w[k * cols + c]);
  out[index] = static_cast<T>(sum);
"""


@lru_cache(maxsize=None)
def custom_kernel(name: str, inputs: tuple[str, ...], source: str):
    """One kernel object a source, made once, as the package's kernels are (cuda_kernels._kernel)."""
    return mx.fast.cuda_kernel(name=name, input_names=list(inputs), output_names=["out"], source=source)


def plain_matmul(x: mx.array, w: mx.array) -> mx.array:
    kernel = custom_kernel("plain_matmul", ("x", "w"), _MATMUL)
    rows, cols = x.shape[0], w.shape[1]
    return kernel(
        inputs=[x, w],
        template=[("T", x.dtype)],
        grid=(-(-rows * cols // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(rows, cols)],
        output_dtypes=[x.dtype],
    )[0]


def summing_kernel(y: mx.array, extra: list[mx.array]) -> mx.array:
    """y plus every array of `extra`, in one custom kernel of 1 + len(extra) inputs: what each input adds to a
    launch's host cost (the 4-bit projection kernels take a weight's scales and biases besides it)."""
    names = ["y"] + [f"x{i}" for i in range(len(extra))]
    source = f"""
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= y_shape[0] * y_shape[1]) return;
  out[i] = {" + ".join(f"{name}[i]" for name in names)};
"""
    kernel = custom_kernel(f"sum_{len(names)}", tuple(names), source)
    return kernel(
        inputs=[y, *extra],
        grid=(-(-y.size // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[y.shape],
        output_dtypes=[y.dtype],
    )[0]


def operations() -> dict:
    """name -> (first input, one operation of the chain)."""
    mx.random.seed(0)
    bf16 = mx.bfloat16
    frames = mx.random.normal((167, 512)) * 0.1
    w512 = mx.random.normal((512, 512)) * 0.04
    bias = mx.zeros((512,))
    norm_w, norm_b = mx.ones((512,)), mx.zeros((512,))
    heads = mx.random.normal((1, 4, 167, 128))
    taps = mx.random.normal((512, 11, 1)) * 0.1
    prompt = (mx.random.normal((60, 1024)) * 0.1).astype(bf16)
    w1024 = (mx.random.normal((1024, 1024)) * 0.03).astype(bf16)
    rms_w = mx.ones((1024,), bf16)
    prompt_heads = mx.random.normal((1, 16, 60, 128)).astype(bf16)
    mx.eval(frames, w512, bias, norm_w, norm_b, heads, taps, prompt, w1024, rms_w, prompt_heads)
    addends = [frames * (0.5**i) for i in range(7)]
    mx.eval(addends)
    return {
        "add, f32 167x512": (frames, lambda y: y + frames),
        **{
            f"custom kernel, {1 + n} input{'s' if n else ''}, f32 167x512": (
                frames,
                lambda y, n=n: summing_kernel(y, addends[:n]),
            )
            for n in (0, 1, 3, 7)
        },
        "matmul (cuBLAS), f32 167x512 @ 512x512": (frames, lambda y: y @ w512),
        "addmm (cuBLAS), f32 167x512 @ 512x512 + b": (frames, lambda y: mx.addmm(bias, y, w512)),
        "plain CUDA kernel matmul, f32 167x512 @ 512x512": (frames, lambda y: plain_matmul(y, w512)),
        "layer_norm, f32 167x512": (frames, lambda y: mx.fast.layer_norm(y, norm_w, norm_b, 1e-5)),
        "softmax, f32 167x512": (frames, lambda y: mx.softmax(y, axis=-1, precise=True)),
        "transpose copy, f32 167x512": (
            frames,
            lambda y: mx.contiguous(y.reshape(167, 4, 128).transpose(1, 0, 2)).reshape(167, 512),
        ),
        "sdpa (fallback), f32 4 heads x 167": (
            heads,
            lambda y: mx.fast.scaled_dot_product_attention(y, y, y, scale=1.0),
        ),
        "depthwise conv1d (cuDNN), f32 167x512, 11 taps": (
            frames[None],
            lambda y: mx.conv1d(mx.pad(y, [(0, 0), (5, 5), (0, 0)]), taps, groups=512),
        ),
        "matmul (cuBLAS), bf16 60x1024 @ 1024x1024": (prompt, lambda y: y @ w1024),
        "rms_norm, bf16 60x1024": (prompt, lambda y: mx.fast.rms_norm(y, rms_w, 1e-6)),
        "sdpa causal (cuDNN), bf16 16 heads x 60": (
            prompt_heads,
            lambda y: mx.fast.scaled_dot_product_attention(y, y, y, scale=0.088, mask="causal"),
        ),
        "rope, bf16 16 heads x 60": (
            prompt_heads,
            lambda y: mx.fast.rope(y, 128, traditional=False, base=1e6, scale=1.0, offset=0),
        ),
    }


def chain_costs(first: mx.array, op, length: int, chains: int = 5) -> dict:
    y = first
    for _ in range(3):  # warm: kernels compiled, plans cached
        y = op(y)
    mx.eval(y)
    build, submit, wall = [], [], []
    for _ in range(chains):
        y = first
        start = time.perf_counter()
        for _ in range(length):
            y = op(y)
        built = time.perf_counter()
        mx.async_eval(y)
        submitted = time.perf_counter()
        mx.eval(y)
        done = time.perf_counter()
        build.append(built - start)
        submit.append(submitted - built)
        wall.append(done - start)
    per_op = lambda times: round(1e6 * statistics.median(times) / length, 2)  # noqa: E731
    return {"build_us": per_op(build), "submit_us": per_op(submit), "wall_us": per_op(wall)}


# A first call at each (one repeated, warm): whether a library plans for every new length, or for some (the
# 2026-12-06 H100 run saw cuDNN's attention take 0.5-0.7 ms at 60 after 40, and 37-59 ms at 61).
NEW_LENGTHS = (60, 60, 61, 62, 63, 64, 65, 72, 96, 97, 128)


def new_length_costs() -> dict:
    """The first call at each of NEW_LENGTHS, against a warm call, per kind whose library plans for each
    shape (cuDNN's attention and convolution) and a matmul: ms, after a call at another length."""
    mx.random.seed(0)
    taps = mx.random.normal((512, 11, 1)) * 0.1
    kinds = {
        "sdpa causal (cuDNN), bf16 16 heads": lambda n: mx.fast.scaled_dot_product_attention(
            *[mx.random.normal((1, 16, n, 128)).astype(mx.bfloat16)] * 3, scale=0.088, mask="causal"
        ),
        "depthwise conv1d (cuDNN), f32 512 channels": lambda n: mx.conv1d(
            mx.random.normal((1, n + 10, 512)), taps, groups=512
        ),
        "matmul (cuBLAS), bf16 n x 1024 @ 1024x1024": lambda n: (
            mx.random.normal((n, 1024)).astype(mx.bfloat16) @ mx.ones((1024, 1024), mx.bfloat16)
        ),
    }
    rows = {}
    for name, op in kinds.items():
        mx.eval(op(40))  # the library's first call in the process, at another length
        times = {}
        for n in NEW_LENGTHS:  # each new but the repeat of the first (warm)
            start = time.perf_counter()
            mx.eval(op(n))
            times[f"{n}" if f"{n}" not in times else f"{n} again"] = round(1e3 * (time.perf_counter() - start), 2)
        rows[name] = {"ms_by_length": times}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    for name, (first, op) in operations().items():
        try:
            row = chain_costs(first, op, args.chain)
        except Exception as error:  # noqa: BLE001 (a kind this device lacks, e.g. a CUDA kernel on the CPU)
            row = {"error": str(error).splitlines()[0][:120]}
        print(json.dumps({"label": args.label, "op": name, **row}), flush=True)
    try:
        for name, row in new_length_costs().items():
            print(json.dumps({"label": args.label, "op": name, **row}), flush=True)
    except Exception as error:  # noqa: BLE001 (as above)
        print(json.dumps({"label": args.label, "op": "new lengths", "error": str(error).splitlines()[0][:120]}))


if __name__ == "__main__":
    main()
