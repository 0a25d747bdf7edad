"""Fun-ASR-Nano on MLX."""

from .transcribe import Transcription, load, transcribe

__all__ = ["load", "transcribe", "Transcription"]
