"""What a converted Fun-ASR-Nano model directory holds (the layout mlx-audio's loader reads too), and
finding one by local path or hub repo id. No MLX here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import read_json_object
from .hub import CONFIG_FILE, model_dir

MODEL_TYPE = "fun_asr_nano"
TOKENIZER_DIR = "Qwen3-0.6B"
DTYPES = ("bfloat16", "float32")  # of a conversion; float16 is refused: Qwen3 overflows in it
WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
CTC_TOKENIZER_FILE = "multilingual.tiktoken"  # the CTC head's tokenizer, in models with timestamps (upstream's name)
# What loading needs from a published repo: the card, eval.json and benchmark.json are not fetched.
MODEL_FILES = [CONFIG_FILE, *WEIGHT_FILES, f"{TOKENIZER_DIR}/*", CTC_TOKENIZER_FILE]


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
