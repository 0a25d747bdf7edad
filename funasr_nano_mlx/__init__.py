"""Fun-ASR-Nano on MLX: `load(path_or_repo_id)`, `transcribe(model, tokenizer, audio)` and the
`Transcription` it returns.

Importing the package imports no MLX, so `funasr-nano-mlx --help` and the commands that need no model
start at once; these three names import funasr_nano_mlx.transcribe on first use.
"""

import importlib
import os
import sys
import types

# MLX's CUDA backend computes float32 matmuls in TF32 (10-bit mantissa) unless MLX_ENABLE_TF32=0,
# which it reads once. Encoder and adaptor run in float32 to match upstream, so ask for real float32
# before any module of this package imports MLX (they all come after this line); set
# MLX_ENABLE_TF32=1 yourself to trade that accuracy for speed.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

__all__ = ["load", "transcribe", "Transcription"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".transcribe", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package's `transcribe` is the function, as with an eager `from .transcribe import transcribe`.
    Python binds a submodule to its package's attribute of the same name when the submodule is first
    imported (by any route), which would replace the function with the module: that binding is
    skipped. The module itself stays importable as funasr_nano_mlx.transcribe."""

    def __setattr__(self, name: str, value) -> None:
        if name == "transcribe" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
