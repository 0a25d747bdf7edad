"""One-off check of our forced alignment against the real torchaudio.functional.forced_align.

torchaudio does not load beside the project's torch 2.13, so this runs in a separate environment:

    python -m venv /tmp/ta29 && /tmp/ta29/bin/pip install 'torch==2.9.1' 'torchaudio==2.9.*' numpy
    /tmp/ta29/bin/python bench/torchaudio_check.py [--cases 3000]

(about 7 GB on x86_64: too heavy for CI, where tests/test_ctc.py checks against an independent Viterbi
with torchaudio's tie-breaking instead). Random CTC log-probabilities, short and long, with many repeated
targets and, for half the cases, small-integer log-probabilities so that paths tie: the label per frame
of funasr_nano_mlx.ctc.viterbi_path must equal torchaudio's path, and ours must refuse exactly where
torchaudio raises. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from funasr_nano_mlx import ctc  # noqa: E402  (pure numpy: no MLX needed here)


def case(rng: np.random.Generator, tied: bool, long: bool):
    frames = int(rng.integers(100, 600)) if long else int(rng.integers(1, 40))
    length = int(rng.integers(1, frames // 2 + 2)) if long else int(rng.integers(1, 14))
    vocab, blank = 8, 7
    targets = [int(t) for t in rng.integers(0, 3 if tied else vocab - 1, length)]
    lp = (
        rng.integers(-3, 1, (frames, vocab)).astype(np.float32)
        if tied
        else np.log(rng.dirichlet(np.ones(vocab) * 0.3, frames)).astype(np.float32)
    )
    return lp, targets, blank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    args = parser.parse_args()
    rng = np.random.default_rng(12)
    counts = {"aligned_equal": 0, "refused_both": 0, "differ": 0}
    for i in range(args.cases):
        lp, targets, blank = case(rng, tied=i % 2 == 1, long=i % 5 == 0)
        ours = ctc.viterbi_path(lp[:, blank], lp[:, targets], targets)
        try:
            paths, _ = torchaudio.functional.forced_align(
                torch.from_numpy(lp)[None], torch.tensor([targets]), blank=blank
            )
            theirs = paths[0].tolist()
        except (RuntimeError, ValueError):
            theirs = None
        if ours is None or theirs is None:
            counts["refused_both" if ours is None and theirs is None else "differ"] += 1
            continue
        labels = [blank if s % 2 == 0 else targets[s // 2] for s in ours.tolist()]
        counts["aligned_equal" if labels == theirs else "differ"] += 1
    print(json.dumps({"torch": torch.__version__, "torchaudio": torchaudio.__version__, "cases": args.cases, **counts}))


if __name__ == "__main__":
    main()
