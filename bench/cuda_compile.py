"""Compile the package's CUDA kernels with a local nvcc, wrapped as MLX wraps them, before spending GPU time.

    python bench/cuda_compile.py --mlx-src DIR [--arch sm_90a] [--head-dim 128 --q-heads 16 --kv-heads 8]

DIR is an MLX source checkout of the installed version (the kernels include its
mlx/backend/cuda/device headers). Each kernel of `funasr_nano_mlx.cuda_kernels` is called once on the
CPU at the given shapes (Qwen3-0.6B's by default) with a recorder in place of `mx.fast.cuda_kernel`;
the recorded source is wrapped as MLX 0.32's `build_kernel` does (mlx/backend/cuda/custom_kernel.cpp:
the inputs' pointers, `NAME_shape` where the source mentions it, the outputs, the template arguments)
and compiled to PTX. A compile error costs seconds here instead of a GPU machine's start. Exit status 1
if any kernel fails to compile. Needs nvcc on PATH (CUDA 12.8 or newer for sm_90a).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from funasr_nano_mlx import cuda_kernels  # noqa: E402
from funasr_nano_mlx.model import UpstreamRoPE  # noqa: E402

CUDA_TYPES = {
    mx.int32: "int32_t",
    mx.uint32: "uint32_t",
    mx.float16: "__half",
    mx.bfloat16: "__nv_bfloat16",
    mx.float32: "float",
}


def wrapped(name, header, source, input_names, inputs, output_names, output_dtypes, template) -> str:
    """The kernel's full source as MLX generates it."""
    text = '#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n' + header
    text += f"namespace mlx::core::cu {{\n\nnamespace cg = cooperative_groups;\n\n__global__ void {name}(\n"
    for input_name, array in zip(input_names, inputs):
        text += f"    const {CUDA_TYPES[array.dtype]}* {input_name},\n"
        if array.ndim > 0 and f"{input_name}_shape" in source:
            text += f"    const __grid_constant__ Shape {input_name}_shape,\n"
    text += ",\n".join(f"    {CUDA_TYPES[d]}* {n}" for n, d in zip(output_names, output_dtypes)) + ") {\n"
    for key, value in template:
        text += (
            f"  using {key} = {CUDA_TYPES[value]};\n"
            if isinstance(value, mx.Dtype)
            else f"  constexpr int {key} = {value};\n"
        )
    return text + "\n" + source + "\n}\n\n} // namespace mlx::core::cu\n"


class Recorder:
    """Stands in for mx.fast.cuda_kernel: compiles what each kernel launch would compile, returns zeros."""

    def __init__(self, include: Path, arch: str):
        self.include, self.arch, self.failed = include, arch, []

    def __call__(self, name, input_names, output_names, source, header="", **_):
        def launch(*, inputs, output_shapes, output_dtypes, template=(), **_):
            text = wrapped(name, header, source, input_names, inputs, output_names, output_dtypes, template)
            with tempfile.TemporaryDirectory() as work:
                file = Path(work) / f"{name}.cu"
                file.write_text(text)
                command = [
                    "nvcc",
                    f"-arch={self.arch}",
                    "--ptx",
                    "-std=c++17",
                    f"-I{self.include}",
                    "-o",
                    "/dev/null",
                    str(file),
                ]
                done = subprocess.run(command, capture_output=True, text=True)
            print(f"{name}: {'compiles' if done.returncode == 0 else 'FAILS'}", flush=True)
            if done.returncode:
                print(done.stderr[-4000:])
                self.failed.append(name)
            return [mx.zeros(shape, dtype) for shape, dtype in zip(output_shapes, output_dtypes)]

        return launch


def project_kernels(hidden: int, intermediate: int, attention: int, dtype: mx.Dtype) -> None:
    """The projection kernels of one decoder layer, bf16 and at 4 and 8 bits."""
    norm = nn.RMSNorm(hidden)
    norm.weight = norm.weight.astype(dtype)
    row = mx.zeros((1, 1, hidden), dtype)
    for bits in (None, 4, 8):
        gate_up, down = nn.Linear(hidden, 2 * intermediate, bias=False), nn.Linear(intermediate, hidden, bias=False)
        out = nn.Linear(attention, hidden, bias=False)
        for linear in (gate_up, down, out):
            linear.set_dtype(dtype)
        if bits:
            gate_up, down, out = (nn.QuantizedLinear.from_linear(m, bits=bits) for m in (gate_up, down, out))
        cuda_kernels.norm_project(row, norm, gate_up)
        cuda_kernels.norm_swiglu(row, norm, gate_up)
        cuda_kernels.project_add(mx.zeros((1, 1, attention), dtype), out, row)
        cuda_kernels.project_add(mx.zeros((1, 1, intermediate), dtype), down, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlx-src", type=Path, required=True, help="an MLX source checkout")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--q-heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3072)
    args = parser.parse_args()
    if not (args.mlx_src / "mlx/backend/cuda/device/utils.cuh").is_file():
        parser.error(f"{args.mlx_src} holds no mlx/backend/cuda/device/utils.cuh: not an MLX source checkout")
    recorder = Recorder(args.mlx_src, args.arch)
    mx.fast.cuda_kernel = recorder
    dims, heads, kv_heads, batch, dtype = args.head_dim, args.q_heads, args.kv_heads, 2, mx.bfloat16
    buffers = mx.zeros((batch, kv_heads, 256, dims), dtype)
    rows, slot = mx.zeros((batch,), mx.int32), mx.array([3], mx.int32)
    cuda_kernels.decode_attention(mx.zeros((batch, heads, 1, dims), dtype), buffers, buffers, rows, slot, dims**-0.5)
    norm = nn.RMSNorm(dims, eps=1e-6)
    norm.weight = norm.weight.astype(dtype)
    qkv = mx.zeros((batch, 1, (heads + 2 * kv_heads) * dims), dtype)
    cuda_kernels.qk_norm_rope(qkv, norm, norm, UpstreamRoPE(dims, 1e6, "bf16"), rows, heads, kv_heads)
    project_kernels(args.hidden, args.intermediate, heads * dims, dtype)
    sys.exit(1 if recorder.failed else 0)


if __name__ == "__main__":
    main()
