"""The package's CUDA kernels run on the CPU, so that their arithmetic is checked without a GPU.

`launches(call)` records the kernels a function of `funasr_nano_mlx.cuda_kernels` launches (MLX's
`mx.fast.cuda_kernel` replaced by a recorder); `run_on_cpu(launches)` wraps each one's source as MLX's
build_kernel does (mlx/backend/cuda/custom_kernel.cpp: the inputs, `NAME_shape` where the source reads it, the
outputs, the template constants) into a C++ function, compiles them with g++ against `SHIM` (the few CUDA
built-ins these kernels use) and its address and undefined-behaviour sanitizers (a read past an array, a
misaligned vector load), runs the grid one block at a time with one host thread per CUDA thread, a barrier
standing in for `__syncthreads` (and one a warp for `__shfl_xor_sync`, a full warp's exchange through memory), and
returns the last launch's outputs. A launch may read an earlier one's outputs.

Why by hand: no CUDA emulator is packaged for a CPU-only machine, and these kernels exist to repeat cuBLAS's
order of float32 additions bit for bit, which only running their own text can check. The float operations map
one to one: `__fmaf_rn` is `std::fmaf`, correctly rounded like the GPU's fma, and g++ contracts nothing
(-ffp-contract=off), so the CPU's numbers are the GPU's for kernels that, like these, spell every rounding that
matters with an intrinsic. Not modelled, so not checked here: NVRTC's own contraction of a plain `a * b + c`
into an fma (its default), shared memory left unwritten (zero here as a static, garbage on a GPU), races that
depend on timing, shuffles other than a full warp's xor, and atomics; `rsqrtf` is 1 / sqrt (each rounded) here and
`__expf` exp, approximations on a GPU, so a kernel using them is checked for its order, not for the GPU's bits.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import numpy as np

SHIM = r"""
#include <algorithm>
#include <array>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 { int x = 0, y = 0, z = 0; };
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
std::barrier<>* block_barrier;

#define __device__
#define __global__
#define __grid_constant__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
#define expf expf_is_not_emulated  // the GPU's expf is not __expf, which the CPU's exp stands in for
constexpr int MAX_WARPS = 32;
float warp_slots[MAX_WARPS][32];
std::barrier<>* warp_barriers[MAX_WARPS];
inline float __shfl_xor_sync(unsigned, float value, int mask) {  // every lane of a full warp takes part
  if (blockDim.x % 32) std::abort();  // a partial warp's lane ^ mask would read a lane that is not there
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  warp_slots[warp][lane] = value;
  warp_barriers[warp]->arrive_and_wait();
  const float other = warp_slots[warp][lane ^ mask];
  warp_barriers[warp]->arrive_and_wait();
  return other;
}
struct alignas(16) float4 { float x, y, z, w; };
using std::isnan;
using std::max;
using std::min;
namespace cuda::std { using ::std::numeric_limits; }
using Shape = std::array<int32_t, 10>;

// Every block of the grid, one after another, each with blockDim.x host threads.
template <class Kernel>
void launch(Dim3 grid, int threads, Kernel kernel) {
  gridDim = grid;
  blockDim = {threads, 1, 1};
  std::barrier<> barrier(threads);
  block_barrier = &barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  for (int first = 0; first < threads; first += 32) {
    warps.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - first)));
    warp_barriers[first / 32] = warps.back().get();
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (int z = 0; z < grid.z; ++z)
        for (int y = 0; y < grid.y; ++y)
          for (int x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            kernel();
            barrier.arrive_and_wait();  // the block's shared memory is the next one's
          }
    });
  }
  for (auto& thread : pool) thread.join();
}

std::vector<float> read_floats(const char* path, size_t count) {
  std::vector<float> values(count);
  FILE* file = std::fopen(path, "rb");
  if (!file || std::fread(values.data(), sizeof(float), count, file) != count) std::abort();
  std::fclose(file);
  return values;
}
"""


class Launch(NamedTuple):
    name: str
    header: str
    source: str
    input_names: list[str]
    inputs: list[mx.array]
    output_names: list[str]
    output_shapes: list[tuple[int, ...]]
    template: list[tuple[str, int]]
    blocks: tuple[int, int, int]
    threads: int
    outputs: list[mx.array]  # what the recorder returned, so that a later launch reading one is known


def launches(call, monkeypatch) -> list[Launch]:
    """The kernels `call()` launches, in order (`mx.fast.cuda_kernel` recorded; float32 outputs only)."""
    recorded: list[Launch] = []

    def cuda_kernel(name, input_names, output_names, source, header="", **_):
        def launch(*, inputs, output_shapes, output_dtypes, grid, threadgroup, template=(), **_):
            assert all(dtype == mx.float32 for dtype in output_dtypes), name
            assert threadgroup[1:] == (1, 1), name
            outputs = [mx.zeros(shape, mx.float32) for shape in output_shapes]
            blocks = tuple(-(-g // t) for g, t in zip(grid, threadgroup))
            recorded.append(
                Launch(
                    name,
                    header,
                    source,
                    list(input_names),
                    list(inputs),
                    list(output_names),
                    [tuple(shape) for shape in output_shapes],
                    list(template),
                    blocks,
                    threadgroup[0],
                    outputs,
                )  # fmt: skip
            )
            return outputs

        return launch

    monkeypatch.setattr(mx.fast, "cuda_kernel", cuda_kernel)
    call()
    return recorded


def _function(index: int, launch: Launch) -> str:
    """The launch's header and source as a C++ function of its inputs and output, as MLX's build_kernel wraps it
    (in a namespace of its own, its macros undefined after it: MLX compiles each kernel alone)."""
    parameters = []
    for name in launch.input_names:
        parameters.append(f"const float* {name}")
        if f"{name}_shape" in launch.source:
            parameters.append(f"const Shape {name}_shape")
    parameters += [f"float* {name}" for name in launch.output_names]
    constants = "".join(_constant(key, value) for key, value in launch.template)
    text = launch.header + f"void kernel({', '.join(parameters)}) {{\n{constants}{launch.source}\n}}\n"
    macros = re.findall(r"^\s*#define (\w+)", text, flags=re.MULTILINE)
    return f"namespace launch_{index} {{\n{text}}}\n" + "".join(f"#undef {macro}\n" for macro in macros)


def _constant(key: str, value) -> str:
    """A template argument as MLX's build_kernel gives it: a type (float32 only: every buffer here is) or an int."""
    if isinstance(value, mx.Dtype):
        assert value == mx.float32, f"{key}: only float32 buffers are emulated"
        return f"  using {key} = float;\n"
    return f"  constexpr int {key} = {int(value)};\n"


def _shape(array: mx.array) -> str:
    return "Shape{" + ", ".join(str(d) for d in array.shape) + "}"


def run_on_cpu(recorded: list[Launch]) -> np.ndarray | tuple[np.ndarray, ...]:
    """The last launch's output (a tuple of its outputs where it has several), every launch run on the CPU in order
    (see the module's docstring)."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        program = SHIM + "".join(_function(i, launch) for i, launch in enumerate(recorded))
        program += "int main() {\n"
        buffers: dict[int, str] = {}  # id of a recorded output -> its buffer
        files = 0
        for i, launch in enumerate(recorded):
            arguments = []
            for name, array in zip(launch.input_names, launch.inputs):
                buffer = buffers.get(id(array))
                if buffer is None:
                    buffer = f"input_{files}"
                    np.asarray(array, dtype=np.float32).tofile(work / f"{buffer}.bin")
                    program += f'  auto {buffer} = read_floats("{work / buffer}.bin", {array.size});\n'
                    files += 1
                arguments.append(f"{buffer}.data()")
                if f"{name}_shape" in launch.source:
                    arguments.append(_shape(array))
            for j, (shape, output) in enumerate(zip(launch.output_shapes, launch.outputs)):
                program += f"  std::vector<float> output_{i}_{j}({int(np.prod(shape))});\n"
                arguments.append(f"output_{i}_{j}.data()")
                buffers[id(output)] = f"output_{i}_{j}"
            blocks = ", ".join(str(b) for b in launch.blocks)
            call = f"launch_{i}::kernel({', '.join(arguments)})"
            program += f"  launch(Dim3{{{blocks}}}, {launch.threads}, [&] {{ {call}; }});\n"
        last = len(recorded) - 1
        for j in range(len(recorded[last].outputs)):
            program += f"  std::fwrite(output_{last}_{j}.data(), sizeof(float), output_{last}_{j}.size(), stdout);\n"
        program += "}\n"
        (work / "kernels.cpp").write_text(program)
        binary = work / "kernels"
        compile_command = [
            "g++",
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-pthread",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-o",
            str(binary),
        ]
        built = subprocess.run([*compile_command, str(work / "kernels.cpp")], capture_output=True, text=True)
        if built.returncode:
            raise RuntimeError(f"g++ could not compile the kernels:\n{built.stderr[-4000:]}")
        env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
        ran = subprocess.run([str(binary)], capture_output=True, env=env)
        if ran.returncode:  # the sanitizers' report: a read or write out of bounds, a misaligned load
            raise RuntimeError(f"the kernels failed on the CPU:\n{ran.stderr.decode(errors='replace')[-4000:]}")
        out = ran.stdout
    values, shapes = np.frombuffer(out, dtype=np.float32), recorded[-1].output_shapes
    ends = np.cumsum([int(np.prod(shape)) for shape in shapes])
    arrays = [part.reshape(shape) for part, shape in zip(np.split(values, ends[:-1]), shapes)]
    return arrays[0] if len(arrays) == 1 else tuple(arrays)
