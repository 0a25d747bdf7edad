"""Load a converted model and transcribe audio with it, as the official `FunASRNano.inference` does.

The prompt strings below are the reference's, byte for byte ([F] models/fun_asr_nano/model.py:725-769
and data_load_speech :464-624). The audio frames replace the `<|startofspeech|>...<|endofspeech|>`
span entirely, so those marker tokens never reach the LLM.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import load_model, load_tokenizer

from .audio import features, load_audio
from .errors import UserError
from .model import FunASRNano, model_classes

MODEL_TYPE = "fun_asr_nano"
TOKENIZER_DIR = "Qwen3-0.6B"
DEFAULT_MAX_NEW_TOKENS = 512  # the reference's max_length
SYSTEM_PROMPT = "You are a helpful assistant."
HOTWORD_PREAMBLE = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
)
END_OF_TEXT = "<|endoftext|>"  # also a stop token, as Qwen3 may end a turn with it

# Language names the models were trained with (Fun-ASR-Nano: 中文/英文/日文; the MLT sibling: all 31),
# keyed by ISO 639 code so that `--language ja` and `--language 日文` mean the same.
LANGUAGES = {
    "zh": "中文", "en": "英文", "ja": "日文", "yue": "粤语", "ko": "韩文", "vi": "越南语", "id": "印尼语",
    "th": "泰语", "ms": "马来语", "fil": "菲律宾语", "ar": "阿拉伯语", "hi": "印地语", "bg": "保加利亚语",
    "hr": "克罗地亚语", "cs": "捷克语", "da": "丹麦语", "nl": "荷兰语", "et": "爱沙尼亚语", "fi": "芬兰语",
    "el": "希腊语", "hu": "匈牙利语", "ga": "爱尔兰语", "lv": "拉脱维亚语", "lt": "立陶宛语", "mt": "马耳他语",
    "pl": "波兰语", "pt": "葡萄牙语", "ro": "罗马尼亚语", "sk": "斯洛伐克语", "sl": "斯洛文尼亚语", "sv": "瑞典语",
}  # fmt: skip
AUTO_LANGUAGE = "auto"


def resolve_language(language: str | None) -> str | None:
    """ISO code or reference name -> the reference name; None/'auto' -> None (no language in prompt)."""
    if language is None or language.strip().lower() in ("", AUTO_LANGUAGE):
        return None
    if language.strip() in LANGUAGES.values():
        return language.strip()
    code = language.strip().lower()
    if code in LANGUAGES:
        return LANGUAGES[code]
    known = ", ".join(f"{code} ({name})" for code, name in LANGUAGES.items())
    raise UserError(f"unknown language {language!r}; use 'auto' or one of: {known}")


def instruction(language: str | None = None, hotwords: Sequence[str] = (), itn: bool = True) -> str:
    """The user instruction exactly as the reference's get_prompt builds it."""
    text = ""
    if hotwords:
        text = HOTWORD_PREAMBLE + f"热词列表：[{', '.join(hotwords)}]\n"
    name = resolve_language(language)
    text += "语音转写" if name is None else f"语音转写成{name}"
    if not itn:
        text += "，不进行文本规整"
    return text + "："


def prompt_around_audio(language=None, hotwords: Sequence[str] = (), itn: bool = True) -> tuple[str, str]:
    """ChatML text before and after the audio frames (system prompt on, no <think> block)."""
    before = (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{instruction(language, hotwords, itn)}"
    )
    return before, "<|im_end|>\n<|im_start|>assistant\n"


def postprocess(text: str) -> str:
    """The reference's clean-up: '/sil' markers and runs of whitespace become one space (no strip)."""
    return re.sub(r"\s+", " ", text.replace("/sil", " "))


@dataclass
class Transcription:
    audio: str
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    hit_token_limit: bool  # True when decoding stopped at max_new_tokens, not at a stop token
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(path: Path) -> dict:
    """config.json of a converted model directory; a clear error for anything else."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        config = {}
    valid = config.get("model_type") == MODEL_TYPE and isinstance(config.get("text_config"), dict)
    if not valid or not (path / TOKENIZER_DIR).is_dir():
        raise UserError(
            f"{path} is not a converted Fun-ASR-Nano model (expected config.json with model_type "
            f"{MODEL_TYPE!r} and a {TOKENIZER_DIR}/ tokenizer folder); create one with `funasr-nano-mlx convert`"
        )
    return config


def stop_token_ids(config: dict, tokenizer) -> list[int]:
    """The checkpoint's eos_token_id(s) plus <|endoftext|>."""
    eos = config["text_config"].get("eos_token_id", [])
    eos = [eos] if isinstance(eos, int) else list(eos)
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    return sorted(set(eos + ([end_of_text] if end_of_text is not None else [])))


def load(path: str | Path) -> tuple[FunASRNano, TokenizerWrapper]:
    """Load a converted (optionally quantized) model directory: returns (model, tokenizer)."""
    path = Path(path)
    config = read_config(path)
    try:
        model, _ = load_model(path, get_model_classes=model_classes)
        tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: MLX reading a corrupt file
        raise UserError(f"cannot load the model in {path}: {err}") from None
    # The reference always runs encoder and adaptor in float32 ([F] fun_asr_nano/model.py:663-667).
    # They run once per utterance, so this costs little; in bf16 they visibly change the tokens.
    for audio_module in (model.audio_encoder, model.audio_adaptor):
        audio_module.set_dtype(mx.float32)
    mx.eval(model.parameters())
    # Exactly the reference's stop set: not the tokenizer_config's eos, which mlx-lm would add.
    tokenizer.eos_token_ids = stop_token_ids(config, tokenizer)
    return model, tokenizer


def prompt_inputs(
    model: FunASRNano, tokenizer, audio_frames: mx.array, language=None, hotwords: Sequence[str] = (), itn=True
) -> tuple[mx.array, mx.array]:
    """Token ids (audio positions hold 0, as in the reference) and the LLM input embeddings.

    `audio_frames` is the adaptor output (T, llm_dim); only the first ceil(T/8) frames are used.
    """
    before, after = prompt_around_audio(language, hotwords, itn)
    num_audio = model.num_audio_tokens(audio_frames.shape[0])
    before_ids, after_ids = tokenizer.encode(before), tokenizer.encode(after)
    ids = mx.array(before_ids + [0] * num_audio + after_ids)
    embed = model.llm.model.embed_tokens
    before_embeddings, after_embeddings = embed(mx.array(before_ids)), embed(mx.array(after_ids))
    # Audio frames take the embeddings' dtype, as upstream writes them into the embedded prompt.
    audio_embeddings = audio_frames[:num_audio].astype(before_embeddings.dtype)
    if audio_embeddings.shape[0] < num_audio:  # adaptor output shorter than the slots: upstream's
        # fallback ([F] fun_asr_nano/model.py:702-720) leaves the remaining placeholders as embed(0).
        padding = embed(mx.zeros(num_audio - audio_embeddings.shape[0], mx.int32))
        audio_embeddings = mx.concatenate([audio_embeddings, padding])
    return ids, mx.concatenate([before_embeddings, audio_embeddings, after_embeddings])


def greedy_tokens(llm, ids: mx.array, embeddings: mx.array, max_new_tokens: int) -> Iterator[int]:
    """Greedy token ids after the prompt, without end.

    The prompt is prefilled in one forward pass here; mlx-lm's generate_step would split it into
    all-but-the-last token plus a one-token step, two passes that doubled the prefill time on an
    H100 (28 ms -> 13 ms for 10 s of audio). Decoding then runs in generate_step with that cache.
    """
    cache = make_prompt_cache(llm)
    last_hidden = llm.model(ids[None], cache=cache, input_embeddings=embeddings[None])[:, -1:]
    # Only the last position's logits are needed: 151936 floats instead of that times the prompt.
    head = llm.model.embed_tokens.as_linear if llm.args.tie_word_embeddings else llm.lm_head
    first = mx.argmax(head(last_hidden)[0, -1])
    yield first.item()
    for token, _ in generate_step(first[None], llm, max_tokens=max_new_tokens - 1, prompt_cache=cache):
        yield token


def _as_list(hotwords: Sequence[str] | str | None) -> list[str]:
    # A bare string is one hotword (the reference would join it character by character).
    return [hotwords] if isinstance(hotwords, str) else [w for w in hotwords or () if w]


def _samples(audio: str | Path | np.ndarray) -> np.ndarray:
    if not isinstance(audio, np.ndarray):
        return load_audio(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise UserError(f"audio arrays must be float samples in [-1, 1] at 16 kHz, got dtype {audio.dtype}")
    return audio.astype(np.float32, copy=False)


def transcribe(
    model: FunASRNano,
    tokenizer: TokenizerWrapper,
    audio: str | Path | np.ndarray,
    *,
    language: str | None = None,
    hotwords: Sequence[str] | str = (),
    itn: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Transcription:
    """Greedy transcription of one file or one 16 kHz mono float array."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    name = str(audio) if not isinstance(audio, np.ndarray) else "<array>"
    timings = {}
    start = time.perf_counter()
    feats = mx.array(features(_samples(audio), name=name))
    timings["frontend"] = time.perf_counter() - start

    start = time.perf_counter()
    frames = model.encode(feats[None])[0]
    mx.eval(frames)
    timings["encoder"] = time.perf_counter() - start

    start = time.perf_counter()
    ids, embeddings = prompt_inputs(model, tokenizer, frames, language, _as_list(hotwords), itn)
    token_ids, stop_token, steps_after_first = [], [], 0
    for step, token in enumerate(greedy_tokens(model.llm, ids, embeddings, max_new_tokens)):
        if step == 0:  # the first token comes out of the prefill
            timings["prefill"] = time.perf_counter() - start
            start = time.perf_counter()
        steps_after_first = step
        if token in tokenizer.eos_token_ids:
            stop_token = [token]
            break
        token_ids.append(token)
    timings["decode"] = time.perf_counter() - start
    timings["decode_ms_per_token"] = 1000 * timings["decode"] / max(1, steps_after_first)

    # Upstream decodes all that generate() returned, the stop token included (skipped as special).
    text = postprocess(tokenizer.decode(token_ids + stop_token, skip_special_tokens=True))
    return Transcription(name, text, token_ids, not stop_token, timings)
