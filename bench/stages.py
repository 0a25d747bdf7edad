"""Per-stage timings of this package on one model, with and without `mx.compile`, and the numbers' agreement.

    python bench/stages.py MODEL_DIR [--seconds 10] [--tokens 128] [--new-lengths 7.3 11.9 13.4]

Prints one JSON line per measurement: frontend (numpy vs MLX ops), encoder + adaptor (compiled vs
not, warm median, and the first pass at lengths not seen before), greedy decoding ms/token (compiled
vs not). FUNASR_NANO_COMPILE is switched per measurement (the package reads it at each call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import synthetic_audio  # noqa: E402

from funasr_nano_mlx import load  # noqa: E402
from funasr_nano_mlx.audio import features, features_mx  # noqa: E402
from funasr_nano_mlx.transcribe import greedy_batch, prompt_inputs  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, float]:
    """(first, median of the rest) in ms; fn must evaluate what it computes."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times[0], statistics.median(times[1:])


def compiled(on: bool) -> None:
    os.environ["FUNASR_NANO_COMPILE"] = "1" if on else "0"


def report(**row) -> None:
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--new-lengths", type=float, nargs="+", default=[7.3, 11.9, 13.4])
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    wave = synthetic_audio(args.seconds)

    _, numpy_ms = timed(lambda: features(wave), 20)
    _, mlx_ms = timed(lambda: mx.eval(features_mx(wave)), 20)
    diff = float(np.abs(features(wave) - np.array(features_mx(wave))).max())
    report(stage="frontend", label=args.label, numpy_ms=numpy_ms, mlx_ms=mlx_ms, max_abs_diff=diff)

    feats = mx.array(features(wave))[None]
    outputs = {}
    for on in (False, True):
        compiled(on)
        first, warm = timed(lambda: mx.eval(model.encode(feats)), 10)
        outputs[on] = np.array(model.encode(feats))
        new = []
        for seconds in args.new_lengths:  # never seen by this process: retrace / new kernels
            f = mx.array(features(synthetic_audio(seconds)))[None]
            cold, again = timed(lambda: mx.eval(model.encode(f)), 3)
            new.append(round(cold / again, 2))
        report(
            stage="encoder+adaptor",
            label=args.label,
            compiled=on,
            first_ms=first,
            warm_ms=warm,
            new_length_first_over_warm=new,
        )
    ref, out = outputs[False].astype(np.float64), outputs[True].astype(np.float64)
    report(
        stage="encoder+adaptor agreement",
        label=args.label,
        max_abs_diff=float(np.abs(ref - out).max()),
        rel_l2=float(np.linalg.norm(ref - out) / np.linalg.norm(ref)),
        identical=bool((ref == out).all()),
    )

    frames = model.encode(feats)[0]
    embeddings = prompt_inputs(model, tokenizer, frames)[1]
    greedy_batch(model.llm, [embeddings], [8], [], stop_loops=False)  # warm-up
    runs = []
    for _ in range(3):
        timings: dict = {}
        greedy_batch(model.llm, [embeddings], [args.tokens], [], stop_loops=False, timings=timings)
        runs.append(1e3 * timings["decode"] / timings["decode_steps"])
    report(
        stage="decode batch 1",
        label=args.label,
        ms_per_token=statistics.median(runs),
        runs=[round(r, 3) for r in runs],
        prefill_ms=1e3 * timings["prefill"],
    )
    tokens = {}
    for on in (False, True):
        compiled(on)
        for batch in (8, 32):
            rows = [embeddings] * batch
            greedy_batch(model.llm, rows, [args.tokens // 2] * batch, [], stop_loops=False)  # traces
            timings = {}
            result = greedy_batch(model.llm, rows, [args.tokens // 2] * batch, [], stop_loops=False, timings=timings)
            report(
                stage=f"decode batch {batch}",
                label=args.label,
                compiled=on,
                ms_per_step=1e3 * timings["decode"] / timings["decode_steps"],
            )
        tokens[on] = [r.token_ids for r in result]
    same = sum(a == b for a, b in zip(tokens[False], tokens[True]))
    report(
        stage="batch-32 decode agreement (rows identical, compiled vs not)",
        label=args.label,
        same_rows=same,
        of=len(tokens[False]),
    )


if __name__ == "__main__":
    main()
