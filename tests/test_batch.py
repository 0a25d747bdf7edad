"""Batched decoding: padded encoder batches and how often the encoder is evaluated, left-padded LLM
batches, budgets, the repetition guard, and memory on a 20-minute recording."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from funasr_nano_mlx import model as model_module
from funasr_nano_mlx.audio import features
from funasr_nano_mlx.decoding import DEFAULT_MAX_NEW_TOKENS, loop_end, token_budget
from funasr_nano_mlx.model import EncoderArgs, encoder_layers_per_eval, sanm_layer_bytes
from funasr_nano_mlx.transcribe import Decoded, transcribe, transcribe_many
from tests.helpers import ENCODER_KERNELS, clip, cuda_kernel_twins, transcribe_module

TEN_LENGTHS_S = [0.4, 1.0, 1.7, 2.5, 3.2, 4.0, 5.5, 7.0, 9.0, 12.0]


@pytest.fixture(scope="module")
def ten_files(speech):
    """Ten clips of different lengths, each starting at a different point of the speech."""
    return [np.roll(clip(speech, 12.0), -4000 * i)[: int(s * 16000)] for i, s in enumerate(TEN_LENGTHS_S)]


def padded_batch(feats: list[np.ndarray]) -> tuple[mx.array, mx.array]:
    """Features of different lengths as one zero-padded (B, T, 560) batch, and their lengths."""
    padded = np.zeros((len(feats), max(len(f) for f in feats), feats[0].shape[1]), np.float32)
    for row, f in enumerate(feats):
        padded[row, : len(f)] = f
    return mx.array(padded), mx.array([len(f) for f in feats])


def test_padded_encoder_batch_matches_one_at_a_time(tiny_model, ten_files):
    model, _ = tiny_model
    feats = [features(x) for x in ten_files]
    batch, lengths = padded_batch(feats)
    batched = model.encode(batch, lengths)
    valid = model.audio_adaptor.output_lengths(lengths).tolist()
    for row, f in enumerate(feats):
        alone = np.array(model.encode(mx.array(f)[None])[0])
        together = np.array(batched[row, : valid[row]])
        assert together.shape == alone.shape
        # Padding is masked, so only float rounding differs (GEMM blocking over a different row count).
        assert np.abs(together - alone).max() <= 1e-5 * np.abs(alone).max()


def test_one_clip_is_one_encoder_graph_and_a_large_batch_is_sliced():
    """The full-size encoder's cadence: one clip of 10 s or 60 s is submitted whole (the encoder is
    host-bound there, and every evaluation idles the GPU); 32 x 30 s in slices smaller than the fixed 10
    layers of earlier builds (whose batch-32 peak was accepted); 300 s in slices, the attention scores
    growing with the square of the length. The estimate reproduces the measurement it was calibrated on."""
    from tests.reference import FULL

    full = EncoderArgs.from_dict(FULL["encoder"])
    depth = full.num_blocks + full.tp_blocks
    frames = {seconds: round(seconds * 100 / 6) for seconds in (10, 30, 60, 300)}  # LFR: 6 frames of 10 ms
    assert encoder_layers_per_eval(1, frames[10], full) >= depth
    assert encoder_layers_per_eval(1, frames[60], full) >= depth
    assert encoder_layers_per_eval(16, frames[30], full) < depth
    assert 1 <= encoder_layers_per_eval(32, frames[30], full) < 10
    assert encoder_layers_per_eval(1, frames[300], full) < depth
    assert encoder_layers_per_eval(32, frames[300], full) == 1
    assert depth * sanm_layer_bytes(16, frames[30], full) == pytest.approx(6.9 * 2**30, rel=0.01)


def test_encoder_slices_change_no_number(tiny_model, ten_files, monkeypatch):
    """A padded batch encoded one layer per evaluation (a budget of one byte) and as one graph (a budget
    nothing reaches): identical numbers, and the evaluations did happen in the first and not the second."""
    model, _ = tiny_model
    batch, lengths = padded_batch([features(x) for x in ten_files])
    encoder = model.audio_encoder
    depth = len(encoder.encoders0) + len(encoder.encoders) + len(encoder.tp_encoders)
    evaluations, evaluate = [], mx.eval
    monkeypatch.setattr(mx, "eval", lambda *arrays: evaluations.append(len(arrays)) or evaluate(*arrays))
    outputs, counts = {}, {}
    for budget in (1, 2**62):
        monkeypatch.setattr(model_module, "ENCODER_EVAL_BUDGET", budget)
        evaluations.clear()
        outputs[budget] = np.array(model.encode(batch, lengths))
        counts[budget] = len(evaluations)
    assert counts == {1: depth - 1, 2**62: 0}
    np.testing.assert_array_equal(outputs[1], outputs[2**62])


def test_submitting_layers_as_they_are_built_changes_no_number(tiny_model, ten_files, monkeypatch):
    """One clip's encoder submitted every layer without waiting (`mx.async_eval`, so that the device runs them
    while the host builds the next) and only at the end: identical output, and the submissions did happen in
    the first and not the second."""
    model, _ = tiny_model
    feats = mx.array(features(ten_files[2]))[None]
    encoder = model.audio_encoder
    depth = len(encoder.encoders0) + len(encoder.encoders) + len(encoder.tp_encoders)
    submissions, submit = [], mx.async_eval
    monkeypatch.setattr(mx, "async_eval", lambda *arrays: submissions.append(len(arrays)) or submit(*arrays))
    outputs, counts = {}, {}
    for every in (1, 0):
        monkeypatch.setattr(model_module, "ENCODER_PIPELINE_LAYERS", every)
        submissions.clear()
        outputs[every] = np.array(model.encode(feats))
        counts[every] = len(submissions)
    assert counts == {1: depth - 1, 0: 0}  # before every layer but the first
    np.testing.assert_array_equal(outputs[1], outputs[0])


@pytest.mark.parametrize("batch_size", [3, 10])
def test_batched_tokens_equal_one_at_a_time(tiny_model, ten_files, batch_size):
    model, tokenizer = tiny_model
    alone = [transcribe(model, tokenizer, x) for x in ten_files]
    together = list(transcribe_many(model, tokenizer, ten_files, batch_size=batch_size))
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.hit_token_limit for r in together] == [r.hit_token_limit for r in alone]
    # Random weights never stop: every file ran to its duration-scaled budget, and all differ.
    assert [len(r.token_ids) for r in alone] == [token_budget(s) for s in TEN_LENGTHS_S]
    assert len({tuple(r.token_ids) for r in alone}) == len(alone)


def test_token_budget_scales_with_duration():
    assert token_budget(1.0) == 48 and token_budget(10.0) == 192
    assert token_budget(30.0) == DEFAULT_MAX_NEW_TOKENS == token_budget(600.0)
    assert token_budget(30.0, max_new_tokens=7) == 7


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([5] * 31, None),  # 31 copies of one token: under LOOP_MIN_TOKENS
        ([1, 2] + [5] * 32, 3),  # one token looping: keep one copy
        ([9] + [1, 2, 3] * 11, 4),  # a 3-gram, 33 tokens: keep "9 1 2 3"
        ([7, 1, 2, 3] + [4, 5, 6, 7, 8, 9, 10, 11, 12, 13] * 4, 14),  # a 10-gram 4 times
        ([4, 5, 6, 7, 8, 9, 10, 11, 12, 13] * 3, None),  # 3 copies of a long phrase is not a loop yet
        (list(range(100)), None),
    ],
)
def test_loop_detection(tokens, expected):
    assert loop_end(tokens) == expected


def test_decoded_flags():
    stops = {0}
    looping = Decoded(budget=100)
    assert not any(looping.add(t, stops, stop_loops=True) for t in [3, 4] + [8] * 31)
    assert looping.add(8, stops, stop_loops=True) and looping.repetition and looping.token_ids == [3, 4, 8]
    unguarded = Decoded(budget=40)
    finished = [unguarded.add(8, stops, stop_loops=False) for _ in range(40)]
    assert finished == [False] * 39 + [True] and unguarded.hit_token_limit and not unguarded.repetition
    stopped = Decoded(budget=5)
    assert not stopped.add(3, stops, True) and stopped.add(0, stops, True)
    assert stopped.stop_token == 0 and stopped.token_ids == [3] and not stopped.hit_token_limit


MEMORY_PROBE = """
import json, sys, tempfile
from pathlib import Path
import numpy as np
from funasr_nano_mlx import load
from funasr_nano_mlx.transcribe import transcribe
from tests.speech import recording

def status_mb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

minutes = float(sys.argv[2])
with tempfile.TemporaryDirectory() as folder:
    three, _ = recording(180.0, folder)
samples = np.resize(three, int(minutes * 60 * 16000))
model, tokenizer = load(sys.argv[1])
before = status_mb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
result = transcribe(model, tokenizer, samples, max_new_tokens=4)
print(json.dumps({"segments": len(result.segments), "before_mb": before, "peak_mb": status_mb("VmHWM")}))
"""


def test_twenty_minutes_in_bounded_memory(tiny_f32):
    """A 20-minute recording is read whole (77 MB of samples) but decoded a few batches at a time:
    peak memory must not grow with its length beyond the samples themselves."""
    runs = {}
    for minutes in (2, 20):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(tiny_f32), str(minutes)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        runs[minutes] = json.loads(out.stdout.strip().splitlines()[-1])
    print(runs)
    assert runs[20]["segments"] > 9 * runs[2]["segments"]
    growth = {minutes: run["peak_mb"] - run["before_mb"] for minutes, run in runs.items()}
    # Decoding holds one batch of segments at a time, whatever the length, and segmenting reads the
    # samples without copying them. Measured (2 cores, tiny model): +11 MB for 2 min, +18 MB for 20 min.
    assert growth[20] - growth[2] < 50, f"transcription peak grew {growth[2]:.0f} -> {growth[20]:.0f} MB"


def official_batched_tokens(reference, waves: list[np.ndarray], max_new_tokens: int) -> list[list[int]]:
    """Token ids from the official batched path (`_inference_llm_batch`: left-padded llm.generate),
    which FunASRNano.inference takes for more than one input."""
    import torch

    llm, captured = reference.model.llm, []
    original = llm.generate

    def generate(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    llm.generate = generate
    try:
        with torch.no_grad():
            reference.model.inference(
                data_in=[torch.from_numpy(w.copy()) for w in waves],
                key=[f"clip{i}" for i in range(len(waves))],
                tokenizer=reference.tokenizer,
                frontend=reference.frontend,
                **reference._run_kwargs(max_length=max_new_tokens),
            )
    finally:
        del llm.generate
    (ids,) = captured
    return ids.tolist()


def test_batched_tokens_equal_the_official_batched_path(tiny_model, reference, ten_files):
    """Ours in one batch against upstream's own batched decoding of the same ten clips: same tokens
    (random weights never stop, so no row is padded after its end)."""
    model, tokenizer = tiny_model
    official = official_batched_tokens(reference, ten_files, max_new_tokens=24)
    ours = transcribe_many(
        model, tokenizer, ten_files, max_new_tokens=24, segmenter=None, stop_loops=False, batch_size=len(ten_files)
    )
    assert [r.token_ids for r in ours] == official


def test_the_decoding_rate_leaves_out_making_the_decoder():
    """ms per token is the steps' rate: the decoder's setup (its compiled step's lookup, buffers) is in the
    decode stage's time but not in its rate, which a few tokens would otherwise inflate."""
    from funasr_nano_mlx.transcribe import add_timings

    total: dict = {}
    add_timings(total, {"decode": 0.010, "decode_setup": 0.002, "decode_steps": 4}, 1.0)
    assert total["decode"] == pytest.approx(0.010)
    assert total["decode_ms_per_token"] == pytest.approx(2.0)


def test_a_short_clip_in_a_batch_reports_the_batch_decoding_rate(tiny_model, ten_files):
    """Timings are shared by audio length, but ms per token is a rate: every clip of one batch has
    the batch's (a 0.4 s clip beside a 12 s one once reported a fraction of it)."""
    model, tokenizer = tiny_model
    short, long = list(transcribe_many(model, tokenizer, [ten_files[0], ten_files[-1]], batch_size=2))
    assert short.timings["decode_ms_per_token"] == pytest.approx(long.timings["decode_ms_per_token"])
    assert short.timings["decode"] < long.timings["decode"]  # the shares of the batch's time


def test_a_bad_input_stops_after_the_results_before_it(tiny_model, ten_files):
    """A too-short array among many: the results read before it are still returned, then one clear error
    naming it; it is found when read, not after the rest of its group has been decoded."""
    from funasr_nano_mlx.errors import UserError

    model, tokenizer = tiny_model
    inputs = [ten_files[1], ten_files[2], np.zeros(100, np.float32), ten_files[3]]
    results = transcribe_many(model, tokenizer, inputs, max_new_tokens=2, batch_size=4)
    assert [len(next(results).token_ids) for _ in range(2)] == [2, 2]
    with pytest.raises(UserError, match=r"<array 2> is 6.2 ms long"):
        next(results)


def test_compiled_paths_give_the_same_numbers(tiny_model, ten_files, monkeypatch):
    """What a GPU runs by default (mx.compile of encoder/adaptor layers and of batched decode steps),
    forced on here: encoder output identical, tokens identical."""
    model, tokenizer = tiny_model
    feats = mx.array(features(ten_files[-1]))[None]
    plain = np.array(model.encode(feats))
    plain_tokens = [r.token_ids for r in transcribe_many(model, tokenizer, ten_files[:4], batch_size=4)]
    monkeypatch.setenv("FUNASR_NANO_COMPILE", "1")
    np.testing.assert_array_equal(np.array(model.encode(feats)), plain)
    compiled = [r.token_ids for r in transcribe_many(model, tokenizer, ten_files[:4], batch_size=4)]
    assert compiled == plain_tokens


def test_compiled_layers_compute_with_weights_replaced_after_a_pass(tiny_f32, ten_files, monkeypatch):
    """Compiled layers keep each layer's parameters between passes (`model.layer_parameters`): a weight replaced
    afterwards, by assignment or `update`, is what the next pass computes with (the same output as the
    uncompiled model's), and a layer quantized afterwards runs as it is."""
    import mlx.nn as nn

    from funasr_nano_mlx import load
    from funasr_nano_mlx.model import AdaptorBlock, run_layer

    model, _ = load(tiny_f32)
    feats = mx.array(features(ten_files[-1]))[None]
    monkeypatch.setenv("FUNASR_NANO_COMPILE", "1")
    before = np.array(model.encode(feats))
    attention = model.audio_encoder.encoders[0].self_attn
    attention.linear_out.weight = attention.linear_out.weight * 2
    last_ffn = model.audio_encoder.tp_encoders[-1].feed_forward
    model.audio_encoder.tp_encoders[-1].update({"feed_forward": {"w_2": {"bias": last_ffn.w_2.bias + 0.5}}})
    compiled = np.array(model.encode(feats))
    monkeypatch.setenv("FUNASR_NANO_COMPILE", "0")
    assert not np.array_equal(compiled, before)
    np.testing.assert_array_equal(compiled, np.array(model.encode(feats)))

    monkeypatch.setenv("FUNASR_NANO_COMPILE", "1")
    block, x = AdaptorBlock(256, 4), mx.random.normal((2, 6, 256), key=mx.random.key(0))
    assert mx.array_equal(run_layer(block, (256, 4), x, None), block(x, None))
    nn.quantize(block, group_size=64, bits=8)
    assert mx.array_equal(run_layer(block, (256, 4), x, None), block(x, None))


def test_kept_parameters_follow_the_module_and_do_not_hold_it():
    """`model.layer_parameters` gives a module's parameters as they are now, after an entry removed (`bias =
    None` pops it) and a list shortened since the last call, and holds no reference to the module: a dropped
    model's weights are freed at once, not when the cycle collector runs."""
    import gc
    import weakref

    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from funasr_nano_mlx.model import layer_parameters

    def flat(tree) -> list:
        return [(key, id(value)) for key, value in tree_flatten(tree)]

    stack = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    assert flat(layer_parameters(stack)[0]) == flat(stack.parameters())
    stack.layers[0].bias = None
    stack.layers.pop()
    stack.layers[1].weight = mx.zeros((2, 2))
    assert flat(layer_parameters(stack)[0]) == flat(stack.parameters())
    gc.disable()
    try:
        dropped = weakref.ref(stack)
        del stack
        assert dropped() is None
    finally:
        gc.enable()


def test_fused_projections_give_the_same_tokens(tiny_f32, ten_files, monkeypatch):
    """`load` computes each LLM layer's q/k/v and gate/up with one matmul each; FUNASR_NANO_FUSE=0 keeps
    mlx-lm's separate ones. Same tokens one at a time and batched, and a weight replaced after loading
    is used (the fused copy is not stale)."""
    from funasr_nano_mlx import load

    fused, tokenizer = load(tiny_f32)
    monkeypatch.setenv("FUNASR_NANO_FUSE", "0")
    apart, _ = load(tiny_f32)

    def tokens(model) -> list[list[int]]:
        return [r.token_ids for r in transcribe_many(model, tokenizer, ten_files[:4], batch_size=2, max_new_tokens=8)]

    assert tokens(fused) == tokens(apart)
    for model in (fused, apart):
        for layer in model.llm.layers:
            layer.self_attn.v_proj.weight = -layer.self_attn.v_proj.weight
            layer.mlp.up_proj.weight = -layer.mlp.up_proj.weight
    assert tokens(fused) == tokens(apart)
    assert tokens(fused) != tokens(load(tiny_f32)[0])


def one_row_decoder(model_dir, clip_audio, monkeypatch):
    """The tokens of `greedy_batch` for one clip of the model in `model_dir`, with a budget that makes the
    step's buffers grow once on the way: a function of the decoder to use (None: the default)."""
    from funasr_nano_mlx import load
    from funasr_nano_mlx.decode_step import CAPACITY_STEP

    module = transcribe_module()
    model, tokenizer = load(model_dir)
    encoded = model.encode(mx.array(features(clip_audio))[None])[0]
    embeddings = module.prompt_inputs(model, tokenizer, encoded)[1]
    budget = CAPACITY_STEP + 20 - embeddings.shape[0]
    default = module.make_decoder

    def tokens(decoder=None) -> list[int]:
        monkeypatch.setattr(module, "make_decoder", decoder or default)
        ids = module.greedy_batch(model.llm, [embeddings], [budget], [], stop_loops=False)[0].token_ids
        assert len(ids) == budget
        return ids

    return model, tokens


def test_decoding_computes_no_token_past_the_budget(tiny_model, ten_files, monkeypatch):
    """Each decode step is queued before the tokens it follows are read, but none after the last token a
    budget allows: it would never be read, and the device would compute it before the next clip's work.
    One clip, and a batch whose rows have different budgets, step as often as the longest budget needs."""
    module = transcribe_module()
    model, tokenizer = tiny_model
    prompts = [
        module.prompt_inputs(model, tokenizer, model.encode(mx.array(features(ten_files[i]))[None])[0])[1]
        for i in (0, 1)
    ]
    steps, default = [], module.make_decoder

    def counted(*args):
        decoder = default(*args)
        step = decoder.step
        decoder.step = lambda tokens: steps.append(tokens.shape[0]) or step(tokens)
        return decoder

    monkeypatch.setattr(module, "make_decoder", counted)
    for rows, budgets in (([prompts[0]], [5]), (prompts, [3, 5])):
        steps.clear()
        results = module.greedy_batch(model.llm, rows, budgets, [], stop_loops=False)
        assert [len(result.token_ids) for result in results] == budgets
        assert len(steps) == max(budgets) - 1  # the first token is the prefill's


def test_rope_periods_are_computed_when_the_model_is_made(tmp_path):
    """A compiled decode step traced before anything is evaluated (greedy_batch queues its first step
    while the prefill is still lazy) holds the arrays it closes over as they are; lazy RoPE periods
    would be computed again at every step."""
    from funasr_nano_mlx.model import UpstreamRoPE

    graph = tmp_path / "periods.dot"
    mx.export_to_dot(str(graph), UpstreamRoPE(128, 1e6, "bf16").periods)
    assert "label" not in graph.read_text()  # no operation: an array with its values


@pytest.mark.parametrize("compiled", ["0", "1"])
@pytest.mark.parametrize("fused", ["1", "0"])
def test_one_row_through_the_static_step_decodes_as_mlx_lm(tiny_f32, ten_files, monkeypatch, compiled, fused):
    """On CUDA a single clip decodes through the step over preallocated buffers (decode_step.StaticDecoder,
    its forward written out) instead of mlx-lm's model and cache. Here, with MLX's ops in place of the
    CUDA kernels: the same tokens, compiled or not, projections fused or not, across a buffer's growth."""
    from funasr_nano_mlx.decode_step import StaticDecoder

    monkeypatch.setenv("FUNASR_NANO_COMPILE", compiled)
    monkeypatch.setenv("FUNASR_NANO_FUSE", fused)
    _, tokens = one_row_decoder(tiny_f32, ten_files[0], monkeypatch)
    assert tokens(StaticDecoder) == tokens()


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_a_batch_in_the_cuda_step_decodes_as_one_clip_at_a_time(tiny_model, ten_files, monkeypatch, compiled):
    """On CUDA a batch's step writes each layer's keys and values before the attention kernel, which reads
    the step's key and value beside the buffer. Here, with MLX-ops twins of the kernels, a batch whose
    rows stop at different lengths (and are dropped) and whose buffers grow on the way decodes each
    clip's tokens alone."""
    from funasr_nano_mlx.decode_step import CAPACITY_STEP, StaticDecoder

    model, tokenizer = tiny_model
    clips, budget = ten_files[:6], CAPACITY_STEP - 16  # the longest prompts pass the first capacity
    alone = [transcribe(model, tokenizer, clip, max_new_tokens=budget).token_ids for clip in clips]
    monkeypatch.setenv("FUNASR_NANO_COMPILE", compiled)
    calls = cuda_kernel_twins(monkeypatch)
    grown = []
    monkeypatch.setattr(StaticDecoder, "_grow", lambda self, grow=StaticDecoder._grow: grown.append(1) or grow(self))
    batch = transcribe_many(model, tokenizer, clips, batch_size=len(clips), max_new_tokens=budget)
    assert [r.token_ids for r in batch] == alone and {"decode_attention", "step_heads"} == set(calls)
    assert grown and len({len(ids) for ids in alone}) > 1


def test_the_cuda_step_reads_the_cache_through_views(tiny_model, ten_files, monkeypatch, tmp_path):
    """Indexing an MLX array with an integer is a gather kernel of its own: the step on CUDA reads each
    layer's part of the buffer through views, so that its one gather is the token embedding's (28 more
    took 74 us a step on an H100)."""
    from funasr_nano_mlx import decode_step

    model, tokenizer = tiny_model
    module = transcribe_module()
    embeddings = module.prompt_inputs(model, tokenizer, model.encode(mx.array(features(ten_files[3]))[None])[0])[1]
    cuda_kernel_twins(monkeypatch)
    cache, padding, token = module.prefill(model.llm, [embeddings])
    decoder = decode_step.StaticDecoder(model.llm, cache, padding)
    state = (token, decoder.buffers, decoder.counters, decoder.left_padding)
    mx.eval(state)  # the step's graph alone, not the prefill's
    out = decode_step._greedy_step(model.llm, *state, decoder.capacity, True, False)
    graph = tmp_path / "step.dot"
    mx.export_to_dot(str(graph), out[0], *out[1], out[2])
    assert graph.read_text().count('label ="Gather"') == 1


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_one_row_in_the_kernels_layer_decodes_as_mlx_lm(tiny_f32, ten_files, monkeypatch, compiled):
    """On CUDA at bf16 one clip's step runs each layer in 5 kernels (decode_step._layer_in_kernels: the
    norms, residual adds and swiglu inside the projections, the heads inside the attention). Here each CUDA
    kernel is replaced by its MLX-ops twin and the layer, so written, decodes mlx-lm's tokens, compiled or not;
    a residual left out would not."""
    from funasr_nano_mlx import cuda_kernels, decode_step

    monkeypatch.setenv("FUNASR_NANO_COMPILE", compiled)
    model, tokens = one_row_decoder(tiny_f32, ten_files[0], monkeypatch)
    with_cache = tokens()
    kernels = ("prompt_attention", "step_attention", "write_step_kv", "norm_project", "project_add", "norm_swiglu")
    calls = cuda_kernel_twins(monkeypatch, kernels)
    monkeypatch.setattr(cuda_kernels, "projection_shape", lambda mode, *layer: mode)
    assert decode_step.projections_fit(model.llm, 1, mx.float32) and not decode_step.projections_fit(
        model.llm, 2, mx.float32
    )
    model.fuse_projections(False)  # the kernels read q/k/v and gate/up as one matrix each
    assert not decode_step.projections_fit(model.llm, 1, mx.float32)
    model.fuse_projections(True)
    assert tokens(decode_step.StaticDecoder) == with_cache
    assert set(kernels) == set(calls)
    monkeypatch.setattr(cuda_kernels, "project_add", lambda x, linear, residual: linear(x))
    model.llm.__dict__.pop("_greedy_step", None)  # the compiled step holds the old function
    assert tokens(decode_step.StaticDecoder) != with_cache


def linear(k: int, n: int = 256, bias: bool = False, dtype=mx.bfloat16, packed: bool = True, **quantization):
    """A projection from k to n, in `dtype`, quantized with `quantization` if any (nn.QuantizedLinear), its arrays
    then in one buffer (`cuda_kernels.pack_quantized`, as the model's are at load) unless `packed` is False."""
    from funasr_nano_mlx import cuda_kernels

    layer = nn.Linear(k, n, bias=bias)
    layer.set_dtype(dtype)
    if not quantization:
        return layer
    layer = nn.QuantizedLinear.from_linear(layer, **quantization)
    if packed:
        cuda_kernels.pack_quantized(layer)
    return layer


def norm(k: int = 1024, dtype=mx.bfloat16) -> nn.RMSNorm:
    layer = nn.RMSNorm(k)
    layer.set_dtype(dtype)
    return layer


def test_the_projection_kernels_take_only_the_layers_they_repeat_mlx_for():
    """The projection kernels repeat MLX's one-row gemv (4 elements a load), qmv (affine; only the
    quantizations compared on a GPU) and rms_norm_small step for step; a layer MLX would compute
    another way keeps MLX's ops."""
    from funasr_nano_mlx import cuda_kernels

    def fit(layer, rms_norm=None) -> bool:
        k = layer.weight.shape[1] * 32 // getattr(layer, "bits", 32)
        mode = "project_add" if rms_norm is None else "norm_project"
        return cuda_kernels.projection_shape(mode, layer, k, rms_norm, mx.bfloat16) is not None

    assert fit(linear(1024), norm()) and fit(linear(2048)) and fit(linear(3072))  # Qwen3-0.6B's q/k/v, o, down
    assert fit(linear(1024, bits=4, group_size=64), norm()) and fit(linear(3072, bits=4, group_size=64))
    assert not fit(linear(1024, bits=4, group_size=64, packed=False), norm())  # the kernels read one buffer
    assert fit(linear(256)) and not fit(linear(256), norm(256))  # MLX's norm pads rows shorter than 512
    assert not fit(linear(9216), norm(9216))  # nor a whole number of 64 or 128 threads' loads up to 8 each
    assert not fit(linear(1024), norm(dtype=mx.float32))
    assert not fit(linear(1024, bias=True))
    assert not fit(linear(1024, dtype=mx.float32))
    assert not fit(linear(1088))  # 1088 % 128 = 64: MLX's gemv reads 2 elements a load
    assert not fit(linear(1024, bits=3))
    assert not fit(linear(1024, bits=8))  # repeated as MLX computes it, but never compared on a GPU
    assert not fit(linear(1024, bits=4, group_size=32))
    assert not fit(linear(1024, mode="mxfp4"))
    assert not fit(linear(256, bits=4))  # shorter than one step of 32 lanes x 16 elements


def test_each_projection_shape_is_a_source_of_constants_reading_only_its_operands(monkeypatch):
    """Each projection shape is compiled with its lengths as constants and the kernel reads no array but its
    operands: forms that read their shape or case from small arrays (which MLX keeps in CUDA managed
    memory) made a GPU step slower (BENCHMARKS.md). The same shape gives the same source (MLX compiles a
    source once per process)."""
    from funasr_nano_mlx import cuda_kernels

    sources = []

    def record(name, input_names, output_names, source, header):
        assert set(input_names) <= {"x", "norm_weight", "weight", "scales", "biases", "residual"}

        def launch(*, output_shapes, output_dtypes, **_):
            sources.append((name, source))
            return [mx.zeros(shape, dtype) for shape, dtype in zip(output_shapes, output_dtypes)]

        return launch

    monkeypatch.setattr(cuda_kernels, "_kernel", record)
    layers = {k: linear(k, 512) for k in (1024, 2048, 3072)}
    rows = {k: mx.zeros((1, 1, k), mx.bfloat16) for k in layers}
    cuda_kernels.norm_project(rows[1024], norm(), layers[1024])
    cuda_kernels.norm_swiglu(rows[1024], norm(), layers[1024])
    for k in (2048, 2048, 3072):
        cuda_kernels.project_add(rows[k], layers[k], rows[1024])
    assert "norm_project<T, 1024, 128, 1>(x, norm_weight, 1e-05f, projection::DenseRows<T, 1024>" in sources[0][1]
    assert "norm_swiglu<T, 1024, 128, 1>" in sources[1][1] and "DenseRows<T, 2048>" in sources[2][1]
    assert sources[2] == sources[3] and sources[3] != sources[4] and "DenseRows<T, 3072>" in sources[4][1]


def test_the_cuda_kernels_take_only_the_shapes_they_are_written_for(tiny_model, monkeypatch):
    """The decode kernels split a head into aligned loads of 2-8 elements per lane and share key heads
    evenly among query heads; any other model keeps MLX's ops (the tiny model: heads of 16), as does a
    model whose q and k norms differ in eps (the q/k kernel takes one) or whose activations are not bf16."""
    from funasr_nano_mlx import cuda_kernels
    from funasr_nano_mlx.decode_step import kernels_fit

    assert cuda_kernels.fits(128, 16, 8)  # Qwen3-0.6B
    assert not any(
        cuda_kernels.fits(*shape) for shape in [(16, 4, 2), (32, 4, 2), (96, 16, 8), (512, 16, 8), (128, 16, 6)]
    )
    assert not cuda_kernels.enabled(mx.bfloat16)  # no CUDA GPU here
    model, _ = tiny_model
    monkeypatch.setattr(cuda_kernels, "enabled", lambda dtype: dtype == mx.bfloat16)
    assert not kernels_fit(model.llm, mx.bfloat16)  # heads of 16
    monkeypatch.setattr(cuda_kernels, "fits", lambda *shape: True)
    assert kernels_fit(model.llm, mx.bfloat16) and not kernels_fit(model.llm, mx.float32)
    attention = model.llm.layers[0].self_attn
    monkeypatch.setattr(attention.k_norm, "eps", attention.q_norm.eps * 2)
    assert not kernels_fit(model.llm, mx.bfloat16)


def test_one_prompt_leaves_the_cache_mlx_lms_prefill_leaves(tiny_bf16, ten_files, tmp_path):
    """One clip's prompt goes through the LLM with its cache written once, after the pass
    (decode_step.prefill_one): no write a layer (mlx-lm's KVCache writes each layer's keys and values into
    zeros, 114 of a pass's 621 kernels on an H100). It leaves what mlx-lm's own prefill leaves: the first
    token, and caches of the same capacity holding the same keys and values, zeros past the prompt."""
    from mlx_lm.models.cache import make_prompt_cache

    from funasr_nano_mlx import load
    from funasr_nano_mlx.decode_step import output_head

    module = transcribe_module()
    model, tokenizer = load(tiny_bf16)
    encoded = model.encode(mx.array(features(ten_files[2]))[None])[0]
    embeddings = module.prompt_inputs(model, tokenizer, encoded)[1]
    caches, padding, token = module.prefill(model.llm, [embeddings])
    graph = tmp_path / "prefill.dot"
    mx.export_to_dot(str(graph), token, *(part for cache in caches for part in (cache.keys, cache.values)))
    assert graph.read_text().count('label ="SliceUpdate"') == 0
    mlx_lm_caches = make_prompt_cache(model.llm)
    hidden = model.llm.model(mx.zeros((1, embeddings.shape[0]), mx.int32), mlx_lm_caches, embeddings[None])
    assert padding == [0] and token.tolist() == mx.argmax(output_head(model.llm)(hidden[:, -1]), axis=-1).tolist()
    for ours, theirs in zip(caches, mlx_lm_caches, strict=True):
        assert ours.offset == theirs.offset == embeddings.shape[0]
        for a, b in ((ours.keys, theirs.keys), (ours.values, theirs.values)):
            assert a.shape == b.shape and mx.array_equal(a, b).item()


def test_warm_up_lengths_take_every_attention_source_of_a_clip(monkeypatch):
    """`BatchDecoder.warm_up` encodes its clip and one clip at each of `SenseVoiceEncoder.attention_sources_frames`:
    between them they launch every kernel source (name and template: each is compiled at its first use) that the
    attention of one clip of any length launches, so that no first pass compiles one."""
    from funasr_nano_mlx import cuda_kernels
    from funasr_nano_mlx.model import EncoderArgs, SenseVoiceEncoder
    from tests.cuda_on_cpu import launches

    monkeypatch.setattr(cuda_kernels, "available", lambda: True)
    args = EncoderArgs(num_blocks=1, tp_blocks=0)
    width, heads = args.output_size, args.attention_heads
    taps = mx.zeros((width, args.kernel_size, 1))

    def sources(frames: int) -> set:
        qkv = mx.zeros((1, frames, 3 * width))
        attention = lambda: cuda_kernels.attention_products_and_memory(qkv, heads, taps, 5)  # noqa: E731
        cuda_kernels._kernel.cache_clear()  # it holds MLX's kernels or an earlier recorder's
        return {(launch.name, str(launch.template)) for launch in launches(attention, monkeypatch)}

    try:
        fits = [f for f in range(1, 1024) if cuda_kernels.attention_products_fit(1, f, mx.float32)]
        every = set().union(*map(sources, fits))
        clip = 50  # the warm-up's 3 s
        warmed = set().union(sources(clip), *map(sources, SenseVoiceEncoder(560, args).attention_sources_frames(clip)))
    finally:
        cuda_kernels._kernel.cache_clear()
    assert warmed == every
    assert len(every) >= 5  # the one-kernel attention with 32 and 64 threads a row; two tiles of scores; the context


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_the_encoder_on_cuda_computes_attention_and_memory_in_kernels(tiny_model, ten_files, monkeypatch, compiled):
    """On a CUDA GPU each SAN-M layer's FSMN memory block is one kernel (cuda_kernels.fsmn_memory) reading the
    fused q/k/v projection, in float32 and bf16; its self-attention's two products are a kernel each in float32
    (attention_scores, attention_context: MLX's numbers) up to ATTENTION_PRODUCTS_MAX_WORK, the memory block then in
    the scores' launch (scores_and_memory) unless SCORES_WITH_MEMORY is off, and for one clip the softmax in the scores'
    kernel up to SOFTMAX_IN_SCORES_MAX_WORK (weights_and_memory: MLX's numbers), and there the context too unless
    CONTEXT_IN_WEIGHTS is off (context_and_memory), its four linear layers
    too (split_linear, MLX's numbers where cuBLAS's order is known) from LINEAR_MIN_ROWS to LINEAR_MAX_ROWS, and the
    whole attention one kernel where a user opts in (FUNASR_NANO_ENCODER_ATTENTION_KERNEL=1: it changes float32's
    numbers) up to FRAME_ATTENTION_MAX_WORK. Here the kernels are replaced by their MLX-ops twins: a clip, and
    a padded batch with its mask, encode as on the CPU, compiled or not."""
    from funasr_nano_mlx import cublas_heuristic, cuda_kernels

    model, _ = tiny_model
    monkeypatch.setenv("FUNASR_NANO_COMPILE", compiled)
    monkeypatch.delenv("FUNASR_NANO_ENCODER_ATTENTION_KERNEL", raising=False)  # the default, whatever the shell says
    feats = [mx.array(features(ten_files[i])) for i in (0, 4)]
    frames = max(f.shape[0] for f in feats)
    batch = mx.stack([mx.pad(f, [(0, frames - f.shape[0]), (0, 0)]) for f in feats])
    lengths = mx.array([f.shape[0] for f in feats])
    expected = [model.encode(feats[0][None]), model.encode(batch, lengths)]
    calls = cuda_kernel_twins(monkeypatch, ENCODER_KERNELS)
    attention = model.audio_encoder.encoders[0].self_attn
    head_dim = attention.linear_out.weight.shape[0] // attention.heads
    # The tiny encoder's heads are smaller than any real one.
    monkeypatch.setattr(cuda_kernels, "HEAD_DIMS", (head_dim,))
    work = batch.shape[0] * frames * frames
    monkeypatch.setattr(cuda_kernels, "FRAME_ATTENTION_MAX_WORK", work)
    monkeypatch.setattr(cuda_kernels, "ATTENTION_PRODUCTS_MAX_WORK", work)
    monkeypatch.setattr(cuda_kernels, "SOFTMAX_IN_SCORES_MAX_WORK", work)
    monkeypatch.setattr(cuda_kernels, "ATTENTION_PRODUCTS_MIN_FRAMES", 4)  # the tiny clips are short
    # cuBLAS's order as its heuristic would give it on a GPU; the rows of one clip and of the batch
    monkeypatch.setattr(cublas_heuristic, "split_k_parts", lambda rows, n, k: 3)
    monkeypatch.setattr(cuda_kernels, "LINEAR_MIN_ROWS", feats[0].shape[0])
    monkeypatch.setattr(cuda_kernels, "LINEAR_MAX_ROWS", batch.shape[0] * frames)
    # the softmax's weights from the scores' kernel and the context from there, the memory block in its launch
    products = {"context_and_memory", "split_linear"}

    def encoded_calls(*inputs) -> set[str]:
        """The kernels one encoding called, after checking its output against the CPU's."""
        calls.clear()
        assert mx.array_equal(model.encode(*inputs), expected[len(inputs) - 1]).item()
        return set(calls)

    # Products in kernels: float32 only, never under 4 frames, where MLX's own vector attention runs (nor under
    # ATTENTION_PRODUCTS_MIN_FRAMES), and not with TF32 turned on, where cuBLAS's products are not float32 chains.
    fits = cuda_kernels.attention_products_fit
    assert fits(1, 4, mx.float32) and not fits(1, 3, mx.float32) and not fits(1, 4, mx.bfloat16)
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    assert not fits(1, 4, mx.float32)
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    with monkeypatch.context() as measured:  # a minimum above the 4-frame floor applies (the default: 17)
        measured.setattr(cuda_kernels, "ATTENTION_PRODUCTS_MIN_FRAMES", 17)
        assert fits(1, 17, mx.float32) and not fits(1, 16, mx.float32)
    # The linears likewise: float32 without TF32, from LINEAR_MIN_ROWS to LINEAR_MAX_ROWS rows (batch x frames).
    parts, low, high = cuda_kernels.linear_parts, cuda_kernels.LINEAR_MIN_ROWS, cuda_kernels.LINEAR_MAX_ROWS
    assert parts(low, 512, 512, mx.float32) == parts(high, 512, 512, mx.float32) == 3
    assert parts(low - 1, 512, 512, mx.float32) is parts(high + 1, 512, 512, mx.float32) is None
    assert parts(low, 512, 512, mx.bfloat16) is None
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    assert parts(low, 512, 512, mx.float32) is None
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    # By default: the memory block, the attention's products and the linears (float32's exact path); for one clip the
    # attention in one kernel, for a padded batch the scores' kernel (with the memory), MLX's softmax and the context.
    scores_apart = {"scores_and_memory", "attention_context", "split_linear"}
    assert encoded_calls(feats[0][None]) == products
    assert encoded_calls(batch, lengths) == scores_apart
    # The softmax apart (MLX's) where asked or above SOFTMAX_IN_SCORES_MAX_WORK, the memory still in the scores'
    # launch; the memory block in a launch of its own where asked: switches and a bound the layers are traced for.
    with monkeypatch.context() as apart:
        apart.setattr(cuda_kernels, "SOFTMAX_IN_SCORES", False)
        assert encoded_calls(feats[0][None]) == scores_apart
        apart.undo()
        apart.setattr(cuda_kernels, "SOFTMAX_IN_SCORES_MAX_WORK", feats[0].shape[0] ** 2 - 1)
        assert encoded_calls(feats[0][None]) == scores_apart
        apart.setattr(cuda_kernels, "SOFTMAX_IN_SCORES_MAX_WORK", feats[0].shape[0] ** 2)
        assert encoded_calls(feats[0][None]) == products
        apart.setattr(cuda_kernels, "CONTEXT_IN_WEIGHTS", False)
        assert encoded_calls(feats[0][None]) == {"weights_and_memory", "attention_context", "split_linear"}
        apart.setattr(cuda_kernels, "SCORES_WITH_MEMORY", False)
        each_apart = {"fsmn_memory", "attention_scores", "attention_context", "split_linear"}
        for inputs in ((feats[0][None],), (batch, lengths)):
            assert encoded_calls(*inputs) == each_apart
        apart.undo()
        # Where CUDA's grid has no room in z for the memory's blocks, each is apart too (a constant: traced again by hand).
        apart.setattr(cuda_kernels, "MAX_PLANES", batch.shape[0] * attention.heads)
        model_module.compiled_layer.cache_clear()
        assert encoded_calls(batch, lengths) == each_apart
    model_module.compiled_layer.cache_clear()
    if compiled == "0":  # each layer's four linears (q/k/v, output, the FFN's two), none left to MLX
        encoder = model.audio_encoder
        layers = len(encoder.encoders0 + encoder.encoders + encoder.tp_encoders)
        assert calls.count("split_linear") == 4 * layers
        # The residuals are added in the kernels: the memory block and the residual after the attention's output
        # layer (encoders0, which changes width, has no residual), the residual after the FFN's second layer; the
        # output layer's kernel also writes the FFN's norm, the FFN's the next layer's (or the stack's last norm).
        addends, norms = [], []
        twin = cuda_kernels.split_linear_ops

        def recorded(x, weight, bias, parts, relu=False, terms=(), norm=None):
            calls.append("split_linear")
            addends.append(len(terms))
            norms.append(norm is not None)
            return twin(x, weight, bias, parts, relu, terms, norm)

        monkeypatch.setattr(cuda_kernels, "split_linear", recorded)
        encoded_calls(feats[0][None])
        assert Counter(addends) == {0: 2 * layers, 1: layers + 1, 2: layers - 1}
        assert Counter(norms) == {True: 2 * layers, False: 2 * layers}  # the output and FFN-down layers
    # Switched off, the products or the linears are MLX's ops: the switches are part of what the layers are traced for.
    monkeypatch.setattr(cuda_kernels, "ATTENTION_PRODUCTS", False)
    assert encoded_calls(feats[0][None]) == {"fsmn_memory", "split_linear"}
    monkeypatch.setattr(cuda_kernels, "ATTENTION_PRODUCTS", True)
    monkeypatch.setattr(cuda_kernels, "EXACT_LINEARS", False)
    assert encoded_calls(feats[0][None]) == products - {"split_linear"}
    monkeypatch.setattr(cuda_kernels, "EXACT_LINEARS", True)
    # Above ATTENTION_PRODUCTS_MAX_WORK (rows x frames^2) the products are MLX's ops, above LINEAR_MAX_ROWS the
    # linears; the bounds are traced for.
    monkeypatch.setattr(cuda_kernels, "ATTENTION_PRODUCTS_MAX_WORK", work - 1)
    monkeypatch.setattr(cuda_kernels, "LINEAR_MAX_ROWS", batch.shape[0] * frames - 1)
    assert encoded_calls(batch, lengths) == {"fsmn_memory"}
    assert encoded_calls(feats[0][None]) == products
    monkeypatch.setattr(cuda_kernels, "LINEAR_MAX_ROWS", batch.shape[0] * frames)
    # Where cuBLAS's order is not known (no cuBLASLt, or a reduction in no fixed order), the linears are MLX's ops.
    monkeypatch.setattr(cublas_heuristic, "split_k_parts", lambda rows, n, k: None)
    model_module.compiled_layer.cache_clear()  # what the heuristic said is not part of the key: it is the GPU's
    assert encoded_calls(feats[0][None]) == products - {"split_linear"}
    monkeypatch.setattr(cublas_heuristic, "split_k_parts", lambda rows, n, k: 3)
    # Chosen, within the bound: the whole attention in one kernel. The choice is part of what the compiled
    # layers are traced for, so opting in traces again.
    monkeypatch.setenv("FUNASR_NANO_ENCODER_ATTENTION_KERNEL", "0")
    assert not cuda_kernels.frame_attention_chosen()  # 0 is off, as for FUNASR_NANO_KERNELS
    monkeypatch.setenv("FUNASR_NANO_ENCODER_ATTENTION_KERNEL", "1")
    for inputs in ((feats[0][None],), (batch, lengths)):
        assert encoded_calls(*inputs) == {"fsmn_memory", "frame_attention", "split_linear"}
    # Above FRAME_ATTENTION_MAX_WORK the attention is MLX's ops again (the products' bound is below it here).
    monkeypatch.setattr(cuda_kernels, "FRAME_ATTENTION_MAX_WORK", work - 1)
    assert encoded_calls(batch, lengths) == {"fsmn_memory", "split_linear"}
    # So is it for a head size the kernel is not written for (a constant: traced again only by hand here).
    monkeypatch.setattr(cuda_kernels, "FRAME_ATTENTION_MAX_WORK", work)
    monkeypatch.setattr(cuda_kernels, "HEAD_DIMS", (2 * head_dim,))
    model_module.compiled_layer.cache_clear()
    assert encoded_calls(batch, lengths) == {"fsmn_memory", "split_linear"}


@pytest.mark.parametrize("masked", [False, True])
def test_the_attention_products_twins_are_mlx_attention_at_the_encoders_head_size(masked):
    """The MLX-ops twins of the attention's product kernels (what the kernels are checked against on a GPU),
    with MLX's softmax between them, give MLX's float32 attention bit for bit at the real encoder's heads
    (4 x 128, where the scale 128 ** -0.5 rounds; the tiny model's 16 do not show where it is applied)."""
    from funasr_nano_mlx import cuda_kernels

    rng = np.random.default_rng(0)
    qkv = mx.array(rng.standard_normal((2, 37, 3 * 512), dtype=np.float32))
    mask = mx.array(np.arange(37)[None, :] < np.array([[37], [29]]), mx.float32) if masked else None
    weights = mx.softmax(cuda_kernels.attention_scores_ops(qkv, 4, mask), axis=-1, precise=True)
    products = cuda_kernels.attention_context_ops(weights, qkv)
    assert mx.array_equal(products, cuda_kernels.frame_attention_ops(qkv, 4, mask)).item()


SPLIT = {"found": 1, "algo_id": 55, "splitk_num": 5, "reduction_scheme": 2}  # split, the parts added in order


@pytest.mark.parametrize(
    "config, capability, parts",
    [
        (SPLIT, 9, 5),
        ({**SPLIT, "splitk_num": 1, "reduction_scheme": 0}, 9, 1),  # not split
        ({**SPLIT, "splitk_num": None}, 9, None),  # the count not read
        ({**SPLIT, "reduction_scheme": 1}, 9, None),  # added in place with atomics: in no fixed order
        ({**SPLIT, "algo_id": 20}, 9, None),  # another algorithm (the one whose order was not found)
        ({**SPLIT, "found": 0}, 9, None),  # no algorithm
        (SPLIT, 8, None),  # another GPU generation: not measured
        (OSError("libcublasLt.so.13: cannot open shared object file"), 9, None),
    ],
)
def test_the_linears_follow_cublas_only_where_its_order_is_known(monkeypatch, config, capability, parts):
    """`split_linear` takes its number of parts from cuBLASLt's heuristic (cublas_heuristic.split_k_parts) only
    where the order of cuBLAS's sums was measured to be its own: else, or with no answer, the linears stay MLX's."""
    from funasr_nano_mlx import cublas_heuristic

    def algorithm(rows, n, k):
        if isinstance(config, Exception):
            raise config
        return config

    monkeypatch.setattr(cublas_heuristic, "linear_algorithm", algorithm)
    monkeypatch.setattr(cublas_heuristic, "compute_capability", lambda: capability)
    cublas_heuristic.split_k_parts.cache_clear()
    try:
        assert cublas_heuristic.split_k_parts(167, 512, 512) == parts
    finally:
        cublas_heuristic.split_k_parts.cache_clear()


def test_one_prompt_on_cuda_attends_in_one_kernel(tiny_bf16, ten_files, monkeypatch):
    """On CUDA at bf16 one prompt's pass from position 0 computes each layer's heads and causal attention in
    two kernels (cuda_kernels.prompt_attention), up to PROMPT_ATTENTION_MAX_TOKENS. Here the kernel is its
    MLX-ops twin: the first token and every layer's keys and values are those of the plain ops; a left-padded
    batch, and a prompt past the bound, take the ops."""
    from funasr_nano_mlx import cuda_kernels, load

    module = transcribe_module()
    model, tokenizer = load(tiny_bf16)
    prompts = [
        module.prompt_inputs(model, tokenizer, model.encode(mx.array(features(ten_files[i]))[None])[0])[1]
        for i in (2, 5)
    ]
    rows = ([prompts[0]], prompts)  # one prompt, and a left-padded batch of two lengths
    assert prompts[0].shape[0] != prompts[1].shape[0]
    expected = [module.prefill(model.llm, row) for row in rows]  # the CPU: MLX's ops
    calls = cuda_kernel_twins(monkeypatch, ("prompt_attention",))
    called = []
    for row, (mlx_caches, _, mlx_tokens) in zip(rows, expected):
        calls.clear()
        caches, _, tokens = module.prefill(model.llm, row)
        called.append(calls.count("prompt_attention"))
        assert tokens.tolist() == mlx_tokens.tolist()
        for ours, theirs in zip(caches, mlx_caches, strict=True):
            assert mx.array_equal(ours.keys, theirs.keys).item() and mx.array_equal(ours.values, theirs.values).item()
    assert called == [len(model.llm.layers), 0]
    # The kernel reads one row without padding (mlx-lm's plain cache, which transcribe gives one row): two are refused.
    attention, length = model.llm.layers[0].self_attn, prompts[0].shape[0]
    assert cuda_kernels.prompt_attention_fits(attention, 1, length, 0, "causal", mx.bfloat16)
    assert not cuda_kernels.prompt_attention_fits(attention, 2, length, 0, "causal", mx.bfloat16)
    # Nor are heads wider than the block's threads, which merge one element each.
    narrow = (attention.rope.dims - 1) // 32
    with monkeypatch.context() as patch:
        patch.setattr(cuda_kernels, "PROMPT_ATTENTION_WARPS", narrow)
        assert not cuda_kernels.prompt_attention_fits(attention, 1, length, 0, "causal", mx.bfloat16)
    monkeypatch.setattr(cuda_kernels, "PROMPT_ATTENTION_MAX_TOKENS", length - 1)
    calls.clear()
    module.prefill(model.llm, [prompts[0]])
    assert "prompt_attention" not in calls
