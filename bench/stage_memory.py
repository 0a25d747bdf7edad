"""Peak device memory of each stage for one padded batch: where does batched decoding spend memory?

    python bench/stage_memory.py MODEL_DIR [--batch 16] [--seconds 30] [--tokens 64]

Prints one JSON line per stage (frontend is numpy: not on the device) with MLX's peak active memory
above what was allocated before the stage, in GB.
"""

from __future__ import annotations

import argparse
import json

import mlx.core as mx
import numpy as np

from funasr_nano_mlx import load
from funasr_nano_mlx.audio import features
from funasr_nano_mlx.transcribe import greedy_batch, prompt_inputs


def measured(stage: str, batch: int, run):
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    out = run()
    mx.eval(out)
    print(
        json.dumps(
            {
                "stage": stage,
                "batch": batch,
                "base_gb": round(base / 2**30, 3),
                "peak_above_base_gb": round((mx.get_peak_memory() - base) / 2**30, 3),
            }
        ),
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    rng = np.random.default_rng(0)
    feats = features((0.05 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32))
    for batch in args.batch:
        x = mx.array(np.repeat(feats[None], batch, axis=0))
        lengths = mx.array([feats.shape[0]] * batch) if batch > 1 else None
        encoded = measured(
            "encoder",
            batch,
            lambda: (
                model.audio_encoder(x)
                if lengths is None
                else model.audio_encoder(x, (mx.arange(x.shape[1])[None] < lengths[:, None]).astype(mx.float32))
            ),
        )
        frames = measured("adaptor", batch, lambda: model.audio_adaptor(encoded, lengths))
        embeddings = [prompt_inputs(model, tokenizer, frames[row])[1] for row in range(batch)]
        mx.eval(embeddings)
        measured(
            "llm",
            batch,
            lambda: [
                mx.array(r.token_ids) for r in greedy_batch(model.llm, embeddings, [args.tokens] * batch, [], False)
            ],
        )
        print(json.dumps({"prompt_tokens": embeddings[0].shape[0]}))


if __name__ == "__main__":
    main()
