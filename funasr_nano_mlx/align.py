"""Timestamps for decoded segments: the CTC head over the encoder output, then forced alignment.

Runs what `ctc.py` defines on the MLX model, as upstream's inference_llm does for one utterance
([F] models/fun_asr_nano/model.py:965-985,1057-1071), for every row of a padded batch (upstream falls
back to one at a time; the CTC decoder masks padding as the adaptor does, so rows equal B = 1).
Only what the alignment needs leaves the device: per frame the log normalizer and the argmax, and
later the logits of the blank and of the aligned tokens, not the 60515-wide log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from . import ctc
from .model import FunASRNano


@dataclass
class Emissions:
    """One segment's CTC output: the decoder's hidden frames, each frame's log-softmax normalizer,
    and the greedy CTC tokens."""

    hidden: mx.array  # (T, dims)
    log_norm: mx.array  # (T,)
    greedy: list[int]


def emissions(model: FunASRNano, encoded: mx.array, lengths: list[int]) -> list[Emissions]:
    """The CTC head over a batch of encoder outputs (B, T, D) whose rows are valid up to `lengths`."""
    batch_lengths = None if len(lengths) == 1 else mx.array(lengths)
    hidden = model.ctc_hidden(encoded, batch_lengths)
    out = []
    for row, length in enumerate(lengths):  # one row at a time: (T, 60515) logits, not (B, T, 60515)
        frames = hidden[row, :length]
        logits = model.ctc.ctc_lo(frames).astype(mx.float32)
        log_norm, best = mx.logsumexp(logits, axis=-1), mx.argmax(logits, axis=-1)
        mx.eval(frames, log_norm, best)
        out.append(Emissions(frames, log_norm, ctc.greedy_ids(best.tolist(), model.args.blank_id)))
    return out


def log_probs(model: FunASRNano, em: Emissions, ids: list[int]) -> np.ndarray:
    """CTC log-probabilities of the vocabulary entries `ids` at every frame, (T, len(ids)) float32."""
    return np.array(model.ctc.columns(em.hidden, ids) - em.log_norm[:, None])


def align_text(model: FunASRNano, tokenizer: ctc.CTCTokenizer, em: Emissions, text: str, offset: float) -> list[dict]:
    """`text` re-tokenized with the CTC tokenizer and aligned to the segment's frames; times in seconds
    from the recording's start (`offset` is the segment's start)."""
    targets = tokenizer.encode(text)
    if not targets:
        return []  # upstream: torchaudio refuses an empty target, forced_align returns []
    lp = log_probs(model, em, [model.args.blank_id, *targets])
    return ctc.timestamps(tokenizer, ctc.align(lp[:, 0], lp[:, 1:], targets), offset)


def segment_timestamps(model: FunASRNano, tokenizer: ctc.CTCTokenizer, em: Emissions, text: str, offset: float) -> dict:
    """Upstream's three CTC results for one segment: `ctc_text`, and the alignments of the LLM's text
    (`timestamps`) and of `ctc_text` (`ctc_timestamps`) ([F] model.py:1057-1071)."""
    greedy_text = ctc.ctc_text(tokenizer, em.greedy)
    return {
        "ctc_text": greedy_text,
        "timestamps": align_text(model, tokenizer, em, text, offset),
        "ctc_timestamps": align_text(model, tokenizer, em, greedy_text, offset),
    }
