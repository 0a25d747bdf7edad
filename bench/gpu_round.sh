#!/usr/bin/env bash
# A GPU session's decode measurements in few commands: a lent machine stays warm only a short while
# between calls, so everything runs in one or two.
#
#   [STEPS="probes host_cost profile kernels exact speed throughput attention_plans cold_graphs graph_sizes first_call"]
#   [BEFORE_OWN_BENCH=1] bash bench/gpu_round.sh SKELETON OUT [BEFORE]
#
# SKELETON  a model directory for bench/random_model.py (the full-size skeleton; random weights).
# OUT       where the JSON lines go (probes, host_cost, step_profile, kernels, exact_gemm, speed, throughput,
#           attention_plans, cold_graphs, graph_sizes, first_call .jsonl).
# BEFORE    optional: a directory holding another build's funasr_nano_mlx package, measured in separate
#           processes alternately with this one (step profile, speed, throughput, first call).
# STEPS     which of the eleven parts run, in that order (default: all). The random weights are made once
#           under WORK (default /tmp/gpu_round) and kept, so that a second call can run the other parts.
# PYTHONPATH must already find mlx, mlx-lm and mlx-audio (and this checkout first). Every step has a
# time limit, so that one that hangs does not take the rest with it.
set -u
skeleton=$1 out=$2 before=${3:-}
steps=" ${STEPS:-probes host_cost profile kernels exact speed throughput attention_plans cold_graphs graph_sizes first_call} "
bench=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/gpu_round}
mkdir -p "$out" "$work"
limit=150  # seconds a script may run
ours() { timeout $limit python3 "$@"; }
if [ -n "$before" ]; then  # the before build runs this checkout's bench scripts, copied out so that its package is not on the path
  rm -rf "$work/bench" && cp -r "$bench" "$work/bench"
fi
theirs() {
  local script=$1 bench_dir=$work/bench
  shift
  # BEFORE_OWN_BENCH=1: the before build's own bench scripts (under BEFORE/bench), for a build whose package today's
  # scripts no longer fit (e.g. 5ff45ef, the build the batch-32 target is measured against).
  [ "${BEFORE_OWN_BENCH:-0}" = 1 ] && bench_dir=$before/bench
  PYTHONPATH="$before:${PYTHONPATH:-}" timeout $limit python3 "$bench_dir/$(basename "$script")" "$@"
}
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
labelled() { sed "s/^/{\"run\": \"$1\", \"row\": /; s/$/}/"; }  # a script's last line, with whose run it was

wants() { [[ $steps == *" $1 "* ]]; }
# speed.py on 10 s of this build with the environment variable $1 set to $2, $3 tokens, its line labelled with the
# setting and appended to $out/$4.
speed_with() {
  env "$1=$2" timeout $limit python3 "$bench/speed.py" --workdir "$work/bf16" --impl ours --seconds 10 --tokens "$3" 2>&1 |
    tail -1 | labelled "ours, $1=$2" | tee -a "$out/$4"
}

step "random weights"
for bits in ${WEIGHTS:-bf16 q4}; do  # WEIGHTS=bf16 leaves out the 4-bit copy where no part needs it
  model=$work/$bits/mlx-full-bfloat16
  [ -f "$model/config.json" ] && continue
  quantize=$([ $bits = q4 ] && echo --bits 4)
  timeout 120 python3 "$bench/random_model.py" "$skeleton" "$model" $quantize > /dev/null || exit 1
done

if wants probes; then
  step "MLX's float32 LayerNorm and softmax in kernels of ours, against MLX's (bit for bit or not)"
  for probe in norm_probe softmax_probe; do
    ours "$bench/$probe.py" 2>&1 | grep '^{' | labelled "$probe" | tee -a "$out/probes.jsonl"
  done
fi

if wants host_cost; then
  step "host cost of one operation by kind, with and without CUDA graphs"
  ours "$bench/host_cost.py" --label graphs 2>&1 | grep '^{' | tee -a "$out/host_cost.jsonl"
  MLX_USE_CUDA_GRAPHS=0 ours "$bench/host_cost.py" --label "no graphs" 2>&1 | grep '^{' | tee -a "$out/host_cost.jsonl"
fi

if wants profile; then
  step "step profile, bf16"
  limit=240
  for run in ours ${before:+theirs}; do
    $run "$bench/step_profile.py" "$work/bf16/mlx-full-bfloat16" --stages 2>&1 | grep '^{' | labelled "$run" | tee -a "$out/step_profile.jsonl"
  done
fi

limit=150
if wants kernels; then
  step "kernels against MLX's ops, bf16 and 4-bit"
  ours "$bench/kernels.py" "$work/bf16/mlx-full-bfloat16" --quick --tokens 64 --label bf16 >> "$out/kernels.jsonl"
  if [ -d "$work/q4" ]; then
    ours "$bench/kernels.py" "$work/q4/mlx-full-bfloat16" --quick --tokens 32 --seconds 2 --label 4bit >> "$out/kernels.jsonl"
  fi
  grep -c . "$out/kernels.jsonl"
fi

if wants exact; then
  step "the encoder's matmuls against cuBLAS's numbers; encoder + adaptor with the product and linear kernels off and on"
  limit=330
  ours "$bench/exact_gemm.py" --frames 167 500 --model "$work/bf16/mlx-full-bfloat16" 2>/dev/null | tee -a "$out/exact_gemm.jsonl" | cut -c1-300
  limit=150
fi

if wants speed; then
  step "speed: 10 s, 128 tokens, separate processes"
  args=(--seconds 10 --tokens 128)
  for run in ours mlx-audio ${before:+theirs} ours ${before:+theirs}; do
    case $run in
      mlx-audio) ours "$bench/speed.py" --workdir "$work/bf16" --impl mlx-audio "${args[@]}" ;;
      *) $run "$bench/speed.py" --workdir "$work/bf16" --impl ours "${args[@]}" ;;
    esac 2>&1 | tail -1 | labelled "$run" | tee -a "$out/speed.jsonl"
  done
  for run in ours ${before:+theirs}; do
    [ -d "$work/q4" ] || break  # WEIGHTS left the 4-bit copy out
    $run "$bench/speed.py" --workdir "$work/q4" --impl ours "${args[@]}" 2>&1 | tail -1 | labelled "$run, 4-bit" | tee -a "$out/speed.jsonl"
  done
fi

limit=240
if wants throughput; then
  step "throughput: 100 clips of 5-30 s, 64 tokens each (one at a time: the first 12)"
  args=(--workdir "$work/bf16" --batch-sizes 1 32 --sequential-files 12)
  ours "$bench/throughput.py" "${args[@]}" --impl ours mlx-audio 2>&1 | grep '^{' | labelled ours | tee -a "$out/throughput.jsonl"
  if [ -n "$before" ]; then
    theirs throughput.py "${args[@]}" --impl ours 2>&1 | grep '^{' | labelled theirs | tee -a "$out/throughput.jsonl"
  fi
fi

if wants attention_plans; then
  step "cuDNN's attention on and off (it planned some new prompt lengths; off, MLX's matmuls and softmax)"
  for setting in 1 0 1 0; do
    speed_with MLX_CUDA_USE_CUDNN_SDPA $setting 128 attention_plans.jsonl
  done
  for setting in 1 0; do
    MLX_CUDA_USE_CUDNN_SDPA=$setting ours "$bench/throughput.py" --workdir "$work/bf16" --batch-sizes 1 32 --sequential-files 25 --impl ours 2>&1 |
      grep '^{' | labelled "ours, MLX_CUDA_USE_CUDNN_SDPA=$setting" | tee -a "$out/attention_plans.jsonl"
  done
fi

if wants cold_graphs; then
  step "a new length's first pass with MLX's CUDA graphs on and off (cold_stages_ms: where the first pass costs)"
  for setting in 1 0 1 0; do
    speed_with MLX_USE_CUDA_GRAPHS $setting 32 cold_graphs.jsonl
  done
fi

if wants graph_sizes; then
  # MLX commits a CUDA graph every MLX_MAX_OPS_PER_BUFFER kernels (100 on an H100; mlx/backend/cuda/device.cpp,
  # get_graph_limits): smaller graphs start the GPU sooner and leave a shorter tail after the host's last kernel, at
  # more launches of graphs. The encoder's 841 kernels at 10 s and the decode's 146 a step, each size twice.
  step "MLX's CUDA graph size: encoder and decode"
  for round in 1 2; do
    for size in 25 50 100 200 1000; do
      speed_with MLX_MAX_OPS_PER_BUFFER $size 128 graph_sizes.jsonl
    done
  done
fi

limit=150
if wants first_call; then
  step "first call in a fresh process"
  for run in ours ${before:+theirs} ours ${before:+theirs}; do
    $run "$bench/first_call.py" "$work/bf16/mlx-full-bfloat16" 2>&1 | tail -1 | labelled "$run" | tee -a "$out/first_call.jsonl"
  done
fi
step "done"
