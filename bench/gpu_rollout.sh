#!/usr/bin/env bash
# Issue 11's GPU check, one script (~6-8 min on an H100/H200): Qwen3-0.6B shape, random weights, bf16,
# M = 32. Writes JSON to ${OUT:-bench/results}/. Run from the repository root with the venv active.
#   1. sampler speed: ours (auto = generate on CUDA) vs HF eager generate vs today's loop, 512 tokens,
#      with the memory-bandwidth bound and the fraction of it reached;
#   2. one full GARL step at a 2048-token budget: sampling / scoring / backward split, peak memory;
#   3. scoring peak memory, chunked vs full logits, 4 x 4k tokens;
#   4. prompt sharing (issue 20): one GARL gradient pass at the paper's shape (prompt 1k, rationale
#      2k, M = 32, micro-batch 8, gradient checkpointing), each prompt once vs once per rollout.
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python bench/rollout_speed.py --qwen3 --budget 512 --rollouts 32 --prompts 1 --prompt-len 256 \
  --rounds 1 --variants ours,loop,hf_generate,legacy --out "$OUT/gpu_rollout_speed.json"
python bench/gpu_step.py --budget 2048 --rollouts 32 --prompts 1 --micro-batch 4 --steps 1 \
  --out "$OUT/gpu_step_generate.json"
python bench/score_memory.py --rows 4 --completion 4096 --hidden 1024 --layers 28 \
  --out "$OUT/gpu_score_memory.json"
python bench/prefix_sharing.py --cases qwen3 --rounds 2 --out "$OUT/gpu_prefix_sharing.json"
