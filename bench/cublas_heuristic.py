"""What cuBLASLt's heuristic picks for MLX's float32 linear layer (`addmm(bias, x, w.T)`), read through ctypes.

    from cublas_heuristic import linear_algorithm; linear_algorithm(rows, n, k)

MLX asks cublasLtMatmulAlgoGetHeuristic for one algorithm at every matmul (mlx/backend/cuda/gemms/cublas_gemm.cpp,
cublas_utils.cpp: CublasMatmulBase::init_base, execute_matmul, set_bias). This repeats its descriptors for a
row-major x (rows, k) times w.T (w (n, k) row-major, so MLX's b is transposed) with the bias epilogue, float32
without TF32 (CUBLAS_COMPUTE_32F), and returns the algorithm's configuration: how many parts cuBLAS splits k
into (SPLITK_NUM) and how it adds them (REDUCTION_SCHEME), its tile and stages. bench/exact_gemm.py compares
SPLITK_NUM with the number of interleaved parts whose sums reproduce MLX's numbers. Needs a CUDA device (the
library is the one MLX loaded: libcublasLt.so.13 on LD_LIBRARY_PATH).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

# cublasLt.h (CUDA 12 and 13)
CUBLAS_COMPUTE_32F, CUDA_R_32F = 68, 0
DESC_POINTER_MODE, DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 2, 3, 4, 7, 8
OP_N, OP_T, EPILOGUE_BIAS, POINTER_MODE_HOST = 0, 1, 4, 0
PREF_MAX_WORKSPACE_BYTES = 1
CONFIG = {"algo_id": 0, "tile_id": 1, "splitk_num": 2, "reduction_scheme": 3, "cta_swizzling": 4, "custom_option": 5,
          "stages_id": 6, "inner_shape_id": 7, "cluster_shape_id": 8}  # fmt: skip
SIXTEEN_BITS = ("inner_shape_id", "cluster_shape_id")  # uint16_t attributes; the others are 32 bits
WORKSPACE = 32 * 2**20  # MLX's for compute capability 9 and above (H100, H200); 4 MiB below


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


@lru_cache(maxsize=1)
def _library():
    lib = ctypes.CDLL("libcublasLt.so.13")
    handle, pref = ctypes.c_void_p(), ctypes.c_void_p()
    _check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    size = ctypes.c_uint64(WORKSPACE)
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
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate")
    _set(lib, desc, DESC_POINTER_MODE, ctypes.c_int(POINTER_MODE_HOST))
    # MLX swaps the operands for its row-major output (cublasLt's A is MLX's b, w.T, transposed; B is x).
    _set(lib, desc, DESC_TRANSA, ctypes.c_int(OP_T))
    _set(lib, desc, DESC_TRANSB, ctypes.c_int(OP_N))
    _set(lib, desc, DESC_EPILOGUE, ctypes.c_int(EPILOGUE_BIAS))
    _set(lib, desc, DESC_BIAS_POINTER, ctypes.c_void_p(bias_address))
    a, b, out = _layout(lib, k, n, k), _layout(lib, k, rows, k), _layout(lib, n, rows, n)
    result, found = HeuristicResult(), ctypes.c_int()
    _check(
        lib.cublasLtMatmulAlgoGetHeuristic(
            handle, desc, a, b, out, out, pref, 1, ctypes.byref(result), ctypes.byref(found)
        ),
        "cublasLtMatmulAlgoGetHeuristic",
    )
    config = {"workspace_size": result.workspace_size, "waves_count": result.waves_count, "found": found.value}
    for name, attribute in CONFIG.items():
        value = ctypes.c_uint16() if name in SIXTEEN_BITS else ctypes.c_uint32()
        written = ctypes.c_size_t()
        status = lib.cublasLtMatmulAlgoConfigGetAttribute(
            ctypes.byref(result.algo), attribute, ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written)
        )
        config[name] = value.value if status == 0 else None
    for layout in (a, b, out):
        lib.cublasLtMatrixLayoutDestroy(layout)
    lib.cublasLtMatmulDescDestroy(desc)
    return config
