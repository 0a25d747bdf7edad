"""Parity on the accelerator: MLX (this machine's default device) against the official model.

    python bench/gpu_parity.py --workdir /tmp/bench [--seconds 5] [--tokens 64]

Uses the full-size random checkpoint (built under --workdir if missing) converted to float32 and to
bfloat16. The official model runs on the CPU in float32 (no TF32 anywhere). Prints one JSON line per
variant: relative L2 errors of the encoder and adaptor outputs and of teacher-forced logits, argmax
agreement along the reference's greedy path, and how many greedy tokens match. Run it once with
MLX_ENABLE_TF32=0 (this package's default) and once with =1 to see what TF32 costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.speed import prepare, synthetic_audio  # noqa: E402
from tests.reference import rel_err  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("work/bench"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    upstream, f32 = prepare(args.workdir, "full", "float32", official=True)  # the official model is the reference
    _, bf16 = prepare(args.workdir, "full", "bfloat16", official=True)
    wave = synthetic_audio(args.seconds)

    from tests.reference import Reference

    reference = Reference(upstream)
    feats = reference.features(wave)
    enc = reference.encode(feats)
    adapted = reference.adapt(enc)
    embeds = reference.input_embeds(wave)
    path = reference.transcribe(wave, max_new_tokens=args.tokens, segmenter=None, stop_loops=False)[0]
    logits = reference.logits(embeds, path)
    del reference
    gc.collect()

    import mlx.core as mx

    from funasr_nano_mlx import load, transcribe
    from funasr_nano_mlx.transcribe import prompt_inputs

    for name, model_dir in (("float32", f32), ("bfloat16", bf16)):
        model, tokenizer = load(model_dir)
        ours_enc = np.array(model.audio_encoder(mx.array(feats)[None])[0])
        ours_adapted = np.array(model.audio_adaptor(mx.array(enc)[None])[0])
        _, embeddings = prompt_inputs(model, tokenizer, mx.array(adapted))
        ids = mx.array(path)[None]
        x = mx.concatenate([embeddings[None], model.llm.model.embed_tokens(ids)], axis=1)
        ours_logits = np.array(model.llm(ids, input_embeddings=x)[0, embeddings.shape[0] - 1 :].astype(mx.float32))
        greedy = transcribe(
            model, tokenizer, wave, max_new_tokens=args.tokens, segmenter=None, stop_loops=False
        ).token_ids
        same = next((i for i, (a, b) in enumerate(zip(greedy, path)) if a != b), min(len(greedy), len(path)))
        print(
            json.dumps(
                {
                    "variant": name,
                    "device": str(mx.default_device()),
                    "MLX_ENABLE_TF32": os.environ.get("MLX_ENABLE_TF32"),
                    "encoder_rel_err": rel_err(ours_enc, enc),
                    "adaptor_rel_err": rel_err(ours_adapted, adapted),
                    "logits_rel_err": rel_err(ours_logits, logits),
                    "teacher_forced_top1": float((ours_logits.argmax(-1) == logits.argmax(-1)).mean()),
                    "greedy_identical_prefix": same,
                    "tokens": len(path),
                }
            ),
            flush=True,
        )
        del model
        gc.collect()


if __name__ == "__main__":
    main()
