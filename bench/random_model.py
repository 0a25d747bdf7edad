"""Write a full-size random-weight converted model (and a 4-bit copy) without the official package.

    python bench/random_model.py SKELETON DST [--bits 4]

SKELETON holds config.json and Qwen3-0.6B/ as `convert` writes them (bench/speed.py builds its model
with funasr and the official code; where funasr cannot be installed, e.g. on the lent GPU machine, this
draws the same shapes with MLX, with the init of tests/reference.py). Speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path
from mlx_lm.utils import save_config, save_model

from funasr_nano_mlx.model import FunASRNano, ModelArgs

AUDIO_STD, LLM_STD, NORM_STD, BIAS_STD = 0.15, 0.35, 0.1, 0.05  # tests/reference.py FULL["init"]


def draw(path: str, p: mx.array) -> mx.array:
    noise = mx.random.normal(p.shape)
    if p.ndim >= 2:
        return noise * (LLM_STD if path.startswith("llm.") else AUDIO_STD)
    return 1.0 + NORM_STD * noise if "norm" in path and path.endswith("weight") else BIAS_STD * noise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("skeleton", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--bits", type=int, default=None)
    args = parser.parse_args()
    mx.random.seed(0)
    config = json.loads((args.skeleton / "config.json").read_text())
    model = FunASRNano(ModelArgs.from_dict(config))
    model.update(tree_map_with_path(draw, model.parameters()))
    model.set_dtype(mx.bfloat16)
    if args.bits:

        def quantizable(path, module):
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % 64 == 0

        nn.quantize(model.llm, group_size=64, bits=args.bits, class_predicate=quantizable)
        config["quantization"] = config["quantization_config"] = {"group_size": 64, "bits": args.bits}
    mx.eval(model.parameters())
    args.dst.mkdir(parents=True)
    save_model(args.dst, model, donate_model=True)
    save_config(config, args.dst / "config.json")
    shutil.copytree(args.skeleton / "Qwen3-0.6B", args.dst / "Qwen3-0.6B")


if __name__ == "__main__":
    main()
