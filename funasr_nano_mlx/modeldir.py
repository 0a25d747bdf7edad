"""What a converted Fun-ASR-Nano model directory holds (the layout mlx-audio's loader reads too), and
finding one by local path or hub repo id. No MLX here."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

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
# Mappings when present (model.py's ModelArgs.from_dict reads each into a dataclass).
AUDIO_CONFIG_BLOCKS = ("frontend_conf", "audio_encoder_conf", "audio_adaptor_conf", "ctc_decoder_conf")


@dataclass(frozen=True)
class Kind:
    """What a config field must hold: a test of its value, and the words a message uses for it. Types are
    exact: `true` is not a number of layers, and JSON's NaN and Infinity are no finite numbers."""

    expected: str
    test: Callable[[object], bool]

    def problem(self, name: str, value) -> str | None:
        return None if self.test(value) else f"{name}: expected {self.expected}, found {short(value)}"


def _is_int(value) -> bool:
    return type(value) is int


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


POSITIVE_INT = Kind("a positive int", lambda v: _is_int(v) and v > 0)
COUNT = Kind("an int of at least 0", lambda v: _is_int(v) and v >= 0)
INT = Kind("an int", _is_int)
FLAG = Kind("true or false", lambda v: type(v) is bool)
TEXT = Kind("a string", lambda v: type(v) is str)
MAPPING = Kind("a mapping", lambda v: isinstance(v, dict))
NUMBER = Kind("a finite number", _is_number)
POSITIVE_NUMBER = Kind("a positive finite number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE_NUMBER = Kind("a finite number of at least 0", lambda v: _is_number(v) and v >= 0)


def fields_problem(block: dict, kinds: dict[str, Kind], prefix: str) -> str | None:
    """The first field of `block` that is present and not of its kind, as `PREFIXfield: problem` (None: none).
    Absent fields are not checked: the dataclass they are read into has a default for each."""
    for name, kind in kinds.items():
        if name in block and (problem := kind.problem(prefix + name, block[name])):
            return problem
    return None


# The audio blocks' arguments: what model.py builds the frontend's checks, the encoder and the adaptor from.
def dataclass_from_dict(cls, params: dict, aliases: dict[str, str] | None = None):
    """Lenient dataclass construction: upstream spellings via `aliases`, unknown keys ignored."""
    params = dict(params)
    for upstream, ours in (aliases or {}).items():
        if upstream in params:
            params.setdefault(ours, params.pop(upstream))
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in known})


@dataclass(unsafe_hash=True)  # hashable: with the input width, the key of the layers' compiled function
class EncoderArgs:
    """`audio_encoder_conf` of config.yaml (SenseVoiceEncoderSmall)."""

    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50  # encoders0 (1 layer) + encoders (num_blocks - 1 layers)
    tp_blocks: int = 20
    kernel_size: int = 11
    sanm_shift: int = 0

    @classmethod
    def from_dict(cls, params: dict) -> "EncoderArgs":
        return dataclass_from_dict(cls, params, {"sanm_shfit": "sanm_shift"})  # upstream typo


@dataclass
class AdaptorArgs:
    """`audio_adaptor_conf` of config.yaml (llm_asr Transformer adaptor)."""

    downsample_rate: int = 1
    use_low_frame_rate: bool = False  # upstream's default; the released config sets it to true
    ffn_dim: int = 2048  # width of linear1/linear2; the blocks' FFN is llm_dim // 4 whatever this says
    llm_dim: int = 1024
    encoder_dim: int = 512
    n_layer: int = 2
    attention_heads: int = 8

    @classmethod
    def from_dict(cls, params: dict) -> "AdaptorArgs":
        return dataclass_from_dict(cls, params)


def memory_left_pad(kernel_size: int, sanm_shift: int) -> int:
    """The frames of zeros SAN-M's memory block pads before the first: half the kernel's reach, plus the shift
    where it is positive ([F] models/sense_voice/model.py:140-143); the rest of kernel_size - 1 go after the last."""
    return (kernel_size - 1) // 2 + max(sanm_shift, 0)


@dataclass
class FrontendArgs:
    """`frontend_conf` of config.yaml; the values the frontend in audio.py implements."""

    fs: int = 16000
    window: str = "hamming"
    n_mels: int = 80
    frame_length: int = 25
    frame_shift: int = 10
    lfr_m: int = 7
    lfr_n: int = 6
    cmvn_file: str | None = None

    @classmethod
    def from_dict(cls, params: dict) -> "FrontendArgs":
        return dataclass_from_dict(cls, params)


# The kind each field of the audio blocks must hold. A wrong kind fails deep in MLX (a ZeroDivisionError in
# nn.Conv1d for kernel_size 0), and heads that do not divide the width fail only at the first audio; an absent
# field takes its dataclass default.
ENCODER_KINDS = {  # EncoderArgs' (SenseVoiceEncoderSmall, [F] models/sense_voice/model.py:496-516)
    "output_size": POSITIVE_INT,
    "attention_heads": POSITIVE_INT,
    "linear_units": POSITIVE_INT,
    "num_blocks": POSITIVE_INT,  # encoders0 and num_blocks - 1 layers more
    "tp_blocks": COUNT,  # 0 is upstream's default
    "kernel_size": POSITIVE_INT,
    "sanm_shift": INT,  # a shift < 0 is none
    "sanm_shfit": INT,  # upstream's spelling, read too
}
ADAPTOR_KINDS = {  # AdaptorArgs', also the CTC decoder's ([F] models/llm_asr/adaptor.py:127-171)
    "downsample_rate": POSITIVE_INT,
    "use_low_frame_rate": FLAG,
    "ffn_dim": POSITIVE_INT,
    "llm_dim": POSITIVE_INT,
    "encoder_dim": POSITIVE_INT,
    "n_layer": COUNT,  # upstream builds no blocks for 0 (adaptor.py:150)
    "attention_heads": POSITIVE_INT,
}
# The features' width: 80 mel bands, 7 frames stacked (audio.py); encoders0 is built for input_size.
INPUT_SIZE = FrontendArgs.n_mels * FrontendArgs.lfr_m
LLM_DTYPES = ("bf16", "fp16", "fp32")  # upstream's dtype_map ([F] models/fun_asr_nano/model.py:29)
CTC_FIELDS = {"ctc_vocab_size": POSITIVE_INT, "ctc_num_languages": POSITIVE_INT}
# What mlx-lm's load_model reads of `quantization` (mlx_lm/utils.py:496-519): the default group size and bits
# (both indexed: a KeyError if absent) and mode, and by module path a layer's own setting, or false for a
# layer kept as it is. A group size of 0 kills the process (SIGFPE in MLX's quantize), not an exception.
QUANTIZATION_FIELDS = {"group_size": POSITIVE_INT, "bits": POSITIVE_INT, "mode": TEXT}
QUANTIZATION_REQUIRED = ("group_size", "bits")


def config_problem(config: dict) -> str | None:
    """What is wrong with a model config.json whose model_type is ours (None: nothing), as `field: problem`.
    `convert` checks the config.json it builds with it too, before any weight is read."""
    return (
        _text_config_problem(config["text_config"])
        or _audio_problem(config)
        or _top_level_problem(config)
        or _quantization_problem(config)
    )


def _text_config_problem(text_config: dict) -> str | None:
    for name, kinds in TEXT_CONFIG_FIELDS.items():
        value = text_config.get(name)
        if name not in text_config:
            return f"text_config.{name}: is missing"
        if type(value) not in kinds:  # exact types: `true` is not a number of layers
            wanted = " or ".join(k.__name__ for k in kinds)
            return f"text_config.{name}: expected {wanted}, found {short(value)}"
    positive = dict.fromkeys(POSITIVE_TEXT_CONFIG, POSITIVE_NUMBER)
    return fields_problem(text_config, positive, "text_config.") or _eos_problem(text_config)


def _eos_problem(text_config: dict) -> str | None:
    """eos_token_id, the stop set (transcribe.stop_token_ids): one id, as Qwen3's config.json has it, or a
    list of them, as its generation_config.json. An id outside the vocabulary is never generated, so
    decoding would run to its token budget every time."""
    if "eos_token_id" not in text_config:
        return None
    value, vocab = text_config["eos_token_id"], text_config["vocab_size"]
    ids = value if type(value) is list else [value]
    if ids and all(_is_int(i) and 0 <= i < vocab for i in ids):
        return None
    wanted = f"a token id (an int in 0..{vocab - 1}) or a list of them"
    return f"text_config.eos_token_id: expected {wanted}, found {short(value)}"


def _audio_problem(config: dict) -> str | None:
    encoder = config.get("audio_encoder_conf", {})
    problem = fields_problem(config, dict.fromkeys(AUDIO_CONFIG_BLOCKS, MAPPING), "") or _encoder_problem(encoder)
    if problem:
        return problem
    width = EncoderArgs.from_dict(encoder).output_size
    adaptor = config.get("audio_adaptor_conf", {})
    problem = _adaptor_problem(adaptor, "audio_adaptor_conf", width)
    if problem:
        return problem
    llm_dim, hidden = AdaptorArgs.from_dict(adaptor).llm_dim, config["text_config"]["hidden_size"]
    if llm_dim != hidden:  # the audio frames go into the LLM's embeddings
        return f"audio_adaptor_conf.llm_dim: expected {hidden} (text_config.hidden_size), found {llm_dim}"
    if config.get("ctc_decoder_conf"):  # a CTC head is built only from a non-empty one (ModelArgs.from_dict)
        return _adaptor_problem(config["ctc_decoder_conf"], "ctc_decoder_conf", width)
    return None


def _encoder_problem(encoder: dict) -> str | None:
    problem = fields_problem(encoder, ENCODER_KINDS, "audio_encoder_conf.")
    if problem:
        return problem
    args = EncoderArgs.from_dict(encoder)
    if args.output_size % args.attention_heads:  # heads split the width ([F] models/sense_voice/model.py:124)
        return (
            f"audio_encoder_conf.attention_heads: expected a divisor of output_size {args.output_size}, "
            f"found {args.attention_heads}"
        )
    if memory_left_pad(args.kernel_size, args.sanm_shift) > args.kernel_size - 1:  # no frames left for the end
        name = "sanm_shift" if "sanm_shift" in encoder else "sanm_shfit"  # the one from_dict took
        most = args.kernel_size - 1 - memory_left_pad(args.kernel_size, 0)
        return (
            f"audio_encoder_conf.{name}: expected at most {most} with kernel_size {args.kernel_size}, "
            f"found {args.sanm_shift}"
        )
    return None


def _adaptor_problem(adaptor: dict, block: str, encoder_width: int) -> str | None:
    problem = fields_problem(adaptor, ADAPTOR_KINDS, f"{block}.")
    if problem:
        return problem
    args = AdaptorArgs.from_dict(adaptor)
    if args.n_layer and args.llm_dim % args.attention_heads:  # heads split the width ([F] transformer/attention.py:34)
        return f"{block}.attention_heads: expected a divisor of llm_dim {args.llm_dim}, found {args.attention_heads}"
    if args.encoder_dim != encoder_width:  # it reads the encoder's output ([F] fun_asr_nano/model.py:138-142)
        found = args.encoder_dim
        return f"{block}.encoder_dim: expected {encoder_width} (audio_encoder_conf.output_size), found {found}"
    return None


def _top_level_problem(config: dict) -> str | None:
    input_size = config.get("input_size", INPUT_SIZE)
    if not (_is_int(input_size) and input_size == INPUT_SIZE):
        bands, frames = FrontendArgs.n_mels, FrontendArgs.lfr_m
        return (
            f"input_size: expected {INPUT_SIZE} ({bands} mel bands x {frames} frames, the features' width), "
            f"found {short(input_size)}"
        )
    llm_dtype = config.get("llm_dtype", LLM_DTYPES[0])
    if type(llm_dtype) is not str or llm_dtype not in LLM_DTYPES:  # the RoPE frequencies are rounded to it
        return f"llm_dtype: expected one of {', '.join(LLM_DTYPES)}, found {short(llm_dtype)}"
    problem = fields_problem(config, CTC_FIELDS, "")
    if problem:
        return problem
    blank, vocab = config.get("ctc_blank_id"), config.get("ctc_vocab_size")
    if blank is not None and not (_is_int(blank) and 0 <= blank and (vocab is None or blank < vocab)):
        return f"ctc_blank_id: expected a CTC token id (an int in 0..ctc_vocab_size - 1), found {short(blank)}"
    return None


def _quantization_problem(config: dict) -> str | None:
    if "quantization" not in config:
        # Without `quantization`, mlx-lm's load_model takes a legacy quantization_config, at the top or in
        # text_config (mlx_lm/utils.py:476-479, 521-575): AWQ, GPTQ or bitnet weights no layer of ours reads.
        for at, part in (("", config), ("text_config.", config["text_config"])):
            if part.get("quantization_config"):  # as mlx-lm reads it: an empty or null one is none
                mine = "a quantized model of ours names its layers under quantization"
                return f"{at}quantization_config: expected none ({mine}), found one"
        return None
    quantization = config["quantization"]
    if problem := MAPPING.problem("quantization", quantization):
        return problem
    missing = [name for name in QUANTIZATION_REQUIRED if name not in quantization]
    if missing:
        return f"quantization.{missing[0]}: is missing"
    if problem := fields_problem(quantization, QUANTIZATION_FIELDS, "quantization."):
        return problem
    layers = {key: value for key, value in quantization.items() if key not in QUANTIZATION_FIELDS}
    for path, setting in layers.items():  # a layer's own setting, by its module path
        if isinstance(setting, dict):
            if problem := fields_problem(setting, QUANTIZATION_FIELDS, f"quantization.{path}."):
                return problem
        elif type(setting) is not bool:
            return f"quantization.{path}: expected a layer's setting (a mapping, or false), found {short(setting)}"
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
