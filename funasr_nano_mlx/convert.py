"""Upstream PyTorch checkpoint (model.pt + config.yaml + Qwen3-0.6B/) -> MLX model directory.

torch is needed only here, to read model.pt; it is imported lazily so inference never needs it.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np
import yaml
from mlx.utils import tree_flatten
from mlx_lm.utils import save_config, save_model
from tqdm import tqdm

from .errors import UserError
from .files import check_destination, package_version, require_utf8_path, sha256, staged_output, stamp
from .hub import download, is_repo_id
from .model import (
    CTC,
    CTC_PREFIXES,
    CTC_VOCAB_SIZE,
    EMBEDDINGS,
    LM_HEAD,
    AdaptorArgs,
    AudioAdaptor,
    FunASRNano,
    ModelArgs,
)
from .modeldir import CTC_TOKENIZER_FILE as CTC_TOKENIZER
from .modeldir import (
    DTYPES,
    INPUT_SIZE,
    MAPPING,
    MODEL_TYPE,
    TOKENIZER_DIR,
    FrontendArgs,
    config_problem,
    fields_problem,
)
from .vad import CMVN_KEY, VAD_SECTIONS, FsmnArgs, FsmnVad, unsupported_settings, vad_config_problem
from .vad import MODEL_TYPE as VAD_MODEL_TYPE
from .vad import WEIGHTS as VAD_WEIGHTS

CHECKPOINT = "model.pt"
UPSTREAM_FILES = [CHECKPOINT, "config.yaml", "configuration.json", f"{TOKENIZER_DIR}/*", CTC_TOKENIZER]
CHECKPOINT_WRAPPERS = ("state_dict", "model_state_dict", "model")  # unwrapped in this order, as upstream
MLX_DTYPES = {name: getattr(mx, name) for name in DTYPES}
MAX_KEYS_IN_MESSAGE = 8


def resolve_source(
    src: str | Path,
    patterns: list[str] = UPSTREAM_FILES,
    revision: str | None = None,
) -> tuple[Path, str]:
    """A local upstream directory, or a hub repo id fetched into the HF cache (at `revision`, a commit
    for reproducible builds; default the main branch); and its provenance label."""
    if is_repo_id(src):
        snapshot = download(str(src), revision=revision, patterns=patterns)
        commit = snapshot.name  # the cache names a snapshot folder by its commit
        if revision != commit:  # a branch or tag: say what it meant today, and how to get it again
            print(
                f"note: {src} {revision or 'main'} resolved to commit {commit}; pass --revision {commit} "
                "to convert exactly this again",
                file=sys.stderr,
                flush=True,
            )
        return snapshot, f"{src}@{commit}"
    if Path(src).exists():
        return Path(src), str(src)
    raise UserError(f"source not found: {src} (a local upstream directory or a hub repo id ORG/NAME)")


def read_upstream_config(src: Path) -> dict:
    """Build our config.json from config.yaml (encoder, adaptor, frontend) and Qwen3-0.6B/config.json."""
    for name in ("config.yaml", f"{TOKENIZER_DIR}/config.json", CHECKPOINT):
        if not (src / name).is_file():
            raise UserError(f"{src} is not an upstream Fun-ASR-Nano directory: {name} is missing")
    try:
        upstream = yaml.safe_load((src / "config.yaml").read_text())
        text_config = json.loads((src / TOKENIZER_DIR / "config.json").read_text())
    except (yaml.YAMLError, ValueError) as err:
        raise UserError(f"cannot parse the configuration in {src}: {err}") from None
    if not isinstance(upstream, dict) or upstream.get("model") != "FunASRNano":
        raise UserError(f"{src}/config.yaml does not describe a FunASRNano model")
    upstream = sections_as_mappings(src, upstream, UPSTREAM_SECTIONS)
    check_supported(src, upstream)
    try:
        adaptor = dict(upstream.get("audio_adaptor_conf", {}))
        # As the reference does at build time ([F] fun_asr_nano/model.py:138-142): widths come from the
        # encoder output and the LLM embeddings, not from the adaptor's own config entries.
        adaptor["encoder_dim"] = upstream["audio_encoder_conf"]["output_size"]
        adaptor["llm_dim"] = text_config["hidden_size"]
        adaptor.setdefault("use_low_frame_rate", AdaptorArgs.use_low_frame_rate)  # written out: it decides the prompt
    except (KeyError, TypeError) as err:
        raise UserError(f"{src}: incomplete configuration, {err} is missing") from None
    config = {
        "model_type": MODEL_TYPE,
        "input_size": INPUT_SIZE,
        "frontend_conf": upstream.get("frontend_conf", {}),
        "audio_encoder_conf": upstream["audio_encoder_conf"],
        "audio_adaptor_conf": {k: adaptor[k] for k in vars(AdaptorArgs()) if k in adaptor},
        "text_config": text_config,
        "llm_dtype": upstream.get("llm_conf", {}).get("llm_dtype", "fp32"),
        "qwen_tokenizer_path": TOKENIZER_DIR,
        **ctc_config(upstream),
    }
    refuse_config_problem(src, config)
    return config


# Fields of our config.json read from elsewhere in config.yaml (ctc_config), as a message names them there.
UPSTREAM_NAMES = {
    "llm_dtype": "llm_conf.llm_dtype",
    "ctc_blank_id": "ctc_conf.blank_id",
    "ctc_num_languages": "dataset_conf.ctc_tokenizer_conf.num_languages",
}


def refuse_config_problem(src: Path, config: dict) -> None:
    """Refuse, before the checkpoint is read, a config.json that loading would refuse (modeldir.config_problem),
    naming the upstream file and field the value came from."""
    problem = config_problem(config)
    if problem is None:
        return
    field, _, what = problem.partition(": ")
    if field.startswith("text_config."):
        raise UserError(f"{src / TOKENIZER_DIR / 'config.json'}: {field.removeprefix('text_config.')}: {what}")
    raise UserError(f"{src / 'config.yaml'}: {UPSTREAM_NAMES.get(field, field)}: {what}")


def ctc_config(upstream: dict) -> dict:
    """The CTC head's settings as the reference builds it ([F] fun_asr_nano/model.py:152-199): the
    ctc_decoder_conf (encoder_dim from the encoder), the vocabulary size, the blank and the CTC
    tokenizer's language count; {} when config.yaml names no CTC decoder."""
    if upstream.get("ctc_decoder") != "Transformer":
        return {}
    try:
        decoder = dict(upstream.get("ctc_decoder_conf", {}))
        decoder["encoder_dim"] = upstream["audio_encoder_conf"]["output_size"]
        vocab = int(upstream.get("ctc_vocab_size", CTC_VOCAB_SIZE))
        tokenizer_conf = upstream.get("dataset_conf", {}).get("ctc_tokenizer_conf") or {}
        languages = int(tokenizer_conf.get("num_languages", 8749))
        blank = int(upstream.get("ctc_conf", {}).get("blank_id", vocab - 1))
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # e.g. a tokenizer conf that is no mapping
        raise UserError(f"incomplete CTC configuration in config.yaml: {err}") from None
    return {
        "ctc_decoder_conf": {k: decoder[k] for k in vars(AdaptorArgs()) if k in decoder},
        "ctc_vocab_size": vocab,
        "ctc_blank_id": blank,
        "ctc_num_languages": languages,
    }


def _ctc_state(src: Path, config: dict, state: dict) -> tuple[bool, str | None]:
    """Whether to keep the CTC head, and a note when one is left out. Kept only when config.yaml
    configures it, every one of its tensors is in model.pt and multilingual.tiktoken is present: upstream
    turns timestamps off for an incomplete head ([F] fun_asr_nano/checkpoint_utils.py:22-47)."""
    present = {key.removeprefix("module.") for key in state if key.removeprefix("module.").startswith(CTC_PREFIXES)}
    if "ctc_decoder_conf" not in config:
        return False, "CTC timestamp head left out: config.yaml configures none" if present else None
    decoder_args = AdaptorArgs.from_dict(config["ctc_decoder_conf"])
    head = {"ctc_decoder": AudioAdaptor(decoder_args), "ctc": CTC(decoder_args.llm_dim, config["ctc_vocab_size"])}
    expected = {f"{name}.{key}" for name, module in head.items() for key, _ in tree_flatten(module.parameters())}
    missing = sorted(expected - present)
    if missing:
        return False, (
            f"CTC timestamp head left out: model.pt lacks {len(missing)} of its {len(expected)} "
            f"tensors ({_listing(missing)}); no timestamps"
        )
    if not (src / CTC_TOKENIZER).is_file():
        return False, f"CTC timestamp head left out: {CTC_TOKENIZER} is missing; no timestamps"
    return True, None


# The sections of config.yaml read here: anything but a mapping was an AttributeError or a ValueError deep in
# reading them.
UPSTREAM_SECTIONS = (
    "frontend_conf",
    "audio_encoder_conf",
    "audio_adaptor_conf",
    "llm_conf",
    "dataset_conf",
    "ctc_decoder_conf",
    "ctc_conf",
)


def sections_as_mappings(src: Path, upstream: dict, sections: tuple[str, ...]) -> dict:
    """config.yaml with its `sections` checked: each a mapping, an empty one (`ctc_conf:`, YAML's null) as {}."""
    upstream = {k: {} if v is None and k in sections else v for k, v in upstream.items()}
    if problem := fields_problem(upstream, dict.fromkeys(sections, MAPPING), ""):
        raise UserError(f"{src}/config.yaml: {problem}")
    return upstream


def check_supported(src: Path, upstream: dict) -> None:
    """Refuse settings the upstream code would honour but this port does not implement."""
    frontend = upstream.get("frontend_conf", {})
    if FrontendArgs.from_dict(frontend) != FrontendArgs():
        raise UserError(
            f"{src}/config.yaml: unsupported frontend_conf {frontend}; this port implements "
            f"the released one: {vars(FrontendArgs())}"
        )
    dataset = upstream.get("dataset_conf", {})
    # do_think=False would add an empty <think> block and sys_prompt=False drop the system prompt
    # ([F] fun_asr_nano/model.py:481-520); top-level max_length/llm_dtype change upstream's inference.
    changed = [key for key in ("do_think", "sys_prompt") if dataset.get(key, True) is not True]
    changed += sorted({"max_length", "llm_dtype"} & upstream.keys())
    if changed:
        raise UserError(f"{src}/config.yaml sets {', '.join(changed)}, which this port does not implement")


def read_checkpoint(path: Path) -> dict:
    """Tensors of model.pt, memory-mapped, without running pickled code."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from None
    for wrapper in CHECKPOINT_WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


def to_mlx(tensor, dtype: mx.Dtype) -> mx.array:
    """One tensor, evaluated at once so that no float32 temporaries pile up (peak ~ one checkpoint)."""
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: move the raw 16-bit patterns
        array = mx.array(tensor.view(torch.int16).numpy()).view(mx.bfloat16)
    else:
        array = mx.array(tensor.numpy())
    array = array.astype(dtype)
    mx.eval(array)
    return array


def _head_differs(state: dict, text_config: dict) -> bool:
    """A tied config with a stored head that is not the embeddings (sanitize keeps the head's values)."""
    import torch

    tied = text_config.get("tie_word_embeddings", True)
    return tied and LM_HEAD in state and not torch.equal(state[LM_HEAD], state[EMBEDDINGS])


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - MAX_KEYS_IN_MESSAGE} more" if len(keys) > MAX_KEYS_IN_MESSAGE else ""
    return ", ".join(keys[:MAX_KEYS_IN_MESSAGE]) + more


def check_keys(model: FunASRNano, weights: dict) -> None:
    expected = {key for key, _ in tree_flatten(model.parameters())}
    missing, unknown = expected - weights.keys(), weights.keys() - expected
    if missing or unknown:
        problems = [
            f"missing {_listing(missing)}" if missing else "",
            f"unknown {_listing(unknown)}" if unknown else "",
        ]
        raise UserError("checkpoint does not match the configuration: " + "; ".join(p for p in problems if p))


def checked_checkpoint(
    src: Path, expected_sha256: str | None, hashed_stamp: list[int] | None = None
) -> tuple[str, list[int]]:
    """model.pt's SHA-256, refused when it is not `expected_sha256`, and its stamp: conversion reads the
    file after this, and `unchanged_since` proves after the reading that these were the bytes read.
    `hashed_stamp` is the file's stamp when `expected_sha256` was computed from it (as the download stage
    records it): an equal stamp means no write since (files.stamp), so 2 GB are not read twice."""
    before = stamp(src / CHECKPOINT)
    known = expected_sha256 is not None and before == hashed_stamp
    digest = expected_sha256.lower() if known else sha256(src / CHECKPOINT)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise UserError(
            f"{src / CHECKPOINT} has SHA-256 {digest}, but {expected_sha256} is expected: another file, or "
            "changed since it was checked; nothing was converted"
        )
    return digest, before


def unchanged_since(src: Path, before: list[int]) -> None:
    if stamp(src / CHECKPOINT) != before:
        raise UserError(f"{src / CHECKPOINT} changed while it was being converted; nothing was written")


def convert(
    src: str | Path,
    dst: str | Path,
    dtype: str = "bfloat16",
    source_id: str | None = None,
    revision: str | None = None,
    expected_sha256: str | None = None,
    hashed_stamp: list[int] | None = None,
) -> Path:
    """Convert an upstream directory (or hub repo id) to an MLX model directory at `dst`; with
    `expected_sha256`, only a model.pt of that SHA-256 (checked on the bytes converted, or known from
    `hashed_stamp`: see `checked_checkpoint`)."""
    if dtype not in DTYPES:
        raise UserError(
            f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)} "
            "(Qwen3 is numerically unstable in float16)"
        )
    dst = Path(dst)
    check_destination(dst)  # before a possible download and the conversion
    require_utf8_path(dst)
    src, label = resolve_source(src, revision=revision)
    require_utf8_path(src)
    config = read_upstream_config(src)
    digest, before = checked_checkpoint(src, expected_sha256, hashed_stamp)
    state = read_checkpoint(src / CHECKPOINT)
    head_differs = _head_differs(state, config["text_config"])
    try:
        keep_ctc, ctc_note = _ctc_state(src, config, state)
        if not keep_ctc:
            config = {k: v for k, v in config.items() if not k.startswith("ctc_")}
        config["timestamps"] = keep_ctc
        model = FunASRNano(ModelArgs.from_dict(config))  # parameters stay lazy: never materialized
    except (TypeError, ValueError) as err:
        raise UserError(f"{src}: unsupported or incomplete configuration: {err}") from None

    # The CTC head is stored in float32 upstream: it stays so (lossless) whatever `dtype` says.
    weights = {
        key: to_mlx(
            tensor,
            mx.float32 if keep_ctc and key.removeprefix("module.").startswith(CTC_PREFIXES) else MLX_DTYPES[dtype],
        )
        for key, tensor in tqdm(state.items(), desc="convert", unit="tensor")
    }
    original_keys = {key.removeprefix("module.") for key in weights}
    weights = model.sanitize(weights)
    dropped = original_keys - weights.keys() - {LM_HEAD}  # the CTC head, when it is left out
    check_keys(model, weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:  # shape mismatches, named by MLX
        raise UserError(f"checkpoint does not match the configuration: {err}") from None
    del weights, state
    unchanged_since(src, before)  # the tensors were read (memory-mapped) from the bytes hashed

    config["conversion"] = {
        "source": source_id or label,
        "model_pt_sha256": digest,
        "dtype": dtype,
        "dropped_ctc_tensors": len(dropped),
        "notes": [
            note
            for note, applies in (
                (ctc_note, ctc_note),
                (
                    "lm_head differs from the embeddings under a tied config: both use lm_head, as upstream",
                    head_differs,
                ),
            )
            if applies
        ],
        "package": "funasr-nano-mlx",
        "package_version": package_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with staged_output(dst) as out:
        save_model(out, model, donate_model=True)
        save_config(config, out / "config.json")
        shutil.copytree(
            src / TOKENIZER_DIR, out / TOKENIZER_DIR, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
        )
        if keep_ctc:
            shutil.copyfile(src / CTC_TOKENIZER, out / CTC_TOKENIZER)
    return dst


# -- FSMN-VAD (FunASR's fsmn-vad) -------------------------------------------------------------------

AM_MVN = "am.mvn"
VAD_FILES = [CHECKPOINT, "config.yaml", "configuration.json", AM_MVN]


def read_am_mvn(path: Path, dims: int) -> np.ndarray:
    """am.mvn, a Kaldi nnet1 text file: its <AddShift> and <Rescale> vectors as a (2, dims) float32
    array, cut to the first `dims` values as upstream's apply_cmvn does."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    rows = []
    for component in ("<AddShift>", "<Rescale>"):
        _, found, rest = text.partition(component)
        try:  # "<AddShift> 400 400 <LearnRateCoef> 0 [ v1 v2 ... ]"
            rows.append(np.array(rest.partition("[")[2].partition("]")[0].split() if found else [], np.float32))
        except ValueError:
            rows.append(np.zeros(0, np.float32))
    if any(len(row) < dims for row in rows):
        raise UserError(f"{path} is not a CMVN file with <AddShift> and <Rescale> vectors of at least {dims} values")
    return np.stack([row[:dims] for row in rows])


def read_upstream_vad_config(src: Path) -> dict:
    """Our config.json from the upstream config.yaml: frontend, encoder and endpoint settings as they are."""
    for name in ("config.yaml", AM_MVN, CHECKPOINT):
        if not (src / name).is_file():
            raise UserError(f"{src} is not an upstream FSMN-VAD directory: {name} is missing")
    try:
        upstream = yaml.safe_load((src / "config.yaml").read_text())
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {src}/config.yaml: {err}") from None
    if not isinstance(upstream, dict) or (upstream.get("model"), upstream.get("encoder")) != (
        "FsmnVADStreaming",
        "FSMN",
    ):
        raise UserError(f"{src}/config.yaml does not describe an FsmnVADStreaming model with an FSMN encoder")
    upstream = sections_as_mappings(src, upstream, VAD_SECTIONS)
    frontend = {k: v for k, v in upstream.get("frontend_conf", {}).items() if k != "cmvn_file"}  # CMVN: in the weights
    config = {
        "model_type": VAD_MODEL_TYPE,
        "frontend_conf": frontend,
        "encoder_conf": upstream.get("encoder_conf", {}),
        "model_conf": upstream.get("model_conf", {}),
    }
    if problem := vad_config_problem(config):  # what loading would refuse, refused before the checkpoint is read
        raise UserError(f"{src}/config.yaml: {problem}")
    if problems := unsupported_settings(upstream):
        raise UserError(f"{src}/config.yaml: settings this port does not implement: {'; '.join(problems)}")
    return config


def convert_vad(src: str | Path, dst: str | Path, source_id: str | None = None, revision: str | None = None) -> Path:
    """Convert an upstream FSMN-VAD directory (model.pt, config.yaml, am.mvn) or hub repo id (funasr/fsmn-vad;
    the port follows its revision df20e6b30c653645fa4ff125cacfcabd1020a669) to an MLX directory at `dst`:
    config.json, and model.safetensors with the float32 weights and the CMVN."""
    dst = Path(dst)
    check_destination(dst)  # before a possible download
    require_utf8_path(dst)
    src, label = resolve_source(src, VAD_FILES, revision)
    require_utf8_path(src)
    config = read_upstream_vad_config(src)
    try:
        model = FsmnVad(FsmnArgs.from_dict(config["encoder_conf"]))
    except (TypeError, ValueError) as err:
        raise UserError(f"{src}: unsupported or incomplete encoder_conf: {err}") from None
    cmvn = read_am_mvn(src / AM_MVN, model.args.input_dim)
    state = read_checkpoint(src / CHECKPOINT)
    weights = FsmnVad.sanitize({key: to_mlx(tensor, mx.float32) for key, tensor in state.items()})
    check_keys(model, weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:  # shape mismatches, named by MLX
        raise UserError(f"checkpoint does not match the configuration: {err}") from None

    dither = config["frontend_conf"].get("dither", 1.0)  # WavFrontendOnline's default
    config["conversion"] = {
        "source": source_id or label,
        "model_pt_sha256": sha256(src / CHECKPOINT),
        "am_mvn_sha256": sha256(src / AM_MVN),
        "dtype": "float32",
        "notes": [f"upstream dithers the fbank input (dither {dither}); this port computes it without"]
        if dither
        else [],
        "package": "funasr-nano-mlx",
        "package_version": package_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with staged_output(dst) as out:
        arrays = {**dict(tree_flatten(model.parameters())), CMVN_KEY: mx.array(cmvn)}
        mx.save_safetensors(str(out / VAD_WEIGHTS), arrays, metadata={"format": "mlx"})
        save_config(config, out / "config.json")
    return dst
