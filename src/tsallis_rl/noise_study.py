"""The noise study: does label-noise memorisation follow Prop. C.2 in a real network, and does a q
schedule both escape a cold start and stay clean?

`tsallis-rl study noise` trains GARL and PAFT on chain-sum with `?noise=EPS` (tasks.noise: a seeded
fraction eps of the training sums is wrong, fixed for the run; validation and test stay clean) over
q x eps x regime x seed, plus q schedules (1 -> 0.25 linear and step, the trainer's `q_schedule`).
It reuses the escape study's machinery: the grid is trained by `escape_study.train_grid` (the one
worker pool, `suite.train_pool`, with finished runs kept on --resume), the escape step is its
detector (`escape_study.escape_time`), and the outputs go through `escape_study.write_outputs`.

Per run, at every validation evaluation (every `eval_every` steps), `NoiseTrainer` adds a
memorisation probe on the corrupted training examples (`label_log_p_hat`): for each one, k
rationales z_1..z_k are sampled from the model at the evaluation temperature and both labels are
teacher-forced after each, giving

    P-hat(y | x) = (1/k) sum_j p(prefix + y + end | x, z_j)

for y = the corrupted (noisy) label and y = the clean label, on the SAME rationales: exactly the
quantity the evaluation reports as log P-hat (and the estimators' w-bar, there at the training
temperature), an unbiased estimate of the model's marginal P(y | x). The probe logs the means over
the corrupted examples of P-hat(noisy) ("memorisation", p~) and P-hat(clean), and how many of
those sampled rationales are the exact clean chain of running totals.

What the theory predicts (METHOD.md Prop. C.2): for ONE input whose label is the clean one with
frequency 1 - eps and a single noise label with frequency eps, gradient flow on l_q settles at
contamination p~* with p~*/(1 - p~*) = (eps/(1-eps))^(1/q) (the escort minimiser), so
p~* ~ (eps/(1-eps))^(1/q) while it is small; the exact root is eps at q = 1 (where the
approximation gives eps/(1-eps)) and -> 0 as q -> 0. Each corrupted example here always carries its wrong sum, so a model that memorises single
examples would drive p~ -> 1 at every q > 0 (only the time to get there depends on q); a model that
cannot tell corrupted examples apart sees the task's rule with frequency 1 - eps and wrong answers
with frequency eps, the theory's setting (with the noise mass spread over many wrong sums). The
report shows the measured end-of-run p~ and 1 - P-hat(clean) beside (eps/(1-eps))^(1/q) (the final
q for a schedule) and the exact root of the drift (`theory_contamination`).

Collapse: a run whose validation p@1 peaks at >= `collapse_min_peak` and later falls below
`collapse_fraction` x its peak at some evaluation has collapsed, at the first such step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tsallis_rl import escape_study
from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import ConfigError
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.evaluation import eval_seed, example_seed
from tsallis_rl.io import read_jsonl
from tsallis_rl.rollout import SamplingSettings, sample, token_logps
from tsallis_rl.sequences import ANSWER
from tsallis_rl.suite import run_tag, train_run
from tsallis_rl.tasks.chainsum import DIAL_FORMS
from tsallis_rl.tasks.noise import clean_example, is_noisy, parse_noise
from tsallis_rl.trainer import Trainer

# --------------------------------------------------------------------------------------------------
# The memorisation probe (the math) and the trainer that runs it at every evaluation


@torch.no_grad()
def label_log_p_hat(
    policy: torch.nn.Module,
    prompts: list[list[int]],
    labels: list[list[list[int]]],
    settings: SamplingSettings,
    *,
    k: int,
    seed: int,
    micro_batch: int = 16,
    share_prompt: bool = True,
) -> tuple[Tensor, list[Any]]:
    """log P-hat of several labels per prompt, all on the same k sampled rationales.

    prompts [N] token ids; labels [N][L]: L teacher-forced answers per prompt (prefix + y + end
    token). Example i samples its k rationales from its own seed (`example_seed(seed, i)`, as the
    evaluation does); each label is forced after each rationale and scored at the sampling
    temperature. Returns (log P-hat [N, L] float64 with log P-hat = log mean_j p(label | x, z_j),
    the N * k rollouts, example-major).
    """
    n = len(prompts)
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64), []
    n_labels = len(labels[0])
    was_training = policy.training
    policy.eval()
    try:
        rows = [p for p in prompts for _ in range(k)]
        rollouts = sample(
            policy, rows, settings, group_seeds=[example_seed(seed, i) for i in range(n)]
        )
        out = []
        for li in range(n_labels):
            forced = [r.with_answer(labels[j // k][li]) for j, r in enumerate(rollouts)]
            logp, regions = token_logps(
                policy, forced, pad_id=settings.pad_id, micro_batch=micro_batch,
                share_prompt=share_prompt,
            )  # fmt: skip
            ans = (logp * (regions == ANSWER)).sum(-1).double().view(n, k)
            out.append(torch.logsumexp(ans, dim=1) - math.log(k))
    finally:
        policy.train(was_training)
    return torch.stack(out, dim=1), rollouts


class NoiseTrainer(Trainer):
    """The trainer plus the memorisation probe after every validation evaluation (metrics.jsonl
    records of kind "noise"), and the corruption count in final.json. Training is unchanged."""

    def noisy_examples(self) -> list[Any]:
        """The corrupted training examples probed: the first val_size of them in split order."""
        noisy = [ex for ex in self.splits["train"] if is_noisy(ex)]
        return noisy[: self.cfg.val_size]

    def memorisation(self) -> dict[str, float]:
        """Mean P-hat of the noisy and of the clean label over the probed corrupted examples, their
        mean logs, and the fraction of the probe's sampled rationales that are the clean chain."""
        examples = self.noisy_examples()
        cfg = self.cfg
        labels = [
            [self.formatter.gold(ex), self.formatter.gold(clean_example(ex))] for ex in examples
        ]
        settings = self._sampling(answer_budget=0, temperature=cfg.eval_temperature)
        log_p, rollouts = label_log_p_hat(
            self.policy, [self.prompt_ids(ex) for ex in examples], labels, settings,
            k=cfg.eval_k, seed=eval_seed(cfg.seed, self.step, "noise"),
            micro_batch=cfg.micro_batch, share_prompt=cfg.share_prompt,
        )  # fmt: skip
        out = {
            "n": float(len(examples)),
            "p_noisy": float(log_p[:, 0].exp().mean()),
            "p_clean": float(log_p[:, 1].exp().mean()),
            "log_p_noisy": float(log_p[:, 0].mean()),
            "log_p_clean": float(log_p[:, 1].mean()),
        }
        if hasattr(self.task, "rationale_correct"):
            k = cfg.eval_k
            ok = [
                self.task.rationale_correct(self.formatter.decode(r), examples[j // k])
                for j, r in enumerate(rollouts)
            ]
            out["rationale_correct"] = sum(ok) / len(ok)
        return out

    def _eval_and_log(self, mkey: str) -> None:
        super()._eval_and_log(mkey)
        if self.loggers and self.noisy_examples():
            self.loggers.log({"kind": "noise", "step": self.step, **self.memorisation()})


noise_train_run = functools.partial(train_run, trainer_cls=NoiseTrainer)
"""`suite.train_run` with a `NoiseTrainer`: the pool's runner (a picklable module-level partial)."""


# --------------------------------------------------------------------------------------------------
# Pure functions: collapse, theory


def collapse_step(
    steps: list[float], p1: list[float], *, fraction: float = 0.5, min_peak: float = 0.2
) -> dict[str, Any]:
    """Peak of a validation p@1 curve and the first later step where p@1 < fraction x peak.

    steps, p1 [N]. The peak is the first maximum; a peak below `min_peak` is no peak (nothing to
    collapse from). Returns {"peak", "peak_step", "collapsed", "collapse_step" (None if not)}.
    """
    if not p1:
        return {"peak": None, "peak_step": None, "collapsed": False, "collapse_step": None}
    i = int(np.argmax(p1))
    out = {
        "peak": float(p1[i]),
        "peak_step": int(steps[i]),
        "collapsed": False,
        "collapse_step": None,
    }
    if p1[i] < min_peak:
        return out
    for s, v in zip(steps[i + 1 :], p1[i + 1 :]):
        if v < fraction * p1[i]:
            return {**out, "collapsed": True, "collapse_step": int(s)}
    return out


def theory_contamination(q: float, eps: float) -> dict[str, float]:
    """Prop. C.2's equilibrium contamination for label-noise frequency eps at commitment q.

    "approx": (eps/(1-eps))^(1/q), the form the paper states; "exact": the root p~* of the drift
    eps p~^-q = (1-eps)(1-p~)^-q, i.e. p~*/(1-p~*) = (eps/(1-eps))^(1/q) (the escort minimiser;
    = eps at q = 1). Both 0 at eps = 0 or q = 0.
    """
    if eps == 0.0 or q == 0.0:
        return {"approx": 0.0, "exact": 0.0}
    ratio = (eps / (1 - eps)) ** (1 / q)
    return {"approx": ratio, "exact": ratio / (1 + ratio)}


# --------------------------------------------------------------------------------------------------
# The grid


REGIMES = ("warm", "cold")
SCHEDULES = ("linear", "step", "cosine")  # the trainer's non-constant q schedules


@dataclass
class NoiseStudyConfig:
    """The study grid and the options it changes from TrainConfig's defaults (the rest are kept).

    Warm = the warm prompt and the warm answer `A:<sum>` the base model already writes (p0 ~ 1);
    cold = the cold prompt with the chain-sum dial `cold_dial`'s answer (dial 2: p0 ~ e^-22).
    Every constant q runs for every estimator x eps x regime x seed, every schedule (q_start ->
    q_end; the step schedule switches at `switch_step`, default steps // 2) for those in the
    `schedule_regimes` (default cold: the issue's question is escape + staying clean).
    The training split is small (`train_size`) so that each corrupted example is seen many times;
    the memorisation probe takes the first `val_size` corrupted examples.
    """

    q: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    noise: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4])
    estimators: list[str] = field(default_factory=lambda: ["garl", "paft"])
    regimes: list[str] = field(default_factory=lambda: ["warm", "cold"])
    schedules: list[str] = field(default_factory=lambda: ["linear", "step"])
    schedule_regimes: list[str] = field(default_factory=lambda: ["cold"])
    q_start: float = 1.0
    q_end: float = 0.25
    switch_step: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    cold_dial: int = 2
    optimizer: str = "adam"
    lr: float = 1e-4
    max_grad_norm: float = 0.0
    steps: int = 100
    eval_every: int = 10
    train_size: int = 64
    val_size: int = 16
    eval_k: int = 4
    collapse_fraction: float = 0.5
    collapse_min_peak: float = 0.2
    escape_p1: float = 0.5
    memo_threshold: float = 0.01
    workers: int = 2
    threads: int = 2
    model: str | None = None

    def validate(self) -> NoiseStudyConfig:
        """Raise ConfigError naming the first bad grid value or option; returns self."""
        if not (self.q or self.schedules) or not self.noise or not self.estimators:
            raise ConfigError("--q (or --schedules), --noise and --estimators need a value each")
        if not self.regimes or not self.seeds:
            raise ConfigError("--regime and --seeds need at least one value each")
        bad_eps = [e for e in self.noise if not 0.0 <= e < 1.0]
        if bad_eps:
            raise ConfigError(f"--noise: every eps must lie in [0, 1), got {bad_eps}")
        self.noise = [parse_noise(e) for e in self.noise]
        for name, values in (("q", self.q), ("q-start", [self.q_start]), ("q-end", [self.q_end])):
            bad = [v for v in values if not 0.0 <= v <= 1.0]
            if bad:
                raise ConfigError(f"--{name}: every q must lie in [0, 1], got {bad}")
        for name, values, known in (
            ("regime", self.regimes, REGIMES), ("schedules", self.schedules, SCHEDULES),
            ("schedule-regimes", self.schedule_regimes, REGIMES),
        ):  # fmt: skip
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ConfigError(f"--{name}: unknown {unknown}; known: {', '.join(known)}")
        for est in self.estimators:
            try:
                spec = get_estimator_spec(est)
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"--estimators: {exc}") from None
            if not spec.uses_q:
                raise ConfigError(f"--estimators: {est} takes no q; the study sweeps q")
        if not 0 <= self.cold_dial < len(DIAL_FORMS):
            raise ConfigError(f"--cold-dial must lie in 0..{len(DIAL_FORMS) - 1}")
        for name in ("steps", "eval_every", "train_size", "val_size", "eval_k",
                     "workers", "threads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.model is not None and not Path(self.model).is_dir():
            raise ConfigError(
                f"--model {self.model}: no such folder (a saved chain-sum base model)"
            )
        for cfg in self.train_configs(Path(".")).values():
            cfg.validate("study")
        return self

    def q_settings(self) -> list[dict[str, Any]]:
        """The q of every run: {"q", "q_schedule", "q_end", "q_switch_step", "final_q"}."""
        out = [
            {"q": float(q), "q_schedule": "constant", "q_end": None, "q_switch_step": None,
             "final_q": float(q)}
            for q in self.q
        ]  # fmt: skip
        for sched in self.schedules:
            switch = self.steps // 2 if self.switch_step is None else self.switch_step
            out.append(
                {"q": self.q_start, "q_schedule": sched, "q_end": self.q_end,
                 "q_switch_step": switch if sched == "step" else None, "final_q": self.q_end}
            )  # fmt: skip
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every run: estimator, q setting, eps, regime, seed and its tag (stable order)."""
        runs = []
        for regime in self.regimes:
            for est in self.estimators:
                for qs in self.q_settings():
                    if qs["q_schedule"] != "constant" and regime not in self.schedule_regimes:
                        continue
                    for eps in self.noise:
                        for seed in self.seeds:
                            method = run_tag(est, qs["q"], True, qs["q_schedule"], qs["q_end"])
                            tag = f"{method}_eps{eps:g}_{regime}_s{seed}"
                            runs.append({"tag": tag, "method": method, "estimator": est,
                                         "eps": eps, "regime": regime, "seed": seed, **qs})  # fmt: skip
        return runs

    def task_name(self, regime: str, eps: float) -> str:
        base = (
            "chainsum?answer_form=warm" if regime == "warm" else f"chainsum?dial={self.cold_dial}"
        )
        return f"{base}&noise={eps:g}"

    def train_configs(self, out: Path) -> dict[str, TrainConfig]:
        """TrainConfig of every run, keyed by its tag (directory name under out/runs)."""
        configs = {}
        for r in self.grid():
            configs[r["tag"]] = TrainConfig(
                model=self.model, task=self.task_name(r["regime"], r["eps"]), regime=r["regime"],
                estimator=r["estimator"], estimators=None, q=r["q"], q_schedule=r["q_schedule"],
                q_end=r["q_end"], q_switch_step=r["q_switch_step"], optimizer=self.optimizer,
                lr=self.lr, max_grad_norm=self.max_grad_norm, steps=self.steps,
                eval_every=self.eval_every, eval_k=self.eval_k, train_size=self.train_size,
                val_size=self.val_size, test_size=0, save_every=0, seed=r["seed"],
                threads=self.threads, workers=1, progress=False, out=str(out / "runs" / r["tag"]),
            )  # fmt: skip
        return configs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_grid(cfg: NoiseStudyConfig, out: Path, *, resume: bool = False) -> dict[str, dict]:
    """Every run of the grid through the escape study's `train_grid` (the one worker pool), each
    with `NoiseTrainer` (the memorisation probe)."""
    return escape_study.train_grid(cfg, out, resume=resume, runner=noise_train_run)


# --------------------------------------------------------------------------------------------------
# Analysis


def noise_curve(run_dir: Path) -> dict[str, list[float]]:
    """The run's memorisation probe records: step, p_noisy, p_clean, rationale_correct (lists)."""
    rows = sorted(
        (r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "noise"),
        key=lambda r: r["step"],
    )
    keys = ("p_noisy", "p_clean", "log_p_noisy", "log_p_clean", "rationale_correct")
    out = {"step": [float(r["step"]) for r in rows]}
    out.update({k: [float(r.get(k, math.nan)) for r in rows] for k in keys})
    return out


def analyse(cfg: NoiseStudyConfig, out: Path) -> dict[str, Any]:
    """Per-run curves and end-of-run numbers, then the per-setting means over seeds."""
    runs = []
    for r in cfg.grid():
        run_dir = out / "runs" / r["tag"]
        val = escape_study.probe_curve(run_dir)
        if not val["step"]:
            raise ValueError(f"run {r['tag']}: no validation evaluation in its metrics.jsonl")
        memo = noise_curve(run_dir)
        runs.append({**r, "val": val, "memo": memo})
    return summarise(cfg, runs)


def reanalyse(cfg: NoiseStudyConfig, results: dict[str, Any]) -> dict[str, Any]:
    """`analyse` again from a results.json's stored runs (their curves) with cfg's thresholds;
    no run is needed."""
    out = summarise(cfg, [dict(r) for r in results["runs"]])
    if "wall_seconds" in results:
        out["wall_seconds"] = results["wall_seconds"]
    return out


def summarise(cfg: NoiseStudyConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """End-of-run numbers of each run (escape, collapse, final p~) and the means per setting."""
    for r in runs:
        val, memo = r["val"], r["memo"]
        esc = escape_study.escape_time(np.array(val["step"]), np.array(val["p@1"]), cfg.escape_p1)
        r["escape_p1"] = dataclasses.asdict(esc)
        r.update(collapse_step(val["step"], val["p@1"], fraction=cfg.collapse_fraction,
                               min_peak=cfg.collapse_min_peak))  # fmt: skip
        r["final_p1"] = val["p@1"][-1]
        r["final_rationale_correct"] = val["rationale_correct"][-1]
        last = {k: (v[-1] if v else None) for k, v in memo.items()}
        r["final_p_noisy"], r["final_p_clean"] = last["p_noisy"], last["p_clean"]
        r["final_memo_rationale_correct"] = last["rationale_correct"]
        r["theory"] = theory_contamination(r["final_q"], r["eps"])
        r["memo_onset"] = None  # first probe with mean P(noisy) >= memo_threshold
        if memo["step"]:
            onset = escape_study.escape_time(
                np.array(memo["step"]), np.array(memo["p_noisy"]), cfg.memo_threshold
            )
            r["memo_onset"] = dataclasses.asdict(onset)
    settings = []
    keys = ("final_p1", "peak", "final_p_noisy", "final_p_clean", "final_rationale_correct")
    seen: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        seen.setdefault((r["regime"], r["method"], r["eps"]), []).append(r)
    for (regime, method, eps), group in seen.items():
        row: dict[str, Any] = {"regime": regime, "method": method, "eps": eps,
                               "estimator": group[0]["estimator"], "final_q": group[0]["final_q"],
                               "q_schedule": group[0]["q_schedule"], "runs": len(group)}  # fmt: skip
        for k in keys:
            vals = [g[k] for g in group if g[k] is not None and not math.isnan(g[k])]
            row[k] = float(np.mean(vals)) if vals else None
            row[k + "_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        row["collapsed"] = sum(g["collapsed"] for g in group)
        escaped = [g["escape_p1"]["step"] for g in group if not g["escape_p1"]["censored"]]
        row["escaped"] = len(escaped)
        row["escape_step_median"] = float(np.median(escaped)) if escaped else None
        onsets = [g["memo_onset"] for g in group if g["memo_onset"] is not None]
        reached = [o["step"] for o in onsets if not o["censored"]]
        row["memorised"] = len(reached) if onsets else None
        row["memo_step_median"] = float(np.median(reached)) if reached else None
        row["theory"] = group[0]["theory"]
        settings.append(row)
    return {"runs": runs, "settings": settings}


# --------------------------------------------------------------------------------------------------
# Outputs (written by escape_study.write_outputs)

OUTPUT_NAMES = ("report.md", "results.json", "config.yaml", "memorisation.png", "accuracy.png")
_f = escape_study._f


def settings_table(settings: list[dict[str, Any]]) -> str:
    """Markdown table of every setting: accuracy, escape, collapse, memorisation beside theory."""

    def pm(row: dict[str, Any], key: str, spec: str = ".2f") -> str:
        sd = row.get(key + "_sd")
        return _f(row[key], spec) + (f" ± {sd:{spec}}" if sd is not None else "")

    rows = [
        "| regime | method | eps | final q | final val p@1 | peak p@1 | escaped (median step) "
        "| collapsed | final p~ (noisy) | final P(clean) on corrupted | theory (eps/(1-eps))^(1/q) "
        "| theory exact root | p~ reached threshold (median step) | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in settings:
        esc = f"{s['escaped']}/{s['runs']} ({_f(s['escape_step_median'], '.0f')})"
        noisy = s["eps"] > 0
        memo = "-"
        if s.get("memorised") is not None:
            memo = f"{s['memorised']}/{s['runs']} ({_f(s['memo_step_median'], '.0f')})"
        rows.append(
            f"| {s['regime']} | {s['method']} | {s['eps']:g} | {s['final_q']:g} | {pm(s, 'final_p1')} "
            f"| {pm(s, 'peak')} | {esc} | {s['collapsed']}/{s['runs']} "
            f"| {pm(s, 'final_p_noisy', '.2g') if noisy else '-'} "
            f"| {pm(s, 'final_p_clean', '.2g') if noisy else '-'} "
            f"| {s['theory']['approx']:.3g} | {s['theory']['exact']:.3g} | {memo} | {s['runs']} |"
        )
    return "\n".join(rows)


def run_table(runs: list[dict[str, Any]]) -> str:
    """Markdown table of every run's end-of-run numbers."""
    rows = [
        "| run | escape step (p@1) | peak p@1 (step) | collapse step | final val p@1 "
        "| final p~ | final P(clean) | probe rationales correct | memorisation step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def show(e: dict[str, Any] | None) -> str:
        if e is None:
            return "-"
        if e["censored"]:
            return f">{e['step']}"
        return f"<={e['step']}" if e["before_start"] else str(e["step"])

    for r in runs:
        esc = show(r["escape_p1"])
        rows.append(
            f"| {r['tag']} | {esc} | {_f(r['peak'], '.2f')} ({r['peak_step']}) "
            f"| {r['collapse_step'] if r['collapsed'] else '-'} | {r['final_p1']:.2f} "
            f"| {_f(r['final_p_noisy'], '.2g')} | {_f(r['final_p_clean'], '.2g')} "
            f"| {_f(r['final_memo_rationale_correct'], '.2f')} | {show(r.get('memo_onset'))} |"
        )
    return "\n".join(rows)


def report_markdown(cfg: NoiseStudyConfig, results: dict[str, Any]) -> str:
    sched = ", ".join(f"{s} {cfg.q_start:g} -> {cfg.q_end:g}" for s in cfg.schedules) or "none"
    return f"""# Noise study

{", ".join(e.upper() for e in cfg.estimators)} on chain-sum with `?noise=eps` (a seeded fraction eps
of the {cfg.train_size} training examples carries a wrong sum of the same number of digits, fixed
for the run; validation is clean). Grid: q = {cfg.q} (and schedules [{sched}] in {cfg.schedule_regimes}) x eps = {cfg.noise}
x regime = {cfg.regimes} x seeds {cfg.seeds}; {cfg.steps} steps of {cfg.optimizer} at lr {cfg.lr:g},
clipping {cfg.max_grad_norm or "off"}. Warm: warm prompt and the answer `A:<sum>` the base model
writes; cold: cold prompt, chain-sum dial {cfg.cold_dial}'s answer. Every {cfg.eval_every} steps:
validation ({cfg.val_size} problems x {cfg.eval_k} samples) and the memorisation probe.

**Memorisation p~**: on the corrupted training examples (up to {cfg.val_size}), the mean over
examples of P-hat(noisy label | x) = (1/k) sum_j p(label | x, z_j) over k = {cfg.eval_k} rationales
sampled from the model (the evaluation's P-hat, an unbiased estimate of P(label | x));
P(clean) is the same on the same rationales for the example's true sum.
**Theory** (METHOD.md Prop. C.2): one input, clean label with frequency 1 - eps and one noise
label with frequency eps: contamination settles at p~* with p~*/(1 - p~*) = (eps/(1-eps))^(1/q)
(q = the final q of a schedule); "theory exact root" solves that equation. It assumes the model
cannot single out the corrupted inputs; a model that memorises each example would instead send
p~ -> 1 on them at every q > 0.
**Escape**: first evaluation with val p@1 >= {cfg.escape_p1} (`escape_study.escape_time`).
**Memorisation step**: first probe with p~ >= {cfg.memo_threshold} (the same detector; the theory's
time to a contamination eta << p~* is Theta(eta^(q+1) / ((q+1) eps)): sooner at higher q).
**Collapse**: val p@1 peaks at >= {cfg.collapse_min_peak} and later falls below
{cfg.collapse_fraction} x the peak.

## Settings (mean ± sd over seeds)

{settings_table(results["settings"])}

## Runs

{run_table(results["runs"])}

Plots: `memorisation.png` (final p~ against final q per eps, runs as dots, the theory line
(eps/(1-eps))^(1/q)), `accuracy.png` (validation p@1 over steps, mean over seeds, per setting).
"""


FLOOR = 1e-8  # smaller probabilities are drawn at the floor of the log axis


def plot_memorisation(cfg: NoiseStudyConfig, results: dict[str, Any], path: Path) -> None:
    """Final p~ = P(noisy label) and 1 - P(clean label) on the corrupted examples against the
    final q, one panel per (regime, eps > 0), with the theory's curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epss = [e for e in cfg.noise if e > 0] or cfg.noise[:1]
    nr, nc = len(cfg.regimes), len(epss)
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 3.4 * nr), squeeze=False)
    colors = dict(zip(cfg.estimators, ["C0", "C3", "C2", "C1"]))
    grid = np.linspace(0.05, 1.0, 60)
    for i, regime in enumerate(cfg.regimes):
        for j, eps in enumerate(epss):
            ax = axes[i][j]
            for est in cfg.estimators:
                group = [r for r in results["runs"] if r["regime"] == regime and r["eps"] == eps
                         and r["estimator"] == est and r["final_p_noisy"] is not None]  # fmt: skip
                for kind, marker in (("constant", "o"), ("schedule", "x")):
                    pts = [
                        r for r in group if (r["q_schedule"] == "constant") == (kind == "constant")
                    ]
                    if not pts:
                        continue
                    qs = [r["final_q"] for r in pts]
                    ax.scatter(qs, [max(r["final_p_noisy"], FLOOR) for r in pts], marker=marker,
                               color=colors[est], s=22, label=f"{est} {kind}: P(noisy)")  # fmt: skip
                    ax.scatter(qs, [max(1 - r["final_p_clean"], FLOOR) for r in pts], marker="s",
                               facecolors="none", edgecolors=colors[est], s=22,
                               label=f"{est} {kind}: 1 - P(clean)")  # fmt: skip
            if eps > 0:
                ax.plot(grid, [theory_contamination(q, eps)["approx"] for q in grid], "k--", lw=1,
                        label="theory (eps/(1-eps))^(1/q)")  # fmt: skip
                ax.plot(grid, [theory_contamination(q, eps)["exact"] for q in grid], "k:", lw=1,
                        label="theory exact root")  # fmt: skip
            ax.set_yscale("log")
            ax.set_ylim(FLOOR / 2, 1.5)
            ax.set_title(f"{regime}, eps = {eps:g}", fontsize=9)
            ax.set_xlabel("q (final)")
            ax.set_ylabel("contamination (corrupted examples)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(cfg: NoiseStudyConfig, results: dict[str, Any], path: Path) -> None:
    """Validation p@1 over steps (mean over seeds), rows = (regime, estimator), columns = eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(g, e) for g in cfg.regimes for e in cfg.estimators]
    nc = len(cfg.noise)
    fig, axes = plt.subplots(len(rows), nc, figsize=(4.2 * nc, 3.0 * len(rows)), squeeze=False)
    methods = list(dict.fromkeys(r["method"].split("_", 1)[1] for r in results["runs"]))
    cmap = plt.get_cmap("viridis")
    for i, (regime, est) in enumerate(rows):
        for j, eps in enumerate(cfg.noise):
            ax = axes[i][j]
            for m, qname in enumerate(methods):
                group = [r for r in results["runs"] if r["regime"] == regime and r["eps"] == eps
                         and r["method"] == f"{est}_{qname}"]  # fmt: skip
                if not group:
                    continue
                n = min(len(r["val"]["step"]) for r in group)
                mean = np.mean([r["val"]["p@1"][:n] for r in group], axis=0)
                style = "-" if "to" not in qname else "--"
                ax.plot(group[0]["val"]["step"][:n], mean, style, lw=1.2, label=qname,
                        color=cmap(m / max(len(methods) - 1, 1)))  # fmt: skip
            ax.set_title(f"{regime}, {est}, eps = {eps:g}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("val p@1 (clean)")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = (("memorisation.png", plot_memorisation), ("accuracy.png", plot_accuracy))


def write_outputs(cfg: NoiseStudyConfig, results: dict[str, Any], out: Path) -> list[Path]:
    """report.md, results.json, config.yaml and the plots, by the escape study's writer."""
    return escape_study.write_outputs(
        cfg, results, out, report=report_markdown, plots=PLOTS, names=OUTPUT_NAMES
    )


def summary_table(results: dict[str, Any]) -> str:
    """What `study noise` prints at the end: the settings table."""
    return settings_table(results["settings"])
