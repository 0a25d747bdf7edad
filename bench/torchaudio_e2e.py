"""One-off end-to-end check: timestamps of the official model with the real torchaudio against ours.

Two steps, two environments (torchaudio does not load beside the project's torch 2.13):

    /tmp/ta29/bin/python bench/torchaudio_e2e.py official WORK   # torch 2.9.1, torchaudio 2.9.1, funasr 1.4.16
    .venv/bin/python bench/torchaudio_e2e.py ours WORK            # this package; compares, prints one JSON line

`official` builds the tiny random checkpoint with the CTC head (tests/reference.py, seed 1), writes
espeak-ng clips, and runs the official FunASRNano.inference on each (CTC on: torchaudio loads there),
saving text, ctc_text, timestamps and ctc_timestamps. `ours` converts the same checkpoint, transcribes
the same clips whole (as upstream without a VAD) and compares field by field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLIPS = {
    "en": ("en", "The quick brown fox jumps over the lazy dog while the band plays.", 6),
    "zh": ("cmn", "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天。", 8),
    "long": (
        "en",
        "A long recording is cut into pieces at the pauses between sentences, and each piece "
        "is decoded on its own before the texts are joined.",
        16,
    ),
}


def official(work: Path) -> None:
    from tests.reference import Reference, write_upstream_dir
    from tests.speech import synthesize

    upstream = write_upstream_dir(work / "upstream", "tiny", seed=1, with_ctc=True)
    reference = Reference(upstream)  # torchaudio loads here: the CTC head stays on
    assert reference.model.ctc_decoder is not None
    results = {}
    for name, (voice, text, tokens) in CLIPS.items():
        wav = synthesize(text, work / f"{name}.wav", voice)
        samples = sf.read(str(wav), dtype="float32")[0]
        samples = samples + 1e-4 * np.random.default_rng(0).standard_normal(len(samples)).astype(np.float32)
        sf.write(str(wav), samples, 16000, subtype="FLOAT")
        result = reference.result(samples, max_new_tokens=tokens)
        results[name] = {k: result[k] for k in ("text", "ctc_text", "timestamps", "ctc_timestamps")}
    import torch
    import torchaudio

    (work / "official.json").write_text(
        json.dumps(
            {"torch": torch.__version__, "torchaudio": torchaudio.__version__, "results": results}, ensure_ascii=False
        )
    )


def ours(work: Path) -> None:
    from funasr_nano_mlx import load
    from funasr_nano_mlx.convert import convert
    from funasr_nano_mlx.transcribe import transcribe

    recorded = json.loads((work / "official.json").read_text())
    out = work / "mlx"
    if not out.exists():
        convert(work / "upstream", out, dtype="float32")
    model, tokenizer = load(out)
    summary = {"torch": recorded["torch"], "torchaudio": recorded["torchaudio"]}
    for name, (_, _, tokens) in CLIPS.items():
        ref = recorded["results"][name]
        samples = sf.read(str(work / f"{name}.wav"), dtype="float32")[0]
        segment = transcribe(
            model, tokenizer, samples, max_new_tokens=tokens, segmenter=None, stop_loops=False
        ).segments[0]

        def upstream_keys(stamps):
            return [
                {"token": s["token"], "start_time": s["start"], "end_time": s["end"], "score": s["score"]}
                for s in stamps
            ]

        summary[name] = {
            "text": segment.text == ref["text"],
            "ctc_text": segment.ctc_text == ref["ctc_text"],
            "timestamps": upstream_keys(segment.timestamps) == ref["timestamps"],
            "ctc_timestamps": upstream_keys(segment.ctc_timestamps) == ref["ctc_timestamps"],
            "aligned": [len(ref["timestamps"]), len(ref["ctc_timestamps"])],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["official", "ours"])
    parser.add_argument("work", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (official if args.step == "official" else ours)(args.work)
