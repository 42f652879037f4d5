r"""GARL (or PAFT) through Hugging Face TRL: a runnable cold-start example.

    pip install -e ".[trl]"     # from a clone of tsallis-rl (the package is not on PyPI)

    # CPU, tiny random model, no download (about a minute):
    OMP_NUM_THREADS=1 python examples/trl_garl.py
    # a hub model on a GPU (Qwen3 thinking mode; vLLM if installed):
    python examples/trl_garl.py --model Qwen/Qwen3-0.6B --steps 200 --num-generations 8 \
        --max-completion-length 1024 [--use-vllm]
    # a real small model on a CPU (a local folder, a catalog name or a .gguf file; ~17 s a step):
    python examples/trl_garl.py --model smollm2-135m --steps 4 --prompts-per-step 2

What runs where is chosen from the device present, not from the model: on a GPU, bf16 weights
(fp16 where the GPU lacks bf16) and gradient checkpointing; on a CPU, fp32 and no checkpointing.

The task is two-number arithmetic ("12+34=?" -> "46") with an exact-match reward on the text after
`</think>`. A random tiny model never gets a reward, so GRPO does not move; GARL with the
answer-likelihood weight (w = p(y* | x, z), teacher-forced) still trains: watch
`tsallis/mean_log_w_bar` (log P-hat) rise while `reward` stays 0. Compared with a GRPO script, only
the config and trainer classes (and the `tsallis_*` fields) change.
"""

from __future__ import annotations

import argparse
import random

from datasets import Dataset

from tsallis_rl.estimators import get_estimator_spec, list_estimators
from tsallis_rl.integrations.trl import TsallisGRPOConfig, TsallisGRPOTrainer

# every teacher-forced estimator that needs only per-sequence log-probs (what the adapter builds)
ESTIMATORS = [n for n in list_estimators() if get_estimator_spec(n).sequence_only]


def arithmetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    questions, answers = [], []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        questions.append(f"{a}+{b}=?")
        answers.append(str(a + b))
    return questions, answers


def exact_match(completions, answer, **kwargs) -> list[float]:
    """1.0 when the text after the last </think> equals the gold answer (TRL reward signature)."""
    out = []
    for c, a in zip(completions, answer):
        text = c[-1]["content"] if isinstance(c, list) else c  # conversational or plain completions
        out.append(float(text.split("</think>")[-1].strip() == a))
    return out


def device_settings(
    cuda: bool, bf16_ok: bool, checkpointing: str = "activation_checkpointing"
) -> dict:
    """TRL settings for the device present: GPU -> bf16 (or fp16) weights and non-reentrant
    activation checkpointing; CPU -> fp32 and no checkpointing. `checkpointing` is the name this
    transformers gives the option (`activation_checkpointing`; `gradient_checkpointing`, now a
    deprecated alias that warns, before v5)."""
    if not cuda:
        return {"use_cpu": True, "bf16": False, "fp16": False, checkpointing: False,
                "model_init_kwargs": {"dtype": "float32"}}  # fmt: skip
    dtype = "bfloat16" if bf16_ok else "float16"
    return {
        "use_cpu": False, "bf16": bf16_ok, "fp16": not bf16_ok, checkpointing: True,
        f"{checkpointing}_kwargs": {"use_reentrant": False}, "model_init_kwargs": {"dtype": dtype},
    }  # fmt: skip


def checkpointing_name() -> str:
    """The installed transformers' name of the activation-checkpointing option."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (a random local model), a local folder, a catalog name (smollm2-135m), a "
        ".gguf file or a hub id, e.g. Qwen/Qwen3-0.6B; GPU settings if a GPU is present, else CPU",
    )
    ap.add_argument("--estimator", default="garl", choices=ESTIMATORS)
    ap.add_argument("--q", type=float, default=0.75, help="commitment q in [0, 1]")
    ap.add_argument(
        "--weight", default="answer_likelihood", choices=["answer_likelihood", "reward"]
    )
    ap.add_argument("--no-pathwise", action="store_true", help="GARL without the pathwise term")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=4, help="M, rollouts per prompt")
    ap.add_argument(
        "--max-completion-length", type=int, default=16, help="rationale budget + answer"
    )
    ap.add_argument("--lr", type=float, default=None, help="default 3e-3 (tiny) / 1e-6 (hub model)")
    ap.add_argument(
        "--use-vllm", action="store_true", help="generate with vLLM (GPU, colocate mode)"
    )
    ap.add_argument("--output-dir", default="runs/trl_garl")
    ap.add_argument("--seed", type=int, default=0)
    cli = ap.parse_args()

    import warnings

    import torch

    # TRL itself still calls transformers' old name (trl/models/utils.py); nothing a user can act on
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    tiny = cli.model == "tiny"
    cuda = torch.cuda.is_available() and not tiny  # the tiny model is overhead-bound: CPU
    settings = device_settings(cuda, cuda and torch.cuda.is_bf16_supported(), checkpointing_name())
    questions, answers = arithmetic(256, cli.seed)
    if tiny:
        from tsallis_rl.models.tiny import build_char_tokenizer, build_tiny_causal_lm

        tokenizer = build_char_tokenizer()  # no chat template: plain-text prompts
        model = build_tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=4)
        prompts = questions
    else:
        from tsallis_rl.models.catalog import resolve_model

        tokenizer = None  # TRL loads the model's own tokenizer / chat template
        model = str(resolve_model(cli.model) or cli.model)  # weights: dtype from model_init_kwargs
        prompts = [
            [{"role": "user", "content": f"Compute {q} Answer with the number only."}]
            for q in questions
        ]
    dataset = Dataset.from_dict({"prompt": prompts, "answer": answers})

    args = TsallisGRPOConfig(
        output_dir=cli.output_dir,
        # -- the GRPO settings, unchanged --
        per_device_train_batch_size=cli.prompts_per_step * cli.num_generations,
        num_generations=cli.num_generations,
        max_completion_length=cli.max_completion_length,
        learning_rate=cli.lr if cli.lr is not None else (3e-3 if tiny else 1e-6),
        max_steps=cli.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cli.seed,
        use_vllm=cli.use_vllm,
        vllm_mode="colocate",
        **{**settings, **({"model_init_kwargs": None} if tiny else {})},
        # -- the Tsallis settings --
        tsallis_estimator=cli.estimator,
        tsallis_q=cli.q,
        tsallis_weight=cli.weight,
        tsallis_answer_column="answer",
        tsallis_answer_prefix="auto",  # the own trainer's rule: "\n\n" with a chat template, else ""
        tsallis_think_end="</think>",
        tsallis_pathwise=not cli.no_pathwise,
    )
    trainer = TsallisGRPOTrainer(
        model,
        reward_funcs=exact_match,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()

    logs = [log for log in trainer.state.log_history if "reward" in log]
    key = "tsallis/mean_log_w_bar"
    print(f"steps {len(logs)}: reward {logs[0]['reward']:.3f} -> {logs[-1]['reward']:.3f}")
    if key in logs[0]:
        print(f"log P-hat (mean log w_bar): {logs[0][key]:.3f} -> {logs[-1][key]:.3f}")


if __name__ == "__main__":
    main()
