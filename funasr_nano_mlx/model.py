"""Fun-ASR-Nano in MLX: SenseVoice SAN-M encoder, Transformer adaptor, Qwen3 (from mlx-lm).

No I/O here. Module names follow the upstream checkpoint keys (`audio_encoder.*`, `audio_adaptor.*`,
`llm.*`), so converted weights load with `load_weights(strict=True)`. References of the form
`[F] path:line` point into the official funasr 1.4.16 package (see FUN_ASR_NANO_SPEC.md).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3
from mlx_lm.models.activations import swiglu

from . import cuda_kernels
from .cuda_kernels import key_mask, qk_norm_rope_ops, value_heads
from .modeldir import (
    INPUT_SIZE,
    LLM_DTYPES,
    AdaptorArgs,
    EncoderArgs,
    FrontendArgs,
    dataclass_from_dict,
    memory_left_pad,
)

ENCODER_LN_EPS = 1e-5  # SenseVoice LayerNorm default, [F] models/sense_voice/model.py:300
ADAPTOR_LN_EPS = 1e-12  # funasr transformer LayerNorm, [F] models/transformer/layer_norm.py:24
PE_MAX_TIMESCALE = 10000.0
# How much of the encoder one evaluation may submit, as `sanm_layer_bytes` estimates it (see there and
# SenseVoiceEncoder.run_layers). The fixed 10 layers of earlier builds came to 1.96 GiB by that estimate
# for 32 x 30 s (500 LFR frames), and that batch-32 run peaked at 9.06 GB; with this budget a slice is no
# larger than that (32 x 30 s: 6 layers; 16 x 30 s: 12, was 10), except where one layer alone is over
# the budget (32 x 300 s: one layer a slice, as small as slices go). 1.25 is the smallest round value that
# keeps one clip one graph up to 68 s: 70 layers of 60 s (1000 frames) come to 1.04 GiB, of 10 s to 0.12.
ENCODER_EVAL_BUDGET = 5 * 2**28  # 1.25 GiB
# Of the arrays a SAN-M layer creates (as `sanm_layer_bytes` counts them), the fraction alive at once
# when the whole encoder is one graph. bench/stage_memory.py measured the 70 layers holding 6.9 GiB above
# the weights for 16 x 30 s (500 frames) in float32, one graph, on an H100; counted, that is 70 layers x
# 16 x 500 frames x 9680 values x 4 bytes = 20.2 GiB, and 6.9 / 20.2 = 0.34. (Evaluated every 10 layers,
# the same batch held 3.53 GiB, half of what the 70 held at once: the GPU frees a long graph's first
# layers while the host still submits its last ones. So the estimate ranks sizes against the budget; it
# is no byte count of one slice.)
SANM_LIVE_FRACTION = 0.34
# Every this many SAN-M layers the graph built so far is submitted without waiting for it
# (`mx.async_eval`, which encodes the kernels in the calling thread and returns), so that the device runs
# those layers while the host builds the next. One clip is one graph and bound by the host: submitted at
# the end, the device idled while Python built all 70 layers. 0 submits only at ENCODER_EVAL_BUDGET's
# slices. The numbers are the same either way (the same kernels, in the same order). 10 s on an H100: 9.1 ms
# every 5 layers, 9.3 every 10, 10.0 every 2, 14.7 every layer (each submission costs the host too), 14.6 at
# the end (bench/step_profile.py --pipeline, BENCHMARKS.md).
ENCODER_PIPELINE_LAYERS = 5
# The CTC timestamp head (ModelScope copy only): kept when the config has `ctc_decoder_conf`, else dropped.
CTC_PREFIXES = ("ctc_decoder.", "ctc.")
CTC_VOCAB_SIZE = 60515  # [F] fun_asr_nano/model.py:174; the blank is the last id (:198)
LM_HEAD, EMBEDDINGS = "llm.lm_head.weight", "llm.model.embed_tokens.weight"


@dataclass
class ModelArgs:
    """The whole of config.json (mlx-audio's `fun_asr_nano` layout)."""

    model_type: str = "fun_asr_nano"
    input_size: int = INPUT_SIZE
    frontend_conf: FrontendArgs = field(default_factory=FrontendArgs)
    audio_encoder_conf: EncoderArgs = field(default_factory=EncoderArgs)
    audio_adaptor_conf: AdaptorArgs = field(default_factory=AdaptorArgs)
    text_config: dict = field(default_factory=dict)  # Qwen3-0.6B/config.json
    llm_dtype: str = "bf16"  # llm_conf.llm_dtype of config.yaml: the dtype upstream builds the LLM in
    # The CTC timestamp head: ctc_decoder_conf of config.yaml (None: the model has none), vocabulary, blank.
    ctc_decoder_conf: AdaptorArgs | None = None
    ctc_vocab_size: int = CTC_VOCAB_SIZE
    ctc_blank_id: int | None = None  # None: ctc_vocab_size - 1

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        args = dataclass_from_dict(cls, params)
        args.frontend_conf = FrontendArgs.from_dict(params.get("frontend_conf", {}))
        args.audio_encoder_conf = EncoderArgs.from_dict(params.get("audio_encoder_conf", {}))
        args.audio_adaptor_conf = AdaptorArgs.from_dict(params.get("audio_adaptor_conf", {}))
        if params.get("ctc_decoder_conf"):
            args.ctc_decoder_conf = AdaptorArgs.from_dict(params["ctc_decoder_conf"])
        return args

    @property
    def blank_id(self) -> int:
        return self.ctc_vocab_size - 1 if self.ctc_blank_id is None else self.ctc_blank_id

    def llm_args(self) -> qwen3.ModelArgs:
        return qwen3.ModelArgs.from_dict(self.text_config)


def use_compile() -> bool:
    """Whether encoder and adaptor layers run through `mx.compile` (see `compiled_layer`).

    On by default on a GPU, where the per-op overhead of a 70-layer encoder costs far more than its
    arithmetic; off on MLX's CPU backend (compute-bound there, and its fused kernels need a C++ compiler
    at run time). FUNASR_NANO_COMPILE=1 / 0 forces it either way.
    """
    forced = os.environ.get("FUNASR_NANO_COMPILE")
    if forced is not None:
        return forced not in ("", "0")
    return mx.default_device().type == mx.DeviceType.gpu


@lru_cache(maxsize=None)
def compiled_layer(layer_class: type, *init_args, kernels: tuple = (), next_norm_eps: float | None = None):
    """One compiled `(parameters, x, mask) -> y` function for every layer of this class and shape, and for
    what the layers take from cuda_kernels (`cuda_kernels.encoder_choices`: a trace keeps what it was traced
    with). With `next_norm_eps` (a SAN-M layer in a stack: `SANMEncoderLayer.__call__`),
    `(parameters, x, mask, normed, next_norm) -> (y, next_norm(y))`, next_norm a LayerNorm's parameters.

    The layers of a stack differ only in their weights, so a template module is traced once with the
    weights as inputs and the trace serves all of them (70 SAN-M layers: two traces, encoders0 being
    wider). MLX retraces for each new input shape (a few ms for one layer; its fused kernels are shape-
    generic, so nothing is compiled again on the device). Fusing changes only float rounding order.
    """
    template = layer_class(*init_args)  # its own random weights stay lazy: never computed
    if next_norm_eps is None:

        def forward(parameters, x, mask):
            template.update(parameters)
            return template(x, mask)

        return mx.compile(forward)
    next_template = nn.LayerNorm(template.norm2.weight.shape[0], eps=next_norm_eps)

    def chained(parameters, x, mask, normed, next_norm):
        template.update(parameters)
        next_template.update(next_norm)
        return template(x, mask, normed, next_template)

    return mx.compile(chained)


def _holds_quantized(parameters: dict) -> bool:
    """Whether a module's parameters (`Module.parameters()`) include a quantized weight: MLX's quantized
    layers keep its `scales` beside it. Read from the parameters the layer is called with, because walking
    the modules again for their types took as long as taking the parameters (about 1 ms an encoder pass on
    the development CPU, on the host's path to the first token)."""
    return any(
        key == "scales" or (isinstance(value, dict) and _holds_quantized(value)) for key, value in parameters.items()
    )


class _ReadParameters(NamedTuple):
    """What `layer_parameters` keeps on a module: its parameters, whether they hold a quantized weight, and
    where they were read from: (key, value) for each of the module's own entries and its size, and (owner, key,
    value) and (owner, size) below it, in every module, dict and list of the tree. The module itself is not
    kept (it would hold itself, and a dropped model's weights would wait for the cycle collector)."""

    parameters: dict
    quantized: bool
    own_entries: list
    own_size: int
    entries: list
    sizes: list


def _read_from(owner, tree, entries: list, sizes: list) -> None:
    """Append (owner, key, value) to `entries` for each entry of `tree` (read from `owner`), and (container,
    size) to `sizes` for each module, dict or list below, recursively."""
    for key, value in tree.items() if isinstance(tree, dict) else enumerate(tree):
        child = owner[key]
        entries.append((owner, key, child))
        if isinstance(child, (dict, list)) and not isinstance(value, mx.array):
            sizes.append((child, len(child)))
            _read_from(child, value, entries, sizes)


def _still_there(module: nn.Module, kept: _ReadParameters) -> bool:
    try:  # an entry removed since (`bias = None` pops it) raises here
        return (
            len(module) == kept.own_size
            and all(module[key] is value for key, value in kept.own_entries)
            and all(owner[key] is value for owner, key, value in kept.entries)
            and all(len(owner) == size for owner, size in kept.sizes)
        )
    except (KeyError, IndexError):
        return False


def layer_parameters(module: nn.Module) -> tuple[dict, bool]:
    """`module.parameters()` and whether they hold a quantized weight (`_holds_quantized`), kept on the module
    while every module, list and array they were read from is still where it was and no container gained or
    lost an entry (what `update`, `load_weights`, `quantize` or an assignment change). Checking that takes
    about 2 us a SAN-M layer on the development CPU, against 17 to walk its modules again, of the 65 it takes
    to build a layer's graph; one clip's encoder is bound by the host's building and submitting."""
    kept = module.__dict__.get("_read_parameters")
    if kept is not None and _still_there(module, kept):
        return kept.parameters, kept.quantized
    parameters, entries, sizes = module.parameters(), [], []
    _read_from(module, parameters, entries, sizes)
    own = [(key, value) for owner, key, value in entries if owner is module]
    below = [entry for entry in entries if entry[0] is not module]
    kept = _ReadParameters(parameters, _holds_quantized(parameters), own, len(module), below, sizes)
    object.__setattr__(module, "_read_parameters", kept)  # a plain attribute: not part of the module tree
    return parameters, kept.quantized


def run_layer(
    layer: nn.Module,
    init_args: tuple,
    x: mx.array,
    mask: mx.array | None,
    normed: mx.array | None = None,
    next_norm: nn.LayerNorm | None = None,
):
    """`layer(x, mask)`, through the compiled function of its class and `init_args` where compiling is on; with
    `next_norm` (a SAN-M layer in a stack, `normed` its norm1 of x), `layer(x, mask, normed, next_norm)`. A quantized
    layer (an `8bit` encoder) runs as it is: the template holds no quantization parameters."""
    chained = () if next_norm is None else (normed, next_norm)
    parameters, quantized = layer_parameters(layer) if use_compile() else (None, False)
    if parameters is None or quantized:
        return layer(x, mask, *chained)
    eps = None if next_norm is None else next_norm.eps
    compiled = compiled_layer(type(layer), *init_args, kernels=cuda_kernels.encoder_choices(), next_norm_eps=eps)
    if next_norm is None:
        return compiled(parameters, x, mask)
    return compiled(parameters, x, mask, normed, layer_parameters(next_norm)[0])


def sinusoidal_position_encoding(length: int, depth: int) -> mx.array:
    """SenseVoice's PE: positions 1..length, depth = the input width (560), [sin | cos] halves, fp32."""
    # In float32 step by step, as torch computes it, so positions far into long audio agree too.
    increment = mx.log(mx.array(PE_MAX_TIMESCALE, mx.float32)) / (depth / 2 - 1)
    inv_timescales = mx.exp(mx.arange(depth // 2, dtype=mx.float32) * -increment)
    scaled_time = mx.arange(1, length + 1, dtype=mx.float32)[:, None] * inv_timescales[None, :]
    return mx.concatenate([mx.sin(scaled_time), mx.cos(scaled_time)], axis=-1)


def frame_mask(lengths: mx.array, length: int, dtype=mx.float32) -> mx.array:
    """(B, length) mask, 1 on each row's first lengths[b] frames, 0 after."""
    return (mx.arange(length)[None, :] < lengths[:, None]).astype(dtype)


def exact_linear(
    layer: nn.Linear, x: mx.array, relu: bool = False, addends: tuple = (), norm: nn.LayerNorm | None = None
):
    """`layer(x)`, then relu if asked, then plus each of `addends` (residuals) in order: in `cuda_kernels.split_linear`
    where it gives MLX's numbers at a smaller launch cost (`cuda_kernels.linear_parts`: a float32 layer with a bias,
    on CUDA), else in MLX's ops. With `norm`, that and `norm` of it (in the same kernel where the layer is split)."""
    dense = type(layer) is nn.Linear and "bias" in layer and layer.weight.dtype == layer.bias.dtype == x.dtype
    parts = cuda_kernels.linear_parts(x.size // x.shape[-1], *layer.weight.shape, x.dtype) if dense else None
    norm_args = None if norm is None else (norm.weight, norm.bias, norm.eps)  # as nn.LayerNorm calls layer_norm
    if parts:
        return cuda_kernels.split_linear(x, layer.weight, layer.bias, parts, relu, addends, norm_args)
    return cuda_kernels.normed(cuda_kernels.added(nn.relu(layer(x)) if relu else layer(x), addends), norm_args)


class FeedForward(nn.Module):
    """Position-wise feed-forward; with `exact_linears` its two layers go through `exact_linear` (the SAN-M encoder's:
    its kernels were measured at those shapes, not at the adaptor's), and a residual, if given, is added in its last
    kernel."""

    def __init__(self, dims: int, hidden: int, exact_linears: bool = False):
        super().__init__()
        self.w_1 = nn.Linear(dims, hidden)
        self.w_2 = nn.Linear(hidden, dims)
        self.exact_linears = exact_linears

    def __call__(self, x: mx.array, residual: mx.array | None = None, norm: nn.LayerNorm | None = None):
        """The FFN of x, plus `residual` if given; with `norm`, that and `norm` of it (exact linears only)."""
        addends = () if residual is None else (residual,)
        if self.exact_linears:
            return exact_linear(self.w_2, exact_linear(self.w_1, x, relu=True), addends=addends, norm=norm)
        y = cuda_kernels.added(self.w_2(nn.relu(self.w_1(x))), addends)
        return y if norm is None else (y, norm(y))


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory block over v ([F] sense_voice/model.py:99-258)."""

    def __init__(self, in_dims: int, dims: int, heads: int, kernel_size: int, sanm_shift: int):
        super().__init__()
        self.heads = heads
        self.linear_q_k_v = nn.Linear(in_dims, 3 * dims)
        self.linear_out = nn.Linear(dims, dims)
        # Depthwise conv, weight (C, K, 1) in MLX layout; no bias.
        self.fsmn_block = nn.Conv1d(dims, dims, kernel_size, groups=dims, bias=False)
        self.left_pad = memory_left_pad(kernel_size, sanm_shift)
        if kernel_size - 1 - self.left_pad < 0:  # the frames of zeros after the last (modeldir refuses such a config)
            raise ValueError(f"sanm_shift {sanm_shift} too large for kernel_size {kernel_size}")

    def __call__(self, x: mx.array, mask: mx.array | None = None, residual: mx.array | None = None, norm=None):
        """The attention plus the memory block, plus `residual` if given (added last: in the output layer's kernel
        where `exact_linear` runs one); with `norm` (a LayerNorm), that and `norm` of it."""
        qkv = exact_linear(self.linear_q_k_v, x)
        # On CUDA one kernel computes the memory block, which MLX's ops take five or more for
        # (cuda_kernels.fsmn_memory); where chosen and small enough one the attention, which they take
        # seven for (cuda_kernels.frame_attention_fits: opt-in, it changes float32's numbers); else, small
        # enough, its products with MLX's numbers and its softmax with MLX's, the memory in the scores' launch, and for
        # one clip of up to 10 s the scores, the softmax, the context and the memory in one kernel
        # (cuda_kernels.attention_products_fit, softmax_in_scores_fits).
        fsmn = cuda_kernels.fsmn_memory if cuda_kernels.fsmn_fits(qkv.dtype) else cuda_kernels.fsmn_memory_ops
        batch, frames, width = qkv.shape
        taps = (self.fsmn_block.weight, self.left_pad)
        if cuda_kernels.frame_attention_fits(batch, frames, width // (3 * self.heads), qkv.dtype):
            context, memory = cuda_kernels.frame_attention(qkv, self.heads, mask), fsmn(qkv, *taps, mask)
        elif cuda_kernels.attention_products_fit(batch, frames, qkv.dtype):
            context, memory = cuda_kernels.attention_products_and_memory(qkv, self.heads, *taps, mask)
        else:
            context, memory = cuda_kernels.frame_attention_ops(qkv, self.heads, mask), fsmn(qkv, *taps, mask)
        addends = (memory,) if residual is None else (memory, residual)
        return exact_linear(self.linear_out, context, addends=addends, norm=norm)


class SANMEncoderLayer(nn.Module):
    def __init__(self, in_dims: int, args: EncoderArgs):
        super().__init__()
        dims = args.output_size
        self.self_attn = SANMAttention(in_dims, dims, args.attention_heads, args.kernel_size, args.sanm_shift)
        self.feed_forward = FeedForward(dims, args.linear_units, exact_linears=True)
        self.norm1 = nn.LayerNorm(in_dims, eps=ENCODER_LN_EPS)
        self.norm2 = nn.LayerNorm(dims, eps=ENCODER_LN_EPS)
        # encoders0 changes width (560 -> 512), so it has no attention residual.
        self.attention_residual = in_dims == dims

    def __call__(self, x: mx.array, mask: mx.array | None = None, normed: mx.array | None = None, next_norm=None):
        """The layer's output; with `next_norm` (a LayerNorm: the next layer's norm1, or the stack's last norm), that
        and `next_norm` of it. `normed`: this layer's norm1 of x, where the layer before wrote it."""
        # Each residual is added in the kernel that adds its branch's last bias (exact_linear's addends): the same
        # float32 additions in the same order as `x + branch`; each norm comes from the kernel writing its input.
        normed = self.norm1(x) if normed is None else normed
        residual = x if self.attention_residual else None
        x, ffn_input = self.self_attn(normed, mask, residual=residual, norm=self.norm2)
        return self.feed_forward(ffn_input, residual=x, norm=next_norm)


def sanm_layer_bytes(batch: int, frames: int, args: EncoderArgs, itemsize: int = 4) -> int:
    """Estimated bytes of the intermediates one SAN-M layer leaves allocated, for a (batch, frames,
    output_size) input, while its graph has not run (CUDA frees them only then)."""
    dims = args.output_size
    values_per_frame = (
        3 * dims  # the q/k/v projection
        + 2 * dims  # the FSMN memory and the attention context
        + args.linear_units  # the FFN's hidden layer
        + 6 * dims  # two norms, attention and FFN outputs, two residual sums
        # The attention scores, heads x frames per query frame: the float32 attention may take the
        # fallback of mx.fast.scaled_dot_product_attention, which materializes them. At 300 s (5000
        # frames) they are 2.6 times the rest.
        + args.attention_heads * frames
    )
    return max(1, math.ceil(SANM_LIVE_FRACTION * batch * frames * values_per_frame * itemsize))


def encoder_layers_per_eval(batch: int, frames: int, args: EncoderArgs, itemsize: int = 4) -> int:
    """How many SAN-M layers to submit per evaluation: as many as ENCODER_EVAL_BUDGET holds, at least one."""
    return max(1, ENCODER_EVAL_BUDGET // sanm_layer_bytes(batch, frames, args, itemsize))


class SenseVoiceEncoder(nn.Module):
    """SenseVoiceEncoderSmall ([F] sense_voice/model.py:488-655).

    `mask` (B, T), true on valid frames, is needed only for padded batches; at B = 1 it is None.
    """

    def __init__(self, input_size: int, args: EncoderArgs):
        super().__init__()
        self.args = args
        dims = args.output_size
        self.input_scale = math.sqrt(dims)
        self.encoders0 = [SANMEncoderLayer(input_size, args)]
        self.encoders = [SANMEncoderLayer(dims, args) for _ in range(args.num_blocks - 1)]
        self.after_norm = nn.LayerNorm(dims, eps=ENCODER_LN_EPS)
        self.tp_encoders = [SANMEncoderLayer(dims, args) for _ in range(args.tp_blocks)]
        self.tp_norm = nn.LayerNorm(dims, eps=ENCODER_LN_EPS)

    def attention_sources_frames(self, seen: int) -> tuple[int, ...]:
        """One clip length (frames) at which each source of the attention's CUDA kernels one clip can take first runs
        (cuda_kernels.attention_source), but the source a clip of `seen` frames takes: what a warm-up encodes."""
        heads = self.args.attention_heads
        # q/k/v are float32 (the features are, whatever the weights)
        return cuda_kernels.attention_sources_frames(heads, self.args.output_size // heads, mx.float32, seen)

    def __call__(self, feats: mx.array, mask: mx.array | None = None) -> mx.array:
        x = feats * self.input_scale
        x = x + sinusoidal_position_encoding(x.shape[1], x.shape[2]).astype(x.dtype)
        per_eval = encoder_layers_per_eval(x.shape[0], x.shape[1], self.args, x.itemsize)
        first = self.encoders0 + self.encoders
        x = self.run_layers(first, x, mask, per_eval, done=0, last_norm=self.after_norm)
        return self.run_layers(self.tp_encoders, x, mask, per_eval, done=len(first), last_norm=self.tp_norm)

    def run_layers(
        self,
        layers: list[SANMEncoderLayer],
        x: mx.array,
        mask: mx.array | None,
        per_eval: int,
        done: int,
        last_norm: nn.LayerNorm,
    ) -> mx.array:
        """`last_norm` of `layers` over `x`, evaluating before each layer whose index in the whole stack (the first
        `done` layers come before these) is a multiple of `per_eval`, and submitting without waiting before each
        other multiple of ENCODER_PIPELINE_LAYERS. Each layer hands the next its norm1 of its
        output (the last, `last_norm`'s), which the kernel writing the output computes where it can."""
        if not layers:
            return last_norm(x)
        normed = layers[0].norm1(x)
        next_norms = [layer.norm1 for layer in layers[1:]] + [last_norm]
        for index, (layer, next_norm) in enumerate(zip(layers, next_norms), start=done):
            if index > 0 and index % per_eval == 0:
                # On CUDA, intermediates of a graph submitted at once stay allocated until it has run
                # (70 layers held 6.9 GB above the weights for 16 x 30 s, 0.3 GB for one clip);
                # evaluating in slices bounds that and changes no number. But each evaluation idles the
                # GPU while the host builds the next slice, and for one clip the encoder is host-bound
                # (10 s on an H100: 14.7 ms as one graph, 19.3 in slices of 10), so slices are sized by
                # the input (ENCODER_EVAL_BUDGET) and one clip is one graph. Slices are not pipelined
                # (the next submitted before waiting on this one): two would be alive, so each would
                # have to be half as large for the same bound (with fixed 10-layer slices it doubled the
                # batch-32 peak), and inputs large enough to be sliced (a batch, or one clip over 68 s)
                # give the GPU more work per host-built layer, so its idle gaps weigh less; in batches
                # the encoder is a small share anyway (0.85 s of an 8.8 s run at batch 16: BENCHMARKS.md).
                mx.eval(x, normed)
            elif index > 0 and ENCODER_PIPELINE_LAYERS and index % ENCODER_PIPELINE_LAYERS == 0:
                # Within a slice the layers built so far are submitted without waiting: no more is alive
                # than the slice holds, and the GPU starts on them while the host builds the rest.
                mx.async_eval(x, normed)
            init_args = (layer.norm1.weight.shape[0], self.args)  # its constructor's arguments
            x, normed = run_layer(layer, init_args, x, mask, normed, next_norm)
        return normed


class AdaptorAttention(nn.Module):
    """funasr transformer MultiHeadedAttention ([F] models/transformer/attention.py:21-120)."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(dims, dims)
        self.linear_k = nn.Linear(dims, dims)
        self.linear_v = nn.Linear(dims, dims)
        self.linear_out = nn.Linear(dims, dims)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        batch, length, _ = x.shape
        q, k, v = (
            proj(x).reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)
            for proj in (self.linear_q, self.linear_k, self.linear_v)
        )
        # Scaled after the product, as the reference does: scores = q @ k^T / sqrt(d_k).
        scores = (q @ k.transpose(0, 1, 3, 2)) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = mx.where(key_mask(mask), scores, mx.array(-mx.inf, scores.dtype))
        context = mx.softmax(scores, axis=-1, precise=True) @ v
        return self.linear_out(context.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class AdaptorBlock(nn.Module):
    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.dims, self.heads = dims, heads
        self.self_attn = AdaptorAttention(dims, heads)
        self.feed_forward = FeedForward(dims, dims // 4)  # hard-coded llm_dim // 4 upstream
        self.norm1 = nn.LayerNorm(dims, eps=ADAPTOR_LN_EPS)
        self.norm2 = nn.LayerNorm(dims, eps=ADAPTOR_LN_EPS)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        x = x + self.self_attn(self.norm1(x), mask)
        return x + self.feed_forward(self.norm2(x))


class AudioAdaptor(nn.Module):
    """llm_asr Transformer adaptor ([F] models/llm_asr/adaptor.py:125-202)."""

    def __init__(self, args: AdaptorArgs):
        super().__init__()
        self.stride = args.downsample_rate
        self.linear1 = nn.Linear(args.encoder_dim * args.downsample_rate, args.ffn_dim)
        self.linear2 = nn.Linear(args.ffn_dim, args.llm_dim)
        self.blocks = [AdaptorBlock(args.llm_dim, args.attention_heads) for _ in range(args.n_layer)]

    def __call__(self, x: mx.array, lengths: mx.array | None = None) -> mx.array:
        """Encoder output (B, T, D) -> (B, ceil(T / stride), llm_dim); `lengths` only for padded batches."""
        batch, length, dims = x.shape
        chunks, mask = -(-length // self.stride), None
        if lengths is not None:
            # At B = 1 the frames past the end are the zeros padded here, so padded rows are zeroed too.
            x = x * frame_mask(lengths, length, x.dtype)[..., None]
            mask = frame_mask(self.output_lengths(lengths), chunks)
        x = mx.pad(x, [(0, 0), (0, chunks * self.stride - length), (0, 0)])
        x = self.linear2(nn.relu(self.linear1(x.reshape(batch, chunks, dims * self.stride))))
        for block in self.blocks:
            x = run_layer(block, (block.dims, block.heads), x, mask)
        return x

    def output_lengths(self, lengths: mx.array) -> mx.array:
        return (lengths + self.stride - 1) // self.stride


class CTC(nn.Module):
    """The CTC output layer ([F] models/fun_asr_nano/ctc.py:5-70): `ctc_lo`, then a log-softmax."""

    def __init__(self, dims: int, vocab_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(dims, vocab_size)

    def log_softmax(self, x: mx.array) -> mx.array:
        logits = self.ctc_lo(x).astype(mx.float32)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def columns(self, x: mx.array, ids: list[int]) -> mx.array:
        """The logits of the vocabulary entries `ids` only, (..., len(ids)): the rows of the weight that
        a forced alignment needs (a quantized layer's rows are dequantized)."""
        layer, index = self.ctc_lo, mx.array(ids, mx.int32)
        if isinstance(layer, nn.QuantizedLinear):
            weight = mx.dequantize(
                layer.weight[index],
                layer.scales[index],
                layer.get("biases")[index] if "biases" in layer else None,
                layer.group_size,
                layer.bits,
                mode=layer.mode,
            )
        else:
            weight = layer.weight[index]
        logits = x @ weight.astype(x.dtype).T
        return (logits + layer.bias[index].astype(x.dtype) if "bias" in layer else logits).astype(mx.float32)


class UpstreamRoPE(nn.Module):
    """Qwen3's RoPE with inverse frequencies rounded to the dtype upstream builds the LLM in.

    FunASRNano casts the whole LLM to llm_dtype (bf16) after building it ([F] fun_asr_nano/
    model.py:128-129); that also rounds transformers' `inv_freq` buffer, and the later cast to fp32
    for inference cannot restore it. The model was trained and is run upstream with these rounded
    frequencies (e.g. 0.8046875 instead of 0.80584), so they are reproduced here.
    """

    ROUNDING = dict(zip(LLM_DTYPES, (mx.bfloat16, mx.float16, mx.float32)))

    def __init__(self, dims: int, base: float, llm_dtype: str):
        super().__init__()
        self.dims = dims
        exponents = mx.arange(0, dims, 2, dtype=mx.float32) / dims
        inv_freq = (1.0 / mx.power(mx.array(base, mx.float32), exponents)).astype(self.ROUNDING[llm_dtype])
        self._freqs = 1.0 / inv_freq.astype(mx.float32)  # mx.fast.rope takes periods, not inverses
        # Computed now: a compiled decode step traced while they were still lazy would hold their graph
        # and compute them again at every call (two kernels a layer a token, seen in a GPU profile).
        mx.eval(self._freqs)

    @property
    def periods(self) -> mx.array:
        return self._freqs  # underscored, so that MLX does not count it among the parameters

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs)


def use_fused_projections() -> bool:
    """Whether `load` fuses the LLM's q/k/v and gate/up projections (`FunASRNano.fuse_projections`).
    On by default; FUNASR_NANO_FUSE=0 keeps mlx-lm's separate matmuls."""
    return os.environ.get("FUNASR_NANO_FUSE", "1") not in ("", "0")


class FusedLinear:
    """Linear layers that read the same input, computed by one matmul: their weights (and a quantized
    layer's scales and biases) concatenated along the output dimension, which is safe for quantized
    weights too because their groups run along the input dimension.

    Why: a decode step at batch 1 is ~500 small kernels and costs the host's work per kernel more than
    the arithmetic, so three projections in one matmul are two kernels fewer (on an H100: 6-9% less
    per token, 11% per batched step; BENCHMARKS.md). FUNASR_NANO_FUSE=0 turns it off. The parts keep
    their own parameters, now views into the fused arrays (no memory is added, saved files keep their
    keys); if a part's weight is replaced afterwards the fused copy is stale and `current` returns None.
    """

    ARRAYS = ("weight", "scales", "biases")

    def __init__(self, parts: list[nn.Module]):
        self.linear = copy.copy(parts[0])  # same class and quantization settings: the library's own __call__
        bounds = [0]
        for part in parts:
            bounds.append(bounds[-1] + part.weight.shape[0])
        self.splits = bounds[1:-1]
        names = [name for name in self.ARRAYS if name in parts[0]]
        for name in names:
            self.linear[name] = mx.concatenate([part[name] for part in parts])
        cuda_kernels.pack_quantized(self.linear)  # a quantized layer's arrays in one buffer, for the kernels
        for name in names:
            for part, lo, hi in zip(parts, bounds, bounds[1:]):
                part[name] = self.linear[name][lo:hi]
        self.parts = parts
        self.weights = tuple(part.weight for part in parts)

    @staticmethod
    def can_fuse(parts: list[nn.Module]) -> bool:
        """Same class, no bias, same dtype and quantization (a recipe may give v_proj more bits than q_proj)."""
        if type(parts[0]) not in (nn.Linear, nn.QuantizedLinear) or "bias" in parts[0]:
            return False

        def settings(m: nn.Module) -> tuple:
            quantization = tuple(getattr(m, name, None) for name in ("bits", "group_size", "mode"))
            return type(m), m.weight.dtype, "biases" in m, "bias" in m, quantization

        return all(settings(part) == settings(parts[0]) for part in parts)

    def current(self) -> "FusedLinear | None":
        # Item access, not attributes: nn.Module's __getattr__ is Python, and every layer of a prompt's pass asks.
        return self if all(p["weight"] is w for p, w in zip(self.parts, self.weights)) else None

    def __call__(self, x: mx.array) -> list[mx.array]:
        return mx.split(self.linear(x), self.splits, axis=-1)


def _fuse(module: nn.Module, attribute: str, parts: list[nn.Module], on: bool) -> None:
    """Keep (or drop) a FusedLinear of `parts` on `module`, outside its parameter tree."""
    fused = FusedLinear(parts) if on and FusedLinear.can_fuse(parts) else None
    object.__setattr__(module, attribute, fused)  # a plain attribute: parameters() and saving never see it


def _fused(module: nn.Module, attribute: str) -> FusedLinear | None:
    fused = module.__dict__.get(attribute)
    return None if fused is None else fused.current()


def fusion_state(llm) -> tuple:
    """Which fused projections the LLM's layers compute with now: a step compiled under another state
    holds the other weights as constants, so it must be traced again."""
    return tuple(
        id(_fused(module, attribute))
        for layer in llm.layers
        for module, attribute in ((layer.self_attn, "_qkv"), (layer.mlp, "_gate_up"))
    )


class Qwen3Attention(qwen3.Attention):
    """mlx-lm's Qwen3 attention, with q, k and v from one matmul once `fuse` has run (see FusedLinear)."""

    def fuse(self, on: bool = True) -> None:
        _fuse(self, "_qkv", [self.q_proj, self.k_proj, self.v_proj], on)
        if on:
            cuda_kernels.pack_quantized(self.o_proj)

    def fused_qkv(self) -> nn.Module | None:
        """The one layer that computes q, k and v side by side, if fused (FusedLinear)."""
        fused = _fused(self, "_qkv")
        return None if fused is None else fused.linear

    def qkv(self, x: mx.array) -> mx.array:
        """The q, k and v projections of x side by side on the last axis: one matmul once fused."""
        fused = self.fused_qkv()
        if fused is not None:
            return fused(x)
        return mx.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache=None) -> mx.array:
        fused = self.fused_qkv()
        if fused is None:
            return super().__call__(x, mask, cache)
        # As mlx_lm/models/qwen3.py:76-100 (mlx-lm 0.32.2), from the fused projection.
        batch, length, _ = x.shape
        qkv = fused(x)
        offset = 0 if cache is None else cache.offset
        if cuda_kernels.prompt_attention_fits(self, batch, length, offset, mask, x.dtype):  # one prompt, on CUDA
            heads = (self.q_norm, self.k_norm, self.rope, self.n_heads, self.n_kv_heads, self.scale)
            context, keys, values = cuda_kernels.prompt_attention(qkv, *heads)
            if cache is not None:
                cache.update_and_fetch(keys, values)  # kept for the steps after; the kernel has read them
            return self.o_proj(context)
        args = (qkv, self.q_norm, self.k_norm, self.rope, offset, self.n_heads, self.n_kv_heads)
        queries, keys = qk_norm_rope_ops(*args)
        values = value_heads(qkv, self.n_heads, self.n_kv_heads, self.rope.dims)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        output = qwen3.scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class Qwen3MLP(qwen3.MLP):
    """mlx-lm's Qwen3 MLP, with gate and up from one matmul once `fuse` has run (see FusedLinear)."""

    def fuse(self, on: bool = True) -> None:
        _fuse(self, "_gate_up", [self.gate_proj, self.up_proj], on)
        if on:
            cuda_kernels.pack_quantized(self.down_proj)

    def fused_gate_up(self) -> nn.Module | None:
        """The one layer that computes gate and up side by side, if fused (FusedLinear)."""
        fused = _fused(self, "_gate_up")
        return None if fused is None else fused.linear

    def __call__(self, x: mx.array) -> mx.array:
        gate_up = _fused(self, "_gate_up")
        if gate_up is None:
            return super().__call__(x)
        return self.down_proj(swiglu(*gate_up(x)))  # as mlx_lm/models/qwen3.py:111


class FunASRNano(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.audio_encoder = SenseVoiceEncoder(args.input_size, args.audio_encoder_conf)
        self.audio_adaptor = AudioAdaptor(args.audio_adaptor_conf)
        llm_args = args.llm_args()
        if llm_args.rope_scaling and llm_args.rope_scaling.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope_scaling for Fun-ASR-Nano: {llm_args.rope_scaling}")
        self.llm = qwen3.Model(llm_args)
        for layer in self.llm.layers:
            layer.self_attn = Qwen3Attention(llm_args)  # mlx-lm's, plus fusable projections
            layer.self_attn.rope = UpstreamRoPE(llm_args.head_dim, llm_args.rope_theta, args.llm_dtype)
            layer.mlp = Qwen3MLP(llm_args.hidden_size, llm_args.intermediate_size)
        if args.ctc_decoder_conf is not None:  # [F] fun_asr_nano/model.py:152-199
            self.ctc_decoder = AudioAdaptor(args.ctc_decoder_conf)
            self.ctc = CTC(args.ctc_decoder_conf.llm_dim, args.ctc_vocab_size)

    def fuse_projections(self, on: bool = True) -> None:
        """Compute each LLM layer's q/k/v and gate/up projections with one matmul each (FusedLinear), or
        (on=False) separately again; on, each quantized projection's (and the embedding's) arrays are also
        kept in one buffer for the CUDA kernels (cuda_kernels.pack_quantized). Layer by layer, so the
        concatenation adds one layer's weights at most."""
        for layer in self.llm.layers:
            layer.self_attn.fuse(on)
            layer.mlp.fuse(on)
            mx.eval(layer.parameters())  # the parts are views of the fused arrays from here on
        if on:
            cuda_kernels.pack_quantized(self.llm.model.embed_tokens)

    @property
    def has_ctc(self) -> bool:
        """Whether the model carries the CTC timestamp head."""
        return "ctc_decoder" in self

    def encode_both(self, feats: mx.array, lengths: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """As `encode`, and also the encoder output (B, T, D), which the CTC head reads."""
        if lengths is None:
            encoded = self.audio_encoder(feats)
            return encoded, self.audio_adaptor(encoded)
        encoded = self.audio_encoder(feats, frame_mask(lengths, feats.shape[1], feats.dtype))
        return encoded, self.audio_adaptor(encoded, lengths)

    def ctc_hidden(self, encoded: mx.array, lengths: mx.array | None = None) -> mx.array:
        """The CTC decoder over the encoder output ([F] fun_asr_nano/model.py:968-970), (B, T, dims):
        `ctc.log_softmax` of it gives the CTC log-probabilities."""
        return self.ctc_decoder(encoded, lengths)

    def encode(self, feats: mx.array, lengths: mx.array | None = None) -> mx.array:
        """LFR features (B, T, 560) -> adaptor output (B, ceil(T / downsample_rate), llm_dim).

        Upstream encodes one utterance at a time. For a padded batch pass the valid `lengths` (B,):
        padding is masked out of attention and the FSMN memory, so each row's valid frames are those
        of encoding it alone; row i's output is valid up to `audio_adaptor.output_lengths(lengths)[i]`.
        """
        if lengths is None:
            return self.audio_adaptor(self.audio_encoder(feats))
        encoded = self.audio_encoder(feats, frame_mask(lengths, feats.shape[1], feats.dtype))
        return self.audio_adaptor(encoded, lengths)

    def num_audio_tokens(self, num_lfr_frames: int) -> int:
        """How many adaptor frames the prompt takes ([F] fun_asr_nano/model.py:569-574).

        With use_low_frame_rate the reference reserves the output length of three stride-2
        convolutions, ceil(T / 8), and copies only the first that many adaptor frames.
        """
        if not self.args.audio_adaptor_conf.use_low_frame_rate:
            return num_lfr_frames
        length = 1 + (num_lfr_frames - 3 + 2) // 2
        length = 1 + (length - 3 + 2) // 2
        return (length - 1) // 2 + 1

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Every fix from upstream keys/layouts to this module, idempotent.

        - FSMN conv weights: PyTorch (C, 1, K) -> MLX (C, K, 1).
        - With tied embeddings (Qwen3-0.6B's config), `llm.lm_head.weight` is folded into the
          embeddings: upstream loads both keys into the one shared Parameter and the head, loaded
          last, wins. The stored head equals the embeddings in the released checkpoints.
        - CTC-head tensors (timestamps only, absent from the HF copy) are dropped unless the model has
          the CTC head.
        - A DDP `module.` prefix is removed, as the reference's loader does.

        Weights of a dtype the model cannot compute in are refused (`check_weight_dtypes`).
        """
        weights = {key.removeprefix("module."): value for key, value in weights.items()}
        check_weight_dtypes(weights)
        if self.args.llm_args().tie_word_embeddings and LM_HEAD in weights:
            weights[EMBEDDINGS] = weights.pop(LM_HEAD)
        out = {}
        for key, value in weights.items():
            if key.startswith(CTC_PREFIXES) and not self.has_ctc:
                continue
            if key.endswith("fsmn_block.weight") and value.ndim == 3 and value.shape[1] == 1:
                value = value.transpose(0, 2, 1)
            out[key] = value
        return out


def _packed_dtype_ok(key: str, dtype: mx.Dtype, weights: dict[str, mx.array]) -> bool:
    """Whether `key` is part of a quantized layer as MLX stores one (nn.QuantizedLinear, nn.QuantizedEmbedding):
    its weight packed into uint32 words beside a `scales` array, and in the mxfp4, mxfp8 and nvfp4 modes the
    scales themselves 8-bit floats kept as uint8 (mlx-lm tells the modes apart by that: mlx_lm/utils.py:392-394)."""
    layer, _, name = key.rpartition(".")
    if name == "weight" and dtype == mx.uint32:
        return f"{layer}.scales" in weights
    if name == "scales" and dtype == mx.uint8:
        weight = weights.get(f"{layer}.weight")
        return weight is not None and weight.dtype == mx.uint32
    return False


def check_weight_dtypes(weights: dict[str, mx.array]) -> None:
    """Refuse weights of a dtype the layers cannot compute in (ValueError, which loading reports in one line):
    int32 norm weights, say, load and fail only at the first audio, inside an MLX kernel. Floating-point
    weights pass, and a quantized layer's packed weight and 8-bit scales (`_packed_dtype_ok`)."""
    for key, value in weights.items():
        if not mx.issubdtype(value.dtype, mx.floating) and not _packed_dtype_ok(key, value.dtype, weights):
            dtype = str(value.dtype).removeprefix("mlx.core.")
            raise ValueError(
                f"{key} holds {dtype} weights: expected floating point (or a quantized layer's uint32 packed weight)"
            )


def model_classes(config: dict) -> tuple[type, type]:
    """How this model plugs into mlx-lm's loader (`load_model(..., get_model_classes=model_classes)`)."""
    return FunASRNano, ModelArgs
