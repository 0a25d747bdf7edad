"""Compile the package's CUDA kernels with a local nvcc, wrapped as MLX wraps them, before spending GPU time.

    python bench/cuda_compile.py --mlx-src DIR [--arch sm_90a] [--head-dim 128 --q-heads 16 --kv-heads 8]
                                 [--nvrtc LIBNVRTC --cuda-include DIR [--ptx DIR]]

DIR is an MLX source checkout of the installed version (the kernels include its
mlx/backend/cuda/device headers). Each kernel of `funasr_nano_mlx.cuda_kernels` is called once on the
CPU at the given shapes (Qwen3-0.6B's by default) with a recorder in place of `mx.fast.cuda_kernel`;
the recorded source is wrapped as MLX 0.32's `build_kernel` does (mlx/backend/cuda/custom_kernel.cpp:
the inputs' pointers, `NAME_shape` where the source mentions it, the outputs, the template arguments)
and compiled to PTX (written out with --ptx: a refactor that leaves a kernel's instructions alone, up to
register numbers, leaves its measured numbers alone). A compile error costs seconds here instead of a GPU
machine's start. Exit status 1
if any kernel fails to compile. Needs nvcc on PATH (CUDA 12.8 or newer for sm_90a).

Like MLX, each distinct source is compiled once. With --nvrtc (a libnvrtc.so, e.g. from the
nvidia-cuda-nvrtc wheel, no GPU needed) the sources are compiled with NVRTC and the options MLX's JIT
passes (mlx/backend/cuda/jit_module.cpp), and timed: MLX keeps no disk copy of a custom kernel, so every
process pays this at its first decode.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
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


def nvcc_errors(name: str, text: str, include: Path, arch: str) -> str:
    """nvcc's errors for this source ("" if it compiles to PTX)."""
    with tempfile.TemporaryDirectory() as work:
        file = Path(work) / f"{name}.cu"
        file.write_text(text)
        command = ["nvcc", f"-arch={arch}", "--ptx", "-std=c++17", f"-I{include}", "-o", "/dev/null", str(file)]
        done = subprocess.run(command, capture_output=True, text=True)
    return done.stderr if done.returncode else ""


class Nvrtc:
    """NVRTC through ctypes, with the options of MLX's JIT: the device as the default execution space, the
    architecture, include paths (MLX passes its device headers from memory; here from the source tree)."""

    def __init__(self, library: Path, includes: list[Path], arch: str):
        self.lib = ctypes.CDLL(str(library))
        paths = [f"--include-path={path}" for path in includes]
        self.options = [b"--device-as-default-execution-space", f"--gpu-architecture={arch}".encode()]
        self.options += [path.encode() for path in paths]

    def errors(self, name: str, text: str, ptx: Path | None = None) -> str:
        """NVRTC's errors for this source ("" if it compiles); with `ptx`, its PTX is written there."""
        program = ctypes.c_void_p()
        created = self.lib.nvrtcCreateProgram(
            ctypes.byref(program), text.encode(), f"{name}.cu".encode(), 0, None, None
        )
        if created:
            return f"nvrtcCreateProgram failed ({created})"
        options = (ctypes.c_char_p * len(self.options))(*self.options)
        failed = self.lib.nvrtcCompileProgram(program, len(self.options), options)
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(program, log)
        if ptx is not None and not failed:
            self.lib.nvrtcGetPTXSize(program, ctypes.byref(size))
            code = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetPTX(program, code)
            ptx.write_text(code.value.decode())
        self.lib.nvrtcDestroyProgram(ctypes.byref(program))
        return log.value.decode(errors="replace") if failed else ""


class Recorder:
    """Stands in for mx.fast.cuda_kernel: compiles each distinct source a kernel launch would compile (with
    nvcc, or timed with NVRTC), returns zeros."""

    def __init__(self, include: Path, arch: str, nvrtc: Nvrtc | None = None, ptx: Path | None = None):
        self.include, self.arch, self.nvrtc, self.ptx = include, arch, nvrtc, ptx
        self.failed, self.seconds = [], {}

    def __call__(self, name, input_names, output_names, source, header="", **_):
        def launch(*, inputs, output_shapes, output_dtypes, template=(), **_):
            text = wrapped(name, header, source, input_names, inputs, output_names, output_dtypes, template)
            if text not in self.seconds:
                start = time.perf_counter()
                if self.nvrtc:
                    # One file a source: the kernel's name and its template arguments.
                    file = (
                        self.ptx / f"{name}_{'_'.join(str(CUDA_TYPES.get(value, value)) for _, value in template)}.ptx"
                        if self.ptx
                        else None
                    )
                    errors = self.nvrtc.errors(name, text, file)
                else:
                    errors = nvcc_errors(name, text, self.include, self.arch)
                self.seconds[text] = time.perf_counter() - start
                took = f" in {self.seconds[text]:.2f} s (NVRTC)" if self.nvrtc else ""
                print(f"{name}: {'FAILS' if errors else 'compiles'}{took}", flush=True)
                if errors:
                    print(errors[-4000:])
                    self.failed.append(name)
            return [mx.zeros(shape, dtype) for shape, dtype in zip(output_shapes, output_dtypes)]

        return launch


def project_kernels(hidden: int, intermediate: int, attention: int, dtype: mx.Dtype) -> None:
    """The projection kernels of one decoder layer, bf16 and at 4 bits (cuda_kernels.MEASURED_QUANTIZATIONS)."""
    norm = nn.RMSNorm(hidden)
    norm.weight = norm.weight.astype(dtype)
    row, attended, act = (mx.zeros((1, 1, k), dtype) for k in (hidden, attention, intermediate))
    for bits in (None, 4):
        gate_up, down = nn.Linear(hidden, 2 * intermediate, bias=False), nn.Linear(intermediate, hidden, bias=False)
        out = nn.Linear(attention, hidden, bias=False)
        for linear in (gate_up, down, out):
            linear.set_dtype(dtype)
        if bits:
            gate_up, down, out = (nn.QuantizedLinear.from_linear(m, bits=bits) for m in (gate_up, down, out))
            for linear in (gate_up, down, out):
                cuda_kernels.pack_quantized(linear)  # as the model's are at load
        cuda_kernels.norm_project(row, norm, gate_up)
        cuda_kernels.norm_swiglu(row, norm, gate_up)
        cuda_kernels.project_add(attended, out, row)
        cuda_kernels.project_add(act, down, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlx-src", type=Path, required=True, help="an MLX source checkout")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--q-heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--nvrtc", type=Path, help="a libnvrtc.so: compile with NVRTC, as MLX does, and time it")
    parser.add_argument("--cuda-include", type=Path, help="the CUDA headers NVRTC needs (with --nvrtc)")
    parser.add_argument(
        "--ptx", type=Path, help="with --nvrtc: write each source's PTX here, to compare device code across a change"
    )
    args = parser.parse_args()
    if not (args.mlx_src / "mlx/backend/cuda/device/utils.cuh").is_file():
        parser.error(f"{args.mlx_src} holds no mlx/backend/cuda/device/utils.cuh: not an MLX source checkout")
    nvrtc = None
    if args.nvrtc:
        if not args.cuda_include:
            parser.error("--nvrtc needs --cuda-include (the directory of cuda_runtime.h)")
        includes = [args.mlx_src, args.cuda_include, args.cuda_include / "cccl"]
        nvrtc = Nvrtc(args.nvrtc, includes, args.arch)
    if args.ptx:
        if not nvrtc:
            parser.error("--ptx needs --nvrtc")
        args.ptx.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.mlx_src, args.arch, nvrtc, args.ptx)
    mx.fast.cuda_kernel = recorder
    dims, heads, kv_heads, batch, dtype = args.head_dim, args.q_heads, args.kv_heads, 2, mx.bfloat16
    buffer, step_kv = (mx.zeros((2, batch, kv_heads, slots, dims), dtype) for slots in (256, 1))
    rows, slot = mx.zeros((batch,), mx.int32), mx.array([3], mx.int32)
    cuda_kernels.decode_attention(mx.zeros((batch, heads, 1, dims), dtype), buffer, step_kv, rows, slot, dims**-0.5)
    norm = nn.RMSNorm(dims, eps=1e-6)
    norm.weight = norm.weight.astype(dtype)
    qkv = mx.zeros((batch, 1, (heads + 2 * kv_heads) * dims), dtype)
    rope = UpstreamRoPE(dims, 1e6, "bf16")
    cuda_kernels.step_heads(qkv, norm, norm, rope, rows, heads, kv_heads)
    cuda_kernels.step_attention(
        qkv[:1], norm, norm, rope, rows[:1], buffer[:, :1], rows[:1], slot, heads, kv_heads, dims**-0.5
    )
    layers = mx.zeros((28, 2, 1, kv_heads, 256, dims), dtype)
    cuda_kernels.write_step_kv(layers, [step_kv[:, :1]] * 28, slot)
    prompt = mx.zeros((1, 60, (heads + 2 * kv_heads) * dims), dtype)
    cuda_kernels.prompt_attention(prompt, norm, norm, rope, heads, kv_heads, dims**-0.5)
    project_kernels(args.hidden, args.intermediate, heads * dims, dtype)
    embedding = nn.QuantizedEmbedding.from_embedding(nn.Embedding(1000, args.hidden), group_size=64, bits=4)
    embedding.set_dtype(dtype)
    cuda_kernels.pack_quantized(embedding)
    cuda_kernels.embed_affine(rows, embedding)
    for encoder_dtype in (mx.float32, mx.bfloat16):  # the encoder's kernels, in a float32 and a bf16 model
        qkv, taps = mx.zeros((batch, 50, 3 * 512), encoder_dtype), mx.zeros((512, 11, 1), encoder_dtype)
        for mask in (None, mx.ones((batch, 50), encoder_dtype)):
            cuda_kernels.fsmn_memory(qkv, taps, 5, mask)
            cuda_kernels.frame_attention(qkv, 4, mask)
    for rows, frames in ((1, 50), (4, 500)):  # the attention's float32 products; the scores in 64 x 64 tiles too
        qkv = mx.zeros((rows, frames, 3 * 512), mx.float32)
        for mask in (None, mx.ones((rows, frames), mx.float32), mx.ones((rows, frames), mx.bfloat16)):
            cuda_kernels.frame_attention_products(qkv, 4, mask)
            taps = mx.zeros((512, 11, 1), mx.float32)
            cuda_kernels.scores_and_memory(qkv, 4, taps, 5, mask)
            cuda_kernels.weights_and_memory(qkv, 4, taps, 5, mask)
            cuda_kernels.context_and_memory(qkv, 4, taps, 5, mask)
    for n, k in ((2048, 512), (512, 2048)):  # the linears, unsplit and split, in 64 x 64 and 32 x 32 tiles
        weight, bias = mx.zeros((n, k), mx.float32), mx.zeros((n,), mx.float32)
        residual = mx.zeros((1, 167, n), mx.float32)
        for parts in (1, 4):
            for relu, addends in ((False, ()), (True, ()), (False, (residual,)), (False, (residual, residual))):
                cuda_kernels.split_linear(mx.zeros((1, 167, k), mx.float32), weight, bias, parts, relu, addends)
        norm = (mx.ones((n,), mx.float32), mx.zeros((n,), mx.float32), 1e-5)  # the norm in the kernel adding the parts
        for addends in ((residual,), (residual,) * 2):
            cuda_kernels.split_linear(mx.zeros((1, 167, k), mx.float32), weight, bias, 4, False, addends, norm)
    if nvrtc:
        total = sum(recorder.seconds.values())
        print(f"{len(recorder.seconds)} distinct sources, {total:.1f} s with NVRTC (bf16 and quantized projections)")
    sys.exit(1 if recorder.failed else 0)


if __name__ == "__main__":
    main()
