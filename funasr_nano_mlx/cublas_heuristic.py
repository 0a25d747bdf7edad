"""What cuBLASLt's heuristic picks for MLX's float32 linear layer (`addmm(bias, x, w.T)`), read through ctypes.

MLX asks cublasLtMatmulAlgoGetHeuristic for one algorithm at every matmul (mlx/backend/cuda/gemms/cublas_gemm.cpp,
cublas_utils.cpp: CublasMatmulBase::init_base, execute_matmul, set_bias). This repeats its descriptors for a
row-major x (rows, k) times w.T (w (n, k) row-major, so MLX's b is transposed) with the bias epilogue, float32
without TF32 (CUBLAS_COMPUTE_32F), and returns the algorithm's configuration: how many parts cuBLAS splits k
into (SPLITK_NUM) and how it adds them (REDUCTION_SCHEME), its tile and stages. `cuda_kernels.split_linear`
adds a linear layer's products in the order of those parts, so that its numbers are cuBLAS's
(bench/exact_gemm.py: the heuristic's SPLITK_NUM was the order found at 69 of 70 shapes, all but one of 17 rows,
on an H100). Why by hand: no library exposes cuBLASLt's heuristic. Needs a CUDA device and the cuBLASLt MLX loaded
(read from /proc/self/maps; else libcublasLt.so.13, CUDA 13's, which MLX's CUDA wheels use).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import mlx.core as mx

# cublasLt.h (CUDA 12 and 13)
CUBLAS_COMPUTE_32F, CUDA_R_32F = 68, 0
DESC_POINTER_MODE, DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 2, 3, 4, 7, 8
OP_N, OP_T, EPILOGUE_BIAS, POINTER_MODE_HOST = 0, 1, 4, 0
PREF_MAX_WORKSPACE_BYTES = 1
CONFIG = {"algo_id": 0, "tile_id": 1, "splitk_num": 2, "reduction_scheme": 3, "cta_swizzling": 4, "custom_option": 5,
          "stages_id": 6, "inner_shape_id": 7, "cluster_shape_id": 8}  # fmt: skip
SIXTEEN_BITS = ("inner_shape_id", "cluster_shape_id")  # uint16_t attributes; the others are 32 bits


class HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


def compute_capability() -> int | None:
    """The major compute capability of MLX's GPU (9: H100, H200), or None where MLX does not say."""
    major = mx.device_info().get("compute_capability_major")
    return None if major is None else int(major)


def workspace_bytes(major: int) -> int:
    """MLX's workspace limit, which the heuristic reads: 32 MiB from compute capability 9, else 4 MiB."""
    return (32 if major >= 9 else 4) * 2**20


def library_path() -> str:
    """The cuBLASLt this process has loaded (MLX's, so that the heuristic is the one MLX asks), else CUDA 13's name."""
    try:
        maps = Path("/proc/self/maps").read_text().split()
    except OSError:  # not Linux
        maps = []
    return next((word for word in maps if "/libcublasLt.so" in word), "libcublasLt.so.13")


@lru_cache(maxsize=1)
def _library():
    major = compute_capability()
    if major is None:
        raise RuntimeError("MLX does not report its GPU's compute capability")
    lib = ctypes.CDLL(library_path())
    handle, pref = ctypes.c_void_p(), ctypes.c_void_p()
    _check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    size = ctypes.c_uint64(workspace_bytes(major))
    _check(
        lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(size), 8),
        "cublasLtMatmulPreferenceSetAttribute",
    )
    return lib, handle, pref


def _layout(lib, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
    desc = ctypes.c_void_p()
    _check(
        lib.cublasLtMatrixLayoutCreate(
            ctypes.byref(desc), CUDA_R_32F, ctypes.c_uint64(rows), ctypes.c_uint64(cols), ctypes.c_int64(ld)
        ),
        "cublasLtMatrixLayoutCreate",
    )
    return desc


def _set(lib, desc, attribute: int, value: ctypes._SimpleCData) -> None:
    _check(
        lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
        f"cublasLtMatmulDescSetAttribute({attribute})",
    )


@lru_cache(maxsize=None)
def linear_algorithm(rows: int, n: int, k: int, bias_address: int = 256) -> dict:
    """The configuration of the algorithm cuBLASLt's heuristic gives MLX for x (rows, k) @ w.T + bias, w (n, k);
    `bias_address` only for its alignment, which the heuristic reads."""
    lib, handle, pref = _library()
    desc, layouts = ctypes.c_void_p(), []
    try:
        _check(
            lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate"
        )
        _set(lib, desc, DESC_POINTER_MODE, ctypes.c_int(POINTER_MODE_HOST))
        # MLX swaps the operands for its row-major output (cublasLt's A is MLX's b, w.T, transposed; B is x).
        _set(lib, desc, DESC_TRANSA, ctypes.c_int(OP_T))
        _set(lib, desc, DESC_TRANSB, ctypes.c_int(OP_N))
        _set(lib, desc, DESC_EPILOGUE, ctypes.c_int(EPILOGUE_BIAS))
        _set(lib, desc, DESC_BIAS_POINTER, ctypes.c_void_p(bias_address))
        for shape in ((k, n, k), (k, rows, k), (n, rows, n)):
            layouts.append(_layout(lib, *shape))
        a, b, out = layouts
        result, found = HeuristicResult(), ctypes.c_int()
        _check(
            lib.cublasLtMatmulAlgoGetHeuristic(
                handle, desc, a, b, out, out, pref, 1, ctypes.byref(result), ctypes.byref(found)
            ),
            "cublasLtMatmulAlgoGetHeuristic",
        )
    finally:
        for layout in layouts:
            lib.cublasLtMatrixLayoutDestroy(layout)
        if desc.value:
            lib.cublasLtMatmulDescDestroy(desc)
    config = {"workspace_size": result.workspace_size, "waves_count": result.waves_count, "found": found.value}
    for name, attribute in CONFIG.items():
        value = ctypes.c_uint16() if name in SIXTEEN_BITS else ctypes.c_uint32()
        written = ctypes.c_size_t()
        status = lib.cublasLtMatmulAlgoConfigGetAttribute(
            ctypes.byref(result.algo), attribute, ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written)
        )
        config[name] = value.value if status == 0 else None
    return config


# Where the order of `cuda_kernels.split_linear` was measured to be cuBLAS's (bench/exact_gemm.py's linear sweep,
# on an H100): compute capability 9, and algorithm 55 (the xmma SIMT float32 GEMMs), whose parts are added in order
# in the compute type (reduction scheme 2) or not split (0). The one shape whose order was not found took algorithm
# 20 (CUTLASS's SIMT GEMM with cuBLAS's split-K reduction kernel). Other GPUs and algorithms may add in other orders.
MEASURED_COMPUTE_CAPABILITY = 9
MEASURED_ALGORITHMS = (55,)
ORDERED_REDUCTIONS = (0, 2)


@lru_cache(maxsize=None)  # a failure too: an encoder pass asks for each of its linears when not compiled
def split_k_parts(rows: int, n: int, k: int) -> int | None:
    """In how many interleaved parts cuBLAS adds the products of MLX's float32 linear layer x (rows, k) @ w.T + bias
    (1: one chain), or None where that is not known: no cuBLASLt here, a failed query, or an algorithm, reduction or
    GPU other than those measured (MEASURED_ALGORITHMS, ORDERED_REDUCTIONS, MEASURED_COMPUTE_CAPABILITY)."""
    try:
        config = linear_algorithm(rows, n, k)
    except (OSError, RuntimeError, AttributeError):  # no library, or one without these functions
        return None
    measured = (
        compute_capability() == MEASURED_COMPUTE_CAPABILITY
        and config["found"]
        and config["algo_id"] in MEASURED_ALGORITHMS
        and config["reduction_scheme"] in ORDERED_REDUCTIONS
    )
    parts = config["splitk_num"]
    return parts if measured and parts else None  # 0 or unread: not known
