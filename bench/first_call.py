"""The cost of the very first transcription in a fresh process: `load`, then 1 s, then 10 s of audio.

    MLX_PTX_CACHE_DIR=/tmp/empty python bench/first_call.py MODEL_DIR

With an empty MLX_PTX_CACHE_DIR this includes compiling MLX's fused CUDA kernels, which MLX then keeps
on disk; run it again with the same directory for a later process's cost. One JSON line, seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import FIXED_LENGTH, synthetic_audio  # noqa: E402


def main() -> None:
    start = time.perf_counter()
    from funasr_nano_mlx import load, transcribe

    model, tokenizer = load(sys.argv[1])
    loaded = time.perf_counter()
    transcribe(model, tokenizer, synthetic_audio(1.0), max_new_tokens=8, **FIXED_LENGTH)
    first = time.perf_counter()
    transcribe(model, tokenizer, synthetic_audio(10.0), max_new_tokens=8, **FIXED_LENGTH)
    second = time.perf_counter()
    transcribe(model, tokenizer, synthetic_audio(10.0), max_new_tokens=8, **FIXED_LENGTH)
    warm = time.perf_counter()
    print(
        json.dumps(
            {
                "load_s": round(loaded - start, 2),
                "first_1s_clip_s": round(first - loaded, 3),
                "first_10s_clip_s": round(second - first, 3),
                "warm_10s_clip_s": round(warm - second, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
