"""What a converted Fun-ASR-Nano model directory holds (the layout mlx-audio's loader reads too), and
finding one by local path or hub repo id. No MLX here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import read_json_object
from .hub import CONFIG_FILE, model_dir
from .strict_yaml import short

MODEL_TYPE = "fun_asr_nano"
TOKENIZER_DIR = "Qwen3-0.6B"
DTYPES = ("bfloat16", "float32")  # of a conversion; float16 is refused: Qwen3 overflows in it
WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
CTC_TOKENIZER_FILE = "multilingual.tiktoken"  # the CTC head's tokenizer, in models with timestamps (upstream's name)
# What loading needs from a published repo: the card, eval.json and benchmark.json are not fetched.
MODEL_FILES = [CONFIG_FILE, *WEIGHT_FILES, f"{TOKENIZER_DIR}/*", CTC_TOKENIZER_FILE]


# What the LLM is built from: the fields of mlx-lm's qwen3.ModelArgs that have no default
# (mlx-lm, mlx_lm/models/qwen3.py:16-27), with their types; a missing one would be a TypeError deep in loading.
TEXT_CONFIG_FIELDS = {
    "model_type": (str,),
    "hidden_size": (int,),
    "num_hidden_layers": (int,),
    "intermediate_size": (int,),
    "num_attention_heads": (int,),
    "rms_norm_eps": (float, int),
    "vocab_size": (int,),
    "num_key_value_heads": (int,),
    "max_position_embeddings": (int,),
    "head_dim": (int,),
    "tie_word_embeddings": (bool,),
}
# Numbers the LLM divides by or raises to a power (RMSNorm's epsilon, RoPE's base; rope_theta may be absent,
# mlx-lm then takes its default): JSON admits NaN and Infinity, and with them a model loads and decodes noise.
POSITIVE_TEXT_CONFIG = ("rms_norm_eps", "rope_theta")
AUDIO_CONFIG_BLOCKS = ("frontend_conf", "audio_encoder_conf", "audio_adaptor_conf")  # mappings when present


def config_problem(config: dict) -> str | None:
    """What is wrong with a model config.json whose model_type is ours (None: nothing), as `field: problem`."""
    text_config = config["text_config"]
    for name, kinds in TEXT_CONFIG_FIELDS.items():
        value = text_config.get(name)
        if name not in text_config:
            return f"text_config.{name}: is missing"
        if type(value) not in kinds:  # exact types: `true` is not a number of layers
            wanted = " or ".join(k.__name__ for k in kinds)
            return f"text_config.{name}: expected {wanted}, found {short(value)}"
    for name in POSITIVE_TEXT_CONFIG:
        value = text_config.get(name, 1.0)
        if type(value) not in (float, int) or not (math.isfinite(value) and value > 0):
            return f"text_config.{name}: expected a positive finite number, found {short(value)}"
    for name in AUDIO_CONFIG_BLOCKS:
        if not isinstance(config.get(name, {}), dict):
            return f"{name}: expected a mapping, found {short(config[name])}"
    return None


def is_model_config(config: dict) -> bool:
    return config.get("model_type") == MODEL_TYPE and isinstance(config.get("text_config"), dict)


def read_config(path: Path) -> dict:
    """config.json of a converted model directory; a clear error for anything else."""
    config = read_json_object(path / CONFIG_FILE)
    if not is_model_config(config) or not (path / TOKENIZER_DIR).is_dir():
        raise UserError(
            f"{path} is not a converted Fun-ASR-Nano model (expected {CONFIG_FILE} with model_type "
            f"{MODEL_TYPE!r} and a {TOKENIZER_DIR}/ tokenizer folder); create one with `funasr-nano-mlx convert`"
        )
    problem = config_problem(config)
    if problem:
        raise UserError(f"{path / CONFIG_FILE}: {problem}")
    return config


def find_model(name: str | Path, revision: str | None = None) -> Path:
    """A converted model directory: a local path, or a hub repo id (at `revision`, default main)
    downloaded into the Hugging Face cache with only the files a model needs."""
    return model_dir(name, revision, MODEL_FILES, is_model_config, "a converted Fun-ASR-Nano model")


def weights_size(folder: Path) -> int:
    """Bytes of the weight files in `folder`."""
    return sum(f.stat().st_size for f in folder.glob(WEIGHT_FILES[0]))


@dataclass(frozen=True)
class ModelDir:
    """A converted model directory, its config.json read once (the card and publish pass it along)."""

    path: Path
    config: dict

    @classmethod
    def read(cls, path: str | Path) -> ModelDir:
        return cls(Path(path), read_config(Path(path)))

    @classmethod
    def of(cls, model: str | Path | ModelDir) -> ModelDir:
        return model if isinstance(model, ModelDir) else cls.read(model)

    @property
    def conversion(self) -> dict:
        return self.config.get("conversion", {})

    @property
    def quantization_summary(self) -> dict | None:
        return self.config.get("quantization_summary")

    @property
    def recipe(self) -> dict | None:
        """The provenance block of the recipe that built it (None for a plain conversion)."""
        return self.config.get("recipe")

    @property
    def weights_size(self) -> int:
        return weights_size(self.path)
