#!/usr/bin/env bash
# A GPU session's decode measurements in one command: a lent machine stays warm only a short while
# between calls, so everything runs in one.
#
#   bash bench/gpu_round.sh SKELETON OUT [BEFORE]
#
# SKELETON  a model directory for bench/random_model.py (the full-size skeleton; random weights).
# OUT       where the JSON lines go (step_profile, kernels, speed, first_call .jsonl).
# BEFORE    optional: a directory holding another build's funasr_nano_mlx package, measured in separate
#           processes alternately with this one (speed, first call).
# PYTHONPATH must already find mlx, mlx-lm and mlx-audio (and this checkout first). Every step has a
# time limit, so that one that hangs does not take the rest with it.
set -u
skeleton=$1 out=$2 before=${3:-}
bench=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mkdir -p "$out"
ours() { timeout 150 python3 "$@"; }
theirs() {  # the before build: bench scripts copied out of this checkout, so its package is not on the path
  [ -d "$work/bench" ] || cp -r "$bench" "$work/bench"
  local script=$1
  shift
  PYTHONPATH="$before:${PYTHONPATH:-}" timeout 150 python3 "$work/bench/$(basename "$script")" "$@"
}
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }
labelled() { sed "s/^/{\"run\": \"$1\", \"row\": /; s/$/}/"; }  # a script's last line, with whose run it was

step "random weights"
timeout 120 python3 "$bench/random_model.py" "$skeleton" "$work/bf16/mlx-full-bfloat16" > /dev/null || exit 1
timeout 120 python3 "$bench/random_model.py" "$skeleton" "$work/q4/mlx-full-bfloat16" --bits 4 > /dev/null || exit 1

step "step profile, bf16"
timeout 240 python3 "$bench/step_profile.py" "$work/bf16/mlx-full-bfloat16" | tee -a "$out/step_profile.jsonl"
step "kernels against MLX's ops, bf16 and 4-bit"
timeout 150 python3 "$bench/kernels.py" "$work/bf16/mlx-full-bfloat16" --quick --tokens 64 --label bf16 >> "$out/kernels.jsonl"
timeout 120 python3 "$bench/kernels.py" "$work/q4/mlx-full-bfloat16" --quick --tokens 32 --seconds 2 --label 4bit >> "$out/kernels.jsonl"

step "speed: 10 s, 128 tokens, separate processes"
args=(--seconds 10 --tokens 128)
for run in ours mlx-audio ${before:+theirs}; do
  case $run in
    ours) ours "$bench/speed.py" --workdir "$work/bf16" --impl ours "${args[@]}" ;;
    mlx-audio) ours "$bench/speed.py" --workdir "$work/bf16" --impl mlx-audio "${args[@]}" ;;
    theirs) theirs speed.py --workdir "$work/bf16" --impl ours "${args[@]}" ;;
  esac 2>&1 | tail -1 | labelled "$run" | tee -a "$out/speed.jsonl"
done
ours "$bench/speed.py" --workdir "$work/q4" --impl ours "${args[@]}" 2>&1 | tail -1 | labelled "ours, 4-bit" | tee -a "$out/speed.jsonl"

step "first call in a fresh process"
for run in ours ${before:+theirs} ours ${before:+theirs}; do
  $run "$bench/first_call.py" "$work/bf16/mlx-full-bfloat16" 2>&1 | tail -1 | labelled "$run" | tee -a "$out/first_call.jsonl"
done
step "done"
rm -rf "$work"
