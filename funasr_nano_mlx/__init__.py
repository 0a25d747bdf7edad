"""Fun-ASR-Nano on MLX."""

import os

# MLX's CUDA backend computes float32 matmuls in TF32 (10-bit mantissa) unless MLX_ENABLE_TF32=0,
# which it reads once. Encoder and adaptor run in float32 to match upstream, so ask for real float32
# before MLX is first used; set MLX_ENABLE_TF32=1 yourself to trade that accuracy for speed.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

from .transcribe import Transcription, load, transcribe  # noqa: E402

__all__ = ["load", "transcribe", "Transcription"]
