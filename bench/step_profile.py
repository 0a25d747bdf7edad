"""Where one clip's decode step spends its time on a CUDA GPU: the host and each kernel, in one process.

    python bench/step_profile.py MODEL_DIR [--seconds 10] [--tokens 128] [--stages | --only-stages | --pipeline]

For the step as it is, without the projection kernels (`decode_step.projections_fit`) and with each
candidate change (`variants`), interleaved over rounds: ms/token in greedy_batch's loop, the first
round's seconds (the trace and the compiles of the variant's new kernel sources), the host's share of a
synchronous step (building it, submitting it), the GPU time of each kernel per step, read with CUPTI
through torch.profiler (it records every kernel of the process, MLX's included), and the tokens against
the first variant's. Needs torch with CUDA. The prefill is left lazy when the decoder is made, as
greedy_batch leaves it, so that the compiled step is traced as in a transcription. One JSON line per
variant; with --stages first one per variant of each stage before the first token (`first_token_stages`:
encoder + adaptor, the prompt's prefill; warm and at a new length) and the same stages as `transcribe`
times them in a transcription, with --only-stages only those; with --pipeline only the encoder submitted every K
layers (`pipeline_rounds`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import run_greedy, synchronous_steps, warm_ms  # noqa: E402
from speed import FIXED_LENGTH, synthetic_audio  # noqa: E402

from funasr_nano_mlx import cuda_kernels, decode_step, load, transcribe  # noqa: E402
from funasr_nano_mlx import model as model_module  # noqa: E402
from funasr_nano_mlx.audio import features  # noqa: E402
from funasr_nano_mlx.decode_step import StaticDecoder  # noqa: E402
from funasr_nano_mlx.transcribe import prefill, prompt_inputs  # noqa: E402


@contextmanager
def patched(*changes):
    """(object, attribute, value) set for the duration."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    for owner, name, value in changes:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def separate_heads(qkv, q_norm, k_norm, rope, positions, kv, first, last, q_heads, kv_heads, scale):
    """`cuda_kernels.step_attention` as the two kernels it joins, `step_heads` then `decode_attention`."""
    queries, step_kv = cuda_kernels.step_heads(qkv, q_norm, k_norm, rope, positions, q_heads, kv_heads)
    return cuda_kernels.decode_attention(queries, kv, step_kv, first, last, scale), step_kv


def variants(llm) -> dict:
    """Each variant's changes (see `patched`): the step as it is first."""
    table = {
        "projection kernels": (),
        "attention and q/k kernels only": ((decode_step, "projections_fit", lambda *_: False),),
    }
    if hasattr(cuda_kernels, "step_attention"):  # a build from before it has the two kernels
        table["heads in a kernel of their own (before step_attention)"] = (
            (cuda_kernels, "step_attention", separate_heads),
        )
    if hasattr(cuda_kernels, "write_step_kv"):  # a build from before it stacks and writes with MLX's ops
        table["MLX's stack and write (before write_step_kv)"] = (
            (cuda_kernels, "write_step_kv", cuda_kernels.write_step_kv_ops),
        )
    fits = getattr(cuda_kernels, "embedding_fits", None)  # a build from before it has MLX's gathers and dequantize
    if fits and fits(llm.model.embed_tokens, mx.bfloat16):
        table["MLX's embedding (before embed_affine)"] = ((cuda_kernels, "embedding_fits", lambda *_: False),)
    if hasattr(cuda_kernels, "ATTENTION_WARPS"):  # a build from before it has 8, fixed
        table["candidate: attention in blocks of 32 warps"] = ((cuda_kernels, "ATTENTION_WARPS", 32),)
    return table


def decoder(llm, embeddings):
    cache, padding, token = prefill(llm, [embeddings])
    return StaticDecoder(llm, cache, padding), token


def cupti_kernels(run, calls: int, top: int = 10) -> dict:
    """CUPTI's kernel times over `calls` calls of `run` (whose arrays are evaluated asynchronously, one call
    after another), per call: the total, the launches, the heaviest kernels. Empty without torch's CUDA."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return {"gpu_us_per_call": None}  # read through torch's profiler: without torch, not read
    if not torch.cuda.is_available():
        return {"gpu_us_per_call": None}  # CUPTI needs a CUDA device
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiled:
        for _ in range(calls):
            out = run()
            mx.async_eval(out)
        mx.eval(out)
        torch.cuda.synchronize()
    times, counts = defaultdict(float), defaultdict(int)
    for event in profiled.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name] += event.device_time_total
            counts[event.name] += 1
    heaviest = sorted(times, key=times.get, reverse=True)[:top]
    return {
        "gpu_us_per_call": sum(times.values()) / calls,
        "launches_per_call": sum(counts.values()) / calls,
        "heaviest_us_and_launches": {
            name[:160]: [round(times[name] / calls, 1), round(counts[name] / calls, 2)] for name in heaviest
        },
    }


def gpu_kernels(llm, embeddings, steps: int = 16) -> dict:
    """The decode step's kernels (`cupti_kernels`), over `steps` warm steps."""
    step, token = decoder(llm, embeddings)
    for _ in range(8):
        token = step.step(token)
    mx.eval(token)
    tokens = [token]

    def run():
        tokens[0] = step.step(tokens[0])
        return tokens[0]

    return cupti_kernels(run, steps)


def stage_variants(model, feats: mx.array, embeddings: mx.array) -> dict:
    """The stages before the first token, each as it is and with what it replaced, where this build has it:
    name -> (stage, run, changes for `patched`, its output to compare). Every run takes a length (frames or
    prompt positions), so that a first call at a new length can be timed too."""
    encode = lambda frames: model.encode(feats[:, :frames])  # noqa: E731
    prefill_to = lambda length: prefill(model.llm, [embeddings[:length]])  # noqa: E731
    table = {"encoder+adaptor": ("encoder", encode, ())}
    if hasattr(cuda_kernels, "fsmn_memory_ops"):
        ops = ((cuda_kernels, "fsmn_memory", cuda_kernels.fsmn_memory_ops),)
        if hasattr(cuda_kernels, "SCORES_WITH_MEMORY"):  # else the memory comes from the scores' launch
            ops += ((cuda_kernels, "SCORES_WITH_MEMORY", False),)
        table["encoder+adaptor, FSMN block as MLX ops"] = ("encoder", encode, ops)
    if hasattr(cuda_kernels, "ATTENTION_PRODUCTS"):  # a build from before it has MLX's ops for the products
        ops = ((cuda_kernels, "ATTENTION_PRODUCTS", False),)
        table["encoder+adaptor, attention products as MLX's ops"] = ("encoder", encode, ops)
    if hasattr(cuda_kernels, "EXACT_LINEARS"):  # likewise for the linear layers
        ops = ((cuda_kernels, "EXACT_LINEARS", False),)
        table["encoder+adaptor, linears as MLX's ops"] = ("encoder", encode, ops)
    if hasattr(cuda_kernels, "frame_attention_chosen"):
        kernel = ((cuda_kernels, "frame_attention_chosen", lambda: True),)
        table["encoder+adaptor, attention kernel (opt-in)"] = ("encoder", encode, kernel)
    table["prefill"] = ("prefill", prefill_to, ())
    if hasattr(cuda_kernels, "PROMPT_ATTENTION"):
        ops = ((cuda_kernels, "PROMPT_ATTENTION", False),)
        table["prefill, attention as MLX's ops"] = ("prefill", prefill_to, ops)
    if hasattr(decode_step, "prefill_one"):
        transcribe_module = importlib.import_module("funasr_nano_mlx.transcribe")  # `transcribe` is the function
        mlx_lm_cache = ((transcribe_module, "prefill_one", mlx_lm_prefill),)
        table["prefill through mlx-lm's cache"] = ("prefill", prefill_to, mlx_lm_cache)
        compiled = ((transcribe_module, "prefill_one", bucketed_prefill(model.llm)),)
        table["candidate: prefill compiled, in buckets of 16 positions"] = ("prefill", prefill_to, compiled)
    return table


def bucketed_prefill(llm, bucket: int = 16):
    """Candidate for `decode_step.prefill_one`: one prompt's pass compiled, the prompt right-padded to a multiple
    of `bucket` positions so that one trace serves every length in a bucket (a trace per length cost 16-21 ms on
    the development CPU). Causal attention keeps the padding out of the real positions; the first token is read
    at the last real one (an index array, so the trace does not depend on it) and the caches hold the real
    positions only. cuBLAS may choose other kernels for the longer matmuls: `compared` tells."""

    def arrays(embeddings, last):
        caches = [decode_step._PromptKeys() for _ in llm.layers]
        zeros = mx.zeros((1, embeddings.shape[0]), mx.int32)
        hidden = llm.model(zeros, cache=caches, input_embeddings=embeddings[None])
        token = mx.argmax(decode_step.output_head(llm)(mx.take(hidden, last, axis=1))[:, -1], axis=-1)
        return token, mx.stack([mx.stack([c.keys, c.values]) for c in caches])

    compiled = mx.compile(arrays)

    def prefill_one(llm_, embeddings):
        length = embeddings.shape[0]
        padded = mx.pad(embeddings, [(0, -(-length // bucket) * bucket - length), (0, 0)])
        token, keys_values = compiled(padded, mx.array([length - 1]))
        return decode_step.prompt_caches(keys_values[..., :length, :]), token

    return prefill_one


def mlx_lm_prefill(llm, embeddings: mx.array):
    """One prompt (L, D) through mlx-lm's model and its own cache, as `decode_step.prefill_one` returns it."""
    caches = make_prompt_cache(llm)
    hidden = llm.model(mx.zeros((1, embeddings.shape[0]), mx.int32), caches, embeddings[None])
    return caches, mx.argmax(decode_step.output_head(llm)(hidden[:, -1]), axis=-1)


def arrays(output):
    """A stage's output as arrays: the prefill's (caches, padding, token) as its keys, values and token."""
    if isinstance(output, tuple):
        return [output[2]] + [[cache.keys, cache.values] for cache in output[0]]
    return output


def compared(output, reference) -> dict:
    """How far a stage's output is from the first variant's: the encoder's array, or the prefill's first
    token and last layer's keys."""
    if isinstance(output, tuple):  # prefill: (caches, padding, token)
        keys = [caches[-1].keys[..., : caches[-1].offset, :].astype(mx.float32) for caches in (output[0], reference[0])]
        same_token = output[2].tolist() == reference[2].tolist()
        return {"same_first_token": same_token, "keys_identical_share": mx.mean(keys[0] == keys[1]).item()}
    a, b = output.astype(mx.float32), reference.astype(mx.float32)
    relative = (mx.linalg.norm((a - b).reshape(-1)) / mx.linalg.norm(b.reshape(-1))).item()
    return {"max_abs_difference": mx.max(mx.abs(a - b)).item(), "relative_l2": relative}


def first_token_stages(model, feats: mx.array, embeddings: mx.array, calls: int = 8) -> list[dict]:
    """Where the time to the first token goes on the device, per variant of each stage (`stage_variants`):
    warm, the median wall time of a synchronous call, the host's share of it (until the work is submitted)
    and its kernels (`cupti_kernels`); the first call at a length not seen before (a new trace), and the
    output against the stage's first variant."""
    full = {"encoder": feats.shape[1], "prefill": embeddings.shape[0]}
    rows, references = [], {}
    for index, (name, (stage, run, changes)) in enumerate(stage_variants(model, feats, embeddings).items()):
        with patched(*changes):
            model_module.compiled_layer.cache_clear()  # a trace keeps the functions it was traced with
            mx.eval(arrays(run(full[stage] - 20 - index)))  # once at any length: what a process pays once
            start = time.perf_counter()
            mx.eval(arrays(run(full[stage] - 1 - index)))  # then a length not seen before
            new_length = 1e3 * (time.perf_counter() - start)
            output = run(full[stage])
            mx.eval(arrays(output))
            references.setdefault(stage, output)
            last = (lambda out: out[2]) if stage == "prefill" else (lambda out: out)  # noqa: E731
            wall, submit = warm_ms(lambda: last(run(full[stage])), calls)
            row = {"stage": name, "ms": wall, "submit_ms": submit, "new_length_ms": new_length}
            kernels = cupti_kernels(lambda: last(run(full[stage])), calls, top=20)
            row |= compared(output, references[stage]) | kernels
        rows.append(row)
    model_module.compiled_layer.cache_clear()
    return rows


def stages_in_transcriptions(model, tokenizer, seconds: float, passes: int = 5) -> list[dict]:
    """The first token's stages as `transcribe` reports them (its `timings`), medians over `passes` after a
    warm-up, for a transcription of 1 token and of 128: `speed.py` timed the encoder at 13-17 ms where
    `first_token_stages` times it at 12, and this tells whether the call around it or the decode before
    (the GPU and host idle or busy) makes the difference."""
    wave, rows, stop_ids = synthetic_audio(seconds), [], tokenizer.eos_token_ids
    tokenizer.eos_token_ids = []  # decode exactly the budget, as speed.py does
    for tokens in (1, 128):
        timed = []
        for _ in range(passes + 1):
            timed.append(transcribe(model, tokenizer, wave, max_new_tokens=tokens, **FIXED_LENGTH).timings)
        row = {"stage": f"inside transcribe, {tokens} token(s) a pass"}
        for stage in ("frontend", "encoder", "prefill"):
            row[f"{stage}_ms"] = 1e3 * statistics.median(t[stage] for t in timed[1:])
        rows.append(row)
    tokenizer.eos_token_ids = stop_ids
    return rows


def pipeline_rounds(model, tokenizer, feats: mx.array, seconds: float, rounds: int, calls: int = 10) -> list[dict]:
    """The encoder + adaptor submitted every K layers (`model.ENCODER_PIPELINE_LAYERS`; 0: at the end), alternating
    over `rounds` so that the host's drift hits every K alike: per K and input (one clip of 3 s, `feats`, which is
    `seconds` long, and 3 times that, a padded batch of 4) the median over rounds of each round's median wall and submit ms
    (`warm_ms`, `calls` calls), and whether the output is identical to K = 0's. Then the stages as `transcribe`
    times them, with K = 0 and this build's K alternating."""
    three = mx.concatenate([feats] * 3, axis=1)
    lengths = mx.array([feats.shape[1] - 25 * row for row in range(4)])
    inputs = {
        "1 x 3 s": (feats[:, :50], None),
        f"1 x {seconds:g} s": (feats, None),
        f"1 x {3 * seconds:g} s": (three, None),
    }
    inputs[f"4 x {seconds:g} s, padded"] = (mx.concatenate([feats] * 4), lengths)
    times, outputs = defaultdict(list), {}
    for _ in range(rounds):
        for name, (x, x_lengths) in inputs.items():
            for k in (0, 1, 2, 5, 10):
                with patched((model_module, "ENCODER_PIPELINE_LAYERS", k)):
                    times[name, k].append(warm_ms(lambda: model.encode(x, x_lengths), calls))
                    outputs[name, k] = np.array(model.encode(x, x_lengths))
    rows = []
    for (name, k), measured in times.items():
        wall, submit = (statistics.median(m[i] for m in measured) for i in (0, 1))
        same = bool(np.array_equal(outputs[name, k], outputs[name, 0]))
        rows.append({"input": name, "every_k_layers": k, "ms": wall, "submit_ms": submit, "identical_to_0": same})
    calls_ms, encode = [], model.encode

    def timed_encode(*args):  # the host's part of the encoder in a transcription: building it, submitting parts
        start = time.perf_counter()
        output = encode(*args)
        calls_ms.append(1e3 * (time.perf_counter() - start))
        return output

    for _ in range(2):
        for k in (0, model_module.ENCODER_PIPELINE_LAYERS):
            calls_ms.clear()
            with patched((model_module, "ENCODER_PIPELINE_LAYERS", k), (model, "encode", timed_encode)):
                transcribed = stages_in_transcriptions(model, tokenizer, seconds)
            per_row = len(calls_ms) // len(transcribed)  # each row's passes in turn, the first a warm-up
            for index, row in enumerate(transcribed):
                call_ms = statistics.median(calls_ms[index * per_row + 1 : (index + 1) * per_row])
                rows.append(row | {"every_k_layers": k, "encode_call_ms": call_ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="of the variants in turn (the decode step's first traces and is not counted)",
    )
    parser.add_argument("--stages", action="store_true", help="also profile encoder + adaptor and the prefill")
    parser.add_argument("--only-stages", action="store_true", help="profile only encoder + adaptor and the prefill")
    parser.add_argument(
        "--pipeline", action="store_true", help="only the encoder submitted every K layers (`pipeline_rounds`)"
    )
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (ms/token is timed from the second)")
    model, tokenizer = load(args.model)
    llm = model.llm
    feats = mx.array(features(synthetic_audio(args.seconds)))[None]
    embeddings = prompt_inputs(model, tokenizer, model.encode(feats)[0])[1]
    mx.eval(embeddings)
    if args.pipeline:
        for row in pipeline_rounds(model, tokenizer, feats, args.seconds, args.rounds):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        return
    if args.stages or args.only_stages:
        rows = first_token_stages(model, feats, embeddings) + stages_in_transcriptions(model, tokenizer, args.seconds)
        for row in rows:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.only_stages:
        return
    table = variants(llm)
    traced, times, ids, first_round = {}, {name: [] for name in table}, {}, {}
    for round_ in range(args.rounds):
        for name, changes in table.items():
            llm.__dict__.pop("_greedy_step", None)
            if traced.get(name) is not None:
                object.__setattr__(llm, "_greedy_step", traced[name])  # each variant keeps its own trace
            start = time.perf_counter()
            with patched(*changes):
                rows, _, ms = run_greedy(llm, "compiled step", [embeddings], args.tokens)  # greedy_batch's loop
                ids[name] = rows[0]
            first_round.setdefault(name, time.perf_counter() - start)
            traced[name] = llm.__dict__.pop("_greedy_step", None)  # None where compiling is off
            if round_:
                times[name].append(ms)
    reference = ids[next(iter(table))]
    for name, changes in table.items():
        if traced[name] is not None:
            object.__setattr__(llm, "_greedy_step", traced[name])
        row = {"variant": name, "ms_per_token": statistics.median(times[name]), "runs": times[name]}
        row["first_round_s"] = first_round[name]
        row["same_tokens_as_first_variant"] = sum(a == b for a, b in zip(ids[name], reference))
        with patched(*changes):
            row.update(synchronous_steps(*decoder(llm, embeddings), 32), **gpu_kernels(llm, embeddings))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
