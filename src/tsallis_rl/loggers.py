"""Run logs: metrics.jsonl always (append-only, fsynced, a torn last line dropped on read), and
TensorBoard and Weights & Biases when the config asks for them (imported only then: optional)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsallis_rl.io import append_jsonl, read_jsonl, write_jsonl


class Loggers:
    """metrics.jsonl always (append-only, fsynced); TensorBoard and W&B when asked."""

    def __init__(self, run_dir: Path, cfg: Any, name: str) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.closers: list[Callable[[], Any]] = []
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional: the logging extra

            tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            self.closers.append(tb.close)
            self.sinks.append(
                lambda rec: [
                    tb.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])
                    for k, v in rec.items()
                    if isinstance(v, float | int) and k != "step"
                ]
            )
        if cfg.wandb:
            import wandb  # optional: the logging extra

            wb = wandb.init(
                project=cfg.wandb_project, name=name, config=cfg.to_dict(), dir=str(run_dir)
            )
            self.closers.append(wb.finish)
            self.sinks.append(
                lambda rec: wb.log(
                    {f"{rec['kind']}/{k}": v for k, v in rec.items() if isinstance(v, float | int)},
                    step=rec["step"],
                )
            )

    def close(self) -> None:
        """Flush and close the TensorBoard / W&B sinks."""
        for close in self.closers:
            close()

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        for sink in self.sinks:
            sink(record)

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run rewrites the later ones); drops a torn tail."""
        write_jsonl(self.path, [r for r in read_jsonl(self.path) if r["step"] <= step])
