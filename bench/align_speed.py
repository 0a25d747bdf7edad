"""Cost of CTC timestamps per second of audio: the CTC head over the encoder output and the alignment.

    python bench/align_speed.py [--size tiny full] [--seconds 5 30] [--tokens-per-second 5] [--repeats 3]

What timestamps add to a transcription, measured on the same stages `transcribe` runs (align.py):
`head_ms` is the CTC decoder (5 Transformer blocks) plus the 60515-wide output layer's normalizer and
argmax per frame (align.emissions); `align_ms` is the forced alignment of the LLM text and of ctc_text
(align.segment_timestamps: the logits of the aligned tokens, the Viterbi, grouping, token texts).
Random float32 weights at the model's real shapes (only the CTC head is built: the encoder output it
reads is a random (T, 512) array at the 60 ms frame rate), a random target text of
--tokens-per-second CTC tokens per second (Mandarin speech runs at about 4-5 characters a second).
Prints one JSON line per (size, seconds) with the medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from funasr_nano_mlx import align, ctc  # noqa: E402
from funasr_nano_mlx.model import CTC, AdaptorArgs, AudioAdaptor, ModelArgs  # noqa: E402

SIZES = {"tiny": dict(dims=64, vocab=256 + 1679), "full": dict(dims=512, vocab=60515)}
FRAMES_PER_SECOND = 1000 / (ctc.LFR_STRIDE * ctc.FRAME_SHIFT_MS)


class Head:
    """Just what align.py reads of a FunASRNano: args, ctc_hidden, ctc."""

    def __init__(self, dims: int, vocab: int):
        conf = AdaptorArgs(downsample_rate=1, ffn_dim=2048, llm_dim=dims, encoder_dim=dims, n_layer=5)
        self.args = ModelArgs(ctc_decoder_conf=conf, ctc_vocab_size=vocab)
        self.ctc_decoder, self.ctc = AudioAdaptor(conf), CTC(dims, vocab)
        mx.eval(self.ctc_decoder.parameters(), self.ctc.parameters())

    def ctc_hidden(self, encoded, lengths=None):
        return self.ctc_decoder(encoded, lengths)


def synthetic_tokenizer(vocab: int) -> ctc.CTCTokenizer:
    """The tests' stand-in multilingual.tiktoken: single bytes, then two-byte strings."""
    n_ranks = vocab - len(ctc.special_tokens())
    ranks = {bytes([r]) if r < 256 else bytes(divmod(r - 256, 256)): r for r in range(n_ranks)}
    return ctc.CTCTokenizer(ranks)


def run(size: str, seconds: float, tokens_per_second: float, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    head = Head(**SIZES[size])
    tokenizer = synthetic_tokenizer(SIZES[size]["vocab"])
    frames = int(seconds * FRAMES_PER_SECOND)
    encoded = mx.array(rng.standard_normal((1, frames, SIZES[size]["dims"])).astype(np.float32))
    n_tokens = int(seconds * tokens_per_second)
    # Letters: one token each in the tiny vocabulary, about two per token in the full stand-in's pairs.
    letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz"), n_tokens * (2 if size == "full" else 1))
    text = "".join(letters)
    head_ms, align_ms, aligned = [], [], 0
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        em = align.emissions(head, encoded, [frames])[0]
        middle = time.perf_counter()
        result = align.segment_timestamps(head, tokenizer, em, text, 0.0)
        end = time.perf_counter()
        head_ms.append(1000 * (middle - start))
        align_ms.append(1000 * (end - middle))
        aligned = len(result["timestamps"])
    head_ms, align_ms = statistics.median(head_ms[1:]), statistics.median(align_ms[1:])
    return {
        "size": size,
        "audio_s": seconds,
        "frames": frames,
        "text_tokens": len(tokenizer.encode(text)),
        "aligned_tokens": aligned,
        "head_ms": round(head_ms, 2),
        "align_ms": round(align_ms, 2),
        "ms_per_audio_s": round((head_ms + align_ms) / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", choices=sorted(SIZES), default=["tiny", "full"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[5.0, 30.0])
    parser.add_argument("--tokens-per-second", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for size in args.size:
        for seconds in args.seconds:
            print(json.dumps(run(size, seconds, args.tokens_per_second, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
