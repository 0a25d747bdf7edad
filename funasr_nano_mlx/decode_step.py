"""Greedy decode steps over a preallocated KV cache, one compiled function per batch shape.

mlx-lm's caches grow in steps of 256 positions and slice by the current length, so every step has new
shapes and cannot be compiled; each token then pays Python and MLX's per-op cost for ~500 operations,
while a bf16 0.6B model reads its 1.2 GB of weights in ~0.4 ms on an H100 (a step took 3.1-7 ms on
the lent H100/H200 hosts). Here the prompt's keys and values, once prefilled by mlx-lm's model (one clip's
prompt without its cache's writes, `prefill_one`), go into buffers that grow in steps of
`CAPACITY_STEP`, and each step writes its slot with a dynamic `slice_update`. Shapes change only when the
buffers grow, so a step is one compiled graph (`mx.compile`), replayed without Python.

Attention must skip the slots not written yet (and each row's left padding). Where the CUDA kernels
fit (`kernels_fit`: a CUDA GPU, bf16 activations), one kernel reads just the valid slots
(`cuda_kernels.decode_attention`) and another does the q/k RMSNorms and RoPE; for a single clip one
kernel does both (`cuda_kernels.step_attention`), and a single clip takes this step too, each layer in
5 kernels (`projections_fit`, `_layer_in_kernels`): faster than mlx-lm's
cache, for one clip and for batches (BENCHMARKS.md). Elsewhere the attention reads the buffers up to a
window that grows in steps of `WINDOW_STEP`, with a mask; MLX's attention kernel for one query takes no
array mask and falls back to separate matmul and softmax kernels, which cost a single row more than
compiling saves, so there one row keeps mlx-lm's cache (`make_decoder`) and only batches, which need a
mask anyway, take this step.

Writes. Each layer's keys and values are one buffer, written with this step's before its attention reads
it. For one clip on CUDA every layer's are one buffer, written once a step after the last layer (the
kernel reads the step's key and value beside it): a dynamic write costs MLX a kernel that computes the
offset and a copy that reads it, about 12 us on an H100: 56 of them were a third of one clip's step.
That write is in place only once the GPU has finished the step before's attention kernels, which read the
buffer (MLX keeps a kernel's inputs until it completes), and the next step is queued before: in a profile
MLX copied the whole buffer in 15 of 16 steps, about 18 us for one clip's 29 MB at 256 slots. So one
kernel copies it with the step's slot written (`cuda_kernels.write_step_kv`), where stacking the layers'
keys and values and MLX's write took 30 kernels. A batch's buffer is that many times larger, so batches
keep a write per layer: in GPU profiles of one clip with writes per layer, no step copied a buffer
(batches in this form are not measured yet).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import BatchKVCache, KVCache

from . import cuda_kernels
from .model import fusion_state, use_compile

WINDOW_STEP = 128  # the attention reads the buffers up to the next multiple of this: few shapes, little waste
CAPACITY_STEP = 256  # buffers grow by this many slots, so that utterances share compiled shapes


class _StepCache:
    """One layer's buffer during a step: this step's key and value, attention over the slots written so far
    and this step's (minus each row's left padding)."""

    def __init__(self, buffer, slot, offsets, left_padding, window: int, kernels: bool, one_write: bool):
        self.buffer = buffer  # (2, B, kv_heads, capacity, head_dim): keys, then values
        self.slot = slot  # (1,) int32: where this step's key and value go; the same for every row
        self.offset = offsets  # (B,) each row's RoPE position of this step's token
        self.left_padding = left_padding
        self.window = window  # how far the masked attention reads (the kernel reads just the valid slots)
        self.kernels = kernels  # whether the CUDA kernels compute this step (`kernels_fit`)
        self.one_write = one_write  # whether `_greedy_step` writes every layer's buffer at once, after the last
        self.step_kv = None  # (2, B, kv_heads, 1, head_dim): this step's key and value, once computed

    def add(self, step_kv: mx.array) -> None:
        """This step's key and value: written to the buffer now, unless `_greedy_step` writes every layer's
        at once (then only the kernel reads them, beside the buffer: it reads the newest slot there)."""
        self.step_kv = step_kv
        if not self.one_write:
            self.buffer = mx.slice_update(self.buffer, step_kv, self.slot, axes=(3,))

    def attend(self, queries: mx.array, scale: float) -> mx.array:
        """(B, heads, 1, head_dim) queries over the valid slots: one kernel on CUDA; elsewhere MLX's
        attention over the buffer up to `window`, with a mask."""
        if self.kernels:
            return cuda_kernels.decode_attention(
                queries, self.buffer, self.step_kv, self.left_padding, self.slot, scale
            )
        keys, values = self.buffer[..., : self.window, :]
        return cuda_kernels.masked_attention(queries, keys, values, self.left_padding, self.slot, scale)


def kernels_fit(llm, dtype: mx.Dtype) -> bool:
    """Whether the CUDA kernels compute the steps of this LLM with activations of this dtype."""
    return cuda_kernels.enabled(dtype) and cuda_kernels.heads_fit(llm.layers[0].self_attn)


def projection_calls(llm) -> list[tuple] | None:
    """Every projection kernel call of `_layer_in_kernels` over the LLM's layers, as (mode, layer, input
    length, RMSNorm or None); None unless each layer's q/k/v and gate/up projections are fused."""
    hidden_size, calls = llm.args.hidden_size, []
    for layer in llm.layers:
        attention, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = attention.fused_qkv(), mlp.fused_gate_up()
        if qkv is None or gate_up is None:
            return None
        calls += [
            ("norm_project", qkv, hidden_size, layer.input_layernorm),
            ("project_add", attention.o_proj, attention.n_heads * attention.rope.dims, None),
            ("norm_swiglu", gate_up, hidden_size, layer.post_attention_layernorm),
            ("project_add", mlp.down_proj, llm.args.intermediate_size, None),
        ]
    return calls


def projections_fit(llm, rows: int, dtype: mx.Dtype) -> bool:
    """Whether the projection kernels (`cuda_kernels.norm_project` and its kin) compute the layers of this
    LLM's step: one row, where the attention kernels run too, with each layer's q/k/v and gate/up
    projections fused and every projection of a shape the kernels take (`cuda_kernels.projection_shape`)."""
    if rows != 1 or not kernels_fit(llm, dtype):
        return False
    calls = projection_calls(llm)
    return calls is not None and all(cuda_kernels.projection_shape(*call, dtype) for call in calls)


def _layer_in_kernels(layer, hidden: mx.array, cache: _StepCache) -> mx.array:
    """One decoder layer for one row, 5 kernels instead of 11: each RMSNorm inside the projection that
    reads it, each residual add inside the projection it adds, swiglu inside gate/up, the q/k norms and
    RoPE inside the attention (cuda_kernels: the same numbers as `_attention` and mlx-lm's MLP)."""
    attention = layer.self_attn
    qkv = cuda_kernels.norm_project(hidden, layer.input_layernorm, attention.fused_qkv())
    output = _attend(attention, qkv, cache).reshape(1, 1, -1)  # one row: (1, heads, 1, D) is (1, 1, heads D)
    hidden = cuda_kernels.project_add(output, attention.o_proj, hidden)
    act = cuda_kernels.norm_swiglu(hidden, layer.post_attention_layernorm, layer.mlp.fused_gate_up())
    return cuda_kernels.project_add(act, layer.mlp.down_proj, hidden)


def _attend(attention, qkv: mx.array, cache: _StepCache) -> mx.array:
    """From the fused q/k/v projection: the q/k norms and RoPE, this step's key and value added to the
    cache, attention over it: (B, heads, 1, head_dim).

    Where the buffer is written once after the last layer, one kernel does it all (`step_attention`). Where
    each layer writes its buffer, the write must come before the attention reads the buffer: a kernel that
    read the buffer before its write would leave MLX two readers of it, and the write would copy it."""
    heads = (attention.q_norm, attention.k_norm, attention.rope, cache.offset)
    counts = (attention.n_heads, attention.n_kv_heads)
    if cache.kernels and cache.one_write:
        slots = (cache.buffer, cache.left_padding, cache.slot)
        context, step_kv = cuda_kernels.step_attention(qkv, *heads, *slots, *counts, attention.scale)
        cache.add(step_kv)
        return context
    step_heads = cuda_kernels.step_heads if cache.kernels else cuda_kernels.step_heads_ops
    queries, step_kv = step_heads(qkv, *heads, *counts)
    cache.add(step_kv)
    return cache.attend(queries, attention.scale)


def _attention(attention, x: mx.array, cache: _StepCache) -> mx.array:
    """mlx-lm's Qwen3 attention (mlx_lm/models/qwen3.py:70-100) for one token per row over `cache`."""
    output = _attend(attention, attention.qkv(x), cache)
    return attention.o_proj(output.transpose(0, 2, 1, 3).reshape(x.shape[0], 1, -1))


def _step_logits(llm, tokens: mx.array, caches: list[_StepCache], projections: bool) -> mx.array:
    """mlx-lm's Qwen3 forward (mlx_lm/models/qwen3.py:120-187) for one token per row over the step's caches,
    each layer in the projection kernels if `projections` (`projections_fit`)."""
    model = llm.model
    if projections and cuda_kernels.embedding_fits(model.embed_tokens, caches[0].buffer.dtype):
        hidden = cuda_kernels.embed_affine(tokens, model.embed_tokens)  # a 4-bit embedding's rows in one kernel
    else:
        hidden = model.embed_tokens(tokens[:, None])
    for layer, cache in zip(model.layers, caches):
        if projections:
            hidden = _layer_in_kernels(layer, hidden, cache)
            continue
        hidden = hidden + _attention(layer.self_attn, layer.input_layernorm(hidden), cache)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return output_head(llm)(model.norm(hidden))[:, -1]


def output_head(llm):
    """The LLM's projection to the vocabulary: the embeddings, transposed, when tied (Qwen3-0.6B), else lm_head."""
    return llm.model.embed_tokens.as_linear if llm.args.tie_word_embeddings else llm.lm_head


def _greedy_step(llm, tokens, buffers, counters, left_padding, window: int, kernels: bool, projections: bool):
    """One token per row: (B,) tokens in, (B,) argmax tokens out, the buffers with this step written and
    the counters advanced (`StaticDecoder`: the buffers; the slot, then each row's position;
    `left_padding`, the rows' first). `window`, `kernels` and `projections` are constants of the trace
    (a new value traces again)."""
    rows = tokens.shape[0]
    slot, offsets, first = counters[:1], counters[1 : 1 + rows], left_padding[:rows]
    one_write = buffers[0].ndim == 6  # every layer's in one buffer (`StaticDecoder`)
    layers = list(buffers[0]) if one_write else buffers
    caches = [_StepCache(layer, slot, offsets, first, window, kernels, one_write) for layer in layers]
    logits = _step_logits(llm, tokens, caches, projections)
    if one_write:  # every layer's key and value in one write (see the module's docstring)
        buffers = [cuda_kernels.write_step_kv(buffers[0], [c.step_kv for c in caches], slot)]
    else:
        buffers = [c.buffer for c in caches]
    return mx.argmax(logits, axis=-1), buffers, counters + 1


def _compiled_step(llm):
    """`_greedy_step` compiled for this model, kept on it (MLX's compile cache is keyed by the function).

    The weights are closed over, so the trace holds them as constants: passing them as inputs cost
    0.6 ms per call for a 4-bit model's 900 arrays (measured on the development CPU), more than the
    step's arithmetic on a GPU. The trace is made again if any weight array was replaced, or the
    projections fused or unfused (`FunASRNano.fuse_projections`), since.
    """
    weights = tuple(id(array) for _, array in tree_flatten(llm.parameters())) + fusion_state(llm)
    cached = llm.__dict__.get("_greedy_step")
    if cached is None or cached[0] != weights:
        cached = (weights, mx.compile(partial(_greedy_step, llm)))
        object.__setattr__(llm, "_greedy_step", cached)  # a plain attribute: not part of the module tree
    return cached[1]


class _PromptKeys:
    """Stands in for mlx-lm's cache in one layer during a prompt's pass from position 0: it keeps the layer's
    keys and values, which attention over the prompt reads as they are. mlx-lm's KVCache would first write
    them into a buffer of zeros, two kernels a layer a tensor (114 of a pass's 621 kernels on an H100)."""

    offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys, self.values = keys, values
        return keys, values


def prefill_one(llm, embeddings: mx.array) -> tuple[list[KVCache], mx.array]:
    """One prompt, embeddings (L, D), through mlx-lm's model: mlx-lm's caches holding its keys and values as
    mlx-lm's own prefill leaves them (capacity the next multiple of KVCache's step, zeros past L), and the
    (lazy) first token. Every layer's keys and values are stacked and padded at once, into one array whose
    views the caches hold: three kernels in all instead of four a layer.

    Not compiled: a compiled pass gave the same kernels on an H100 (the saving is the cache writes), and
    tracing it took 16-21 ms at each new prompt length on the development CPU, which nearly every clip has.
    Submitted at the end, not in parts as the encoder is (model.ENCODER_PIPELINE_LAYERS): every 1 to 7 layers it
    took 6.5-7.5 ms for a 10 s clip's prompt on an H100, against 6.1.
    """
    length = embeddings.shape[0]
    caches = [_PromptKeys() for _ in llm.layers]
    hidden = llm.model(mx.zeros((1, length), mx.int32), cache=caches, input_embeddings=embeddings[None])
    token = mx.argmax(output_head(llm)(hidden[:, -1:])[:, -1], axis=-1)
    keys_values = mx.stack([part for c in caches for part in (c.keys, c.values)])
    return prompt_caches(keys_values.reshape(len(caches), 2, *keys_values.shape[1:])), token


def prompt_caches(keys_values: mx.array) -> list[KVCache]:
    """A prompt's keys and values, keys_values (layers, 2, 1, HKV, L, D), as mlx-lm's caches hold them after its
    own prefill (capacity the next multiple of KVCache's step, zeros past L): padded at once, each cache
    holding views of the one padded array."""
    length = keys_values.shape[-2]
    capacity = -(-length // KVCache.step) * KVCache.step
    keys_values = mx.pad(keys_values, [(0, 0)] * 4 + [(0, capacity - length), (0, 0)])
    prefilled = []
    for layer in keys_values:  # iterating splits an array into views; an integer index would gather
        cache = KVCache()
        cache.keys, cache.values = layer
        cache.offset = length
        prefilled.append(cache)
    return prefilled


def _device_ints(*parts: mx.array) -> mx.array:
    """The int32 `parts` end to end, padded to 4 entries and made by a device op: MLX keeps an array of 8
    bytes or less, and one made from host data, in CUDA managed memory (mlx/backend/cuda/allocator.cpp,
    small_block_size), which a kernel reads across the host link, and allocates a device op's larger
    output in device memory (unless it reuses a cached buffer of the same size, which may be managed).
    In a GPU profile the step's kernels that read such scalars took several times their work; whether
    this cures it is not measured yet (BENCHMARKS.md)."""
    count = sum(part.size for part in parts)
    padding = mx.zeros((max(0, 4 - count),), mx.int32)
    return mx.concatenate([*(part.astype(mx.int32) for part in parts), padding])


class StaticDecoder:
    """Greedy decoding state after a prefill: buffers, the next slot, each row's position and padding."""

    def __init__(self, llm, prefilled: list, left_padding: list[int]):
        self.run = _compiled_step(llm) if use_compile() else partial(_greedy_step, llm)
        first = prefilled[0]
        self.kernels = kernels_fit(llm, first.keys.dtype)
        self.projections = projections_fit(llm, len(left_padding), first.keys.dtype)
        # mlx-lm's buffers, copied once into ours: it allocates them in steps of 256 slots
        # (mlx_lm/models/cache.py, KVCache.update_and_fetch), zeros past the filled ones, which attention
        # never reads. Each layer's keys and values are one (2, B, kv_heads, capacity, head_dim) array;
        # for one clip on CUDA all layers' are one array, written once a step (see the module's docstring).
        # The caller drops the caches (transcribe.greedy_batch does), so that the writes can be in place.
        if self.kernels and len(left_padding) == 1:
            parts = [part for cache in prefilled for part in (cache.keys, cache.values)]
            self.buffers = [mx.stack(parts).reshape(len(prefilled), 2, *first.keys.shape)]
        else:
            self.buffers = [mx.stack([cache.keys, cache.values]) for cache in prefilled]
        # BatchKVCache counts its filled slots in _idx (its offsets are per row), KVCache in offset.
        self.index = first._idx if isinstance(first, BatchKVCache) else first.offset  # the next slot to write
        self.capacity = first.keys.shape[2]
        padding = mx.array(left_padding, mx.int32)
        self.counters = _device_ints(mx.array([self.index]), self.index - padding)  # the slot, each row's position
        self.left_padding = _device_ints(padding)  # its first entries: each row's first slot

    def _grow(self) -> None:
        """Room for CAPACITY_STEP more slots: grown as used, so rows that stop early never pay for
        their budget (32 rows x 768 slots would hold 2.8 GB in bf16)."""
        capacity = (self.index // CAPACITY_STEP + 1) * CAPACITY_STEP
        pad = [(0, 0)] * (self.buffers[0].ndim - 2) + [(0, capacity - self.capacity), (0, 0)]
        self.buffers = [mx.pad(buffer, pad) for buffer in self.buffers]
        self.capacity = capacity

    def step(self, tokens: mx.array) -> mx.array:
        """Queue one step; returns the (lazy) next tokens."""
        if self.index >= self.capacity:
            self._grow()
        window = min(self.capacity, -(-(self.index + 1) // WINDOW_STEP) * WINDOW_STEP)
        if self.kernels:
            window = self.capacity  # unused by the kernel: one trace per capacity, not per window
        args = (tokens, self.buffers, self.counters, self.left_padding, window, self.kernels, self.projections)
        # Rebinding drops the last references to the old buffers, so the update can reuse them.
        next_tokens, self.buffers, self.counters = self.run(*args)
        self.index += 1
        return next_tokens

    def filter(self, rows: mx.array) -> None:
        """Keep only these rows of the batch."""
        count = self.buffers[0].shape[-4]
        self.buffers = [mx.take(buffer, rows, axis=-4) for buffer in self.buffers]
        self.counters = _device_ints(self.counters[:1], self.counters[1 : 1 + count][rows])
        self.left_padding = _device_ints(self.left_padding[:count][rows])


class CacheDecoder:
    """One row: mlx-lm's own cache and model call per step, uncompiled (see the module's docstring)."""

    def __init__(self, llm, prefilled: list):
        self.llm, self.cache = llm, prefilled

    def step(self, tokens: mx.array) -> mx.array:
        return mx.argmax(self.llm(tokens[:, None], cache=self.cache)[:, -1], axis=-1)


def make_decoder(llm, prefilled: list, left_padding: list[int]):
    """The faster decoder for this batch: `StaticDecoder`, except for one row where the CUDA kernels are
    off (its masked attention then costs more than compiling saves: see the module's docstring)."""
    if len(left_padding) == 1 and not (use_compile() and kernels_fit(llm, prefilled[0].keys.dtype)):
        return CacheDecoder(llm, prefilled)
    return StaticDecoder(llm, prefilled, left_padding)
