#!/usr/bin/env bash
# GARL (or PAFT) on Qwen3-0.6B with verl 0.9: one node of 8 GPUs; multi-node at the bottom.
#
#   pip install -e ".[verl]" vllm     # from a clone (not on PyPI); verl pins transformers<5.11:
#                                     # a GPU venv of its own. Or: pip install "tsallis-rl[verl] @ git+URL"
#   bash examples/verl/run_garl_qwen3_0.6b.sh                        # FinQA, warm start, GARL q=0.75
#   TASK=hotpotqa DATA=../shared/data/hotpotqa ESTIMATOR=paft Q=0.75 \
#       bash examples/verl/run_garl_qwen3_0.6b.sh trainer.total_epochs=20    # extra args go to verl
#   WEIGHT=teacher_forced REGIME=cold bash examples/verl/run_garl_qwen3_0.6b.sh  # the paper's weights
#
# WEIGHT: reward (default) weights each rollout by its 0/1 reward, through verl's own trainer.
# WEIGHT=teacher_forced uses the paper's w = p(y*|x, z) and the pathwise term: it launches
# `python -m tsallis_rl.integrations.verl_trainer` (verl's legacy trainer, trainer.use_v1=False,
# whose actor update first rebuilds each rollout as [x, z, </think>, y*]; docs/verl.md). That mode
# is tested on CPU piece by piece (the splice, the gradient through verl's loss, verl's real FSDP
# actor in one process) but has NOT been run end to end here: verl 0.9 has no CPU rollout and
# this project has no vLLM GPU machine. For a tested cold start use `tsallis-rl train` or the TRL
# adapter (tsallis_weight="answer_likelihood").
#
# TRAINING STEPS: verl drops the last incomplete batch, so a run makes
# floor(train rows / PROMPTS_PER_STEP) x trainer.total_epochs steps. The default data
# (../shared/data/finqa: train_100.json, 100 questions) with PROMPTS_PER_STEP=64 and one epoch gives
# ONE training step: a smoke test, not a run. For a real run export the full FinQA train split
# (6,145 questions: 96 steps per epoch) or pass trainer.total_epochs / PROMPTS_PER_STEP.
#
# COLD START: with REGIME=cold the 0/1 rewards of a cold model are all 0, so every group gets
# weight 0 and no gradient (like GRPO). This script refuses REGIME=cold with WEIGHT=reward unless
# ALLOW_COLD_REWARD=1; the paper's cold-start escape needs the teacher-forced weight
# w = p(y*|x, z): WEIGHT=teacher_forced here (untested end to end), or `tsallis-rl train` / the
# TRL adapter (tsallis_weight="answer_likelihood"), which are tested.
#
# The paper's setting (METHOD.md section 5): M = 32 rollouts per prompt, q = 0.75 to escape a cold
# start, exact-match training reward, 16 validation samples scored by substring match. What differs
# from the paper with WEIGHT=reward: w_m is the 0/1 sampled reward, not the teacher-forced
# p(y*|x, z_m), so there is no pathwise term and an all-wrong group gives no gradient; verl does no
# budget forcing (a response cut at max_response_length scores 0). WEIGHT=teacher_forced has the
# paper's weights and budget-forces `</think>` in the actor update.
set -euo pipefail

TASK=${TASK:-finqa}                          # finqa | hotpotqa | musique | jsonl | rg:<spec>
DATA=${DATA:-../shared/data/finqa}           # file or directory the task reads (none for rg:)
REGIME=${REGIME:-warm}                       # warm: instructions in the prompt; cold: linearised
ESTIMATOR=${ESTIMATOR:-garl}                 # garl (Algorithm 1) | paft (Algorithm 2)
Q=${Q:-0.75}                                 # commitment q in [0, 1]
MODEL=${MODEL:-Qwen/Qwen3-0.6B}
OUT=${OUT:-data/verl/${TASK//[:\/]/_}_${REGIME}}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PROMPTS_PER_STEP=${PROMPTS_PER_STEP:-64}     # x 32 rollouts = 2048 sequences per step
MAX_RESPONSE=${MAX_RESPONSE:-4096}           # the paper's FinQA budget (HotPotQA 3072, MuSiQue 2048)
WEIGHT=${WEIGHT:-reward}                     # reward | teacher_forced (w = p(y*|x, z), see above)

case "$WEIGHT" in
  reward)
    ENTRY=verl.trainer.main_ppo
    MODE_ARGS=() ;;
  teacher_forced)
    ENTRY=tsallis_rl.integrations.verl_trainer
    MODE_ARGS=(
      +algorithm.tsallis_weight=teacher_forced
      # verl's legacy trainer: the one whose actor update is overridden
      trainer.use_v1=False
      # log w sums log-probs over y*: verl's FSDP engine computes in bf16 unless told otherwise,
      # and bf16 log-probs differ from fp32 by up to 0.02 per token
      "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
    ) ;;
  *) echo "WEIGHT must be reward or teacher_forced, got '$WEIGHT'" >&2; exit 2 ;;
esac

if [[ "$REGIME" == cold && "$WEIGHT" == reward && "${ALLOW_COLD_REWARD:-0}" != 1 ]]; then
  cat >&2 <<'MSG'
==================================================================================================
REFUSING: REGIME=cold with verl's 0/1 reward weights. A cold model answers (almost) nothing right,
so every group's weights are 0 and GARL/PAFT get no gradient here, exactly like GRPO. The paper's
cold-start escape uses the teacher-forced weight w = p(y*|x, z), which reward weights do not carry:
run `tsallis-rl train --regime cold ...` or the TRL adapter (tsallis_weight=
"answer_likelihood") instead (tested), or WEIGHT=teacher_forced here (not run end to end).
Set ALLOW_COLD_REWARD=1 to run this anyway.
==================================================================================================
MSG
  exit 2
fi

# 1. data: verl parquet (train/val/test) + reward_fn.py with this project's matching
if [[ ! -f "$OUT/train.parquet" ]]; then
  if [[ "$TASK" == rg:* ]]; then
    tsallis-rl export verl --task "$TASK" --regime "$REGIME" --out "$OUT"
  else
    tsallis-rl export verl --task "$TASK" --data "$DATA" --regime "$REGIME" --out "$OUT"
  fi
fi
VAL="$OUT/val.parquet"; [[ -f "$VAL" ]] || VAL="$OUT/test.parquet"

# 2. make verl import tsallis_rl.integrations.verl in every process (registers garl and paft).
#    pip's verl.plugins entry point does the same; the variable makes it explicit. Ray workers on
#    this node inherit it; on other nodes it travels in the runtime_env set below.
export VERL_USE_EXTERNAL_MODULES=tsallis_rl.integrations.verl

python3 -m "$ENTRY" \
  `# --- the tsallis-specific settings -------------------------------------------------------` \
  "${MODE_ARGS[@]}" \
  algorithm.adv_estimator="$ESTIMATOR" \
  +algorithm.tsallis_q="$Q" \
  `# PAFT only: K resampled rollouts per prompt (default K = M = rollout.n):` \
  `# +algorithm.tsallis_num_samples=32 +algorithm.tsallis_seed=0` \
  `# w = the score, which must lie in [0, 1]: no KL penalty folded into the reward` \
  algorithm.use_kl_in_reward=False \
  `# seq-mean-token-sum: verl's loss is -(1/N) sum_i A_i log p(response_i), whose gradient is the` \
  `# core estimator's (token-mean would weight each response by its length)` \
  actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum \
  actor_rollout_ref.actor.policy_loss.loss_mode=vanilla \
  `# the J_Q objective has no KL or entropy term` \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.entropy_coeff=0 \
  `# one optimiser step per rollout batch: ratio 1, the estimator exactly (with WEIGHT=reward smaller` \
  `# mini-batches are fine too, the later ones slightly off-policy and PPO-clipped; teacher_forced` \
  `# refuses them: they would clip the pathwise term)` \
  actor_rollout_ref.actor.ppo_mini_batch_size="$PROMPTS_PER_STEP" \
  actor_rollout_ref.actor.ppo_epochs=1 \
  `# M = 32 rollouts per prompt, sampled at temperature 1 (the estimators assume z ~ p_theta)` \
  actor_rollout_ref.rollout.n=32 \
  actor_rollout_ref.rollout.temperature=1.0 \
  actor_rollout_ref.rollout.top_p=1.0 \
  actor_rollout_ref.rollout.top_k=-1 \
  `# reward: exact match on the text after </think> (reward_fn.py written by the export)` \
  reward.custom_reward_function.path="$OUT/reward_fn.py" \
  reward.custom_reward_function.name=compute_score \
  `# validation: 16 samples per prompt; verl logs mean@16 / best@16 / maj@16 of every key the reward` \
  `# returns (maj@N votes on its "pred"). mean@16 of substring_match is the paper's p@1; best@16 and` \
  `# maj@16 are bootstrap estimates, not the paper's p@16 / m@16: run tsallis-rl eval (docs/verl.md)` \
  actor_rollout_ref.rollout.val_kwargs.n=16 \
  actor_rollout_ref.rollout.val_kwargs.do_sample=True \
  actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
  `# --- the usual verl settings ----------------------------------------------------------------` \
  data.train_files="$OUT/train.parquet" \
  data.val_files="$VAL" \
  data.train_batch_size="$PROMPTS_PER_STEP" \
  data.max_prompt_length=2048 \
  data.max_response_length="$MAX_RESPONSE" \
  data.filter_overlong_prompts=True \
  data.truncation=error \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.model.use_remove_padding=True \
  actor_rollout_ref.model.enable_gradient_checkpointing=True \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.use_dynamic_bsz=True \
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=32768 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  trainer.nnodes="$NNODES" \
  trainer.logger='[console]' \
  trainer.project_name=tsallis-rl \
  trainer.experiment_name="${ESTIMATOR}_q${Q}_${TASK//[:\/]/_}_${REGIME}" \
  trainer.val_before_train=True \
  trainer.test_freq=10 \
  trainer.save_freq=50 \
  trainer.total_epochs=1 \
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=tsallis_rl.integrations.verl \
  "$@"

# Multi-node (N nodes of 8 GPUs): install the same venv on every node, start Ray, then run this
# script once, on the head node, with NNODES=N:
#   head:    ray start --head --port=6379
#   workers: ray start --address=<head-ip>:6379
#   head:    NNODES=N PROMPTS_PER_STEP=$((64*N)) bash examples/verl/run_garl_qwen3_0.6b.sh
# main_ppo joins the running cluster; the runtime_env line above carries VERL_USE_EXTERNAL_MODULES
# to every worker. The data and reward_fn.py paths must be readable on every node (shared disk).
# Watch critic/advantages/max: for garl it is the paper's max_m c_m / M**q (Fig. 3), which leaves 0
# when a cold start escapes.
