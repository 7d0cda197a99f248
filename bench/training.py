"""The training loop the trained models share: steps over epochs of batches, held-out scores and a checkpoint every
so many steps, stopped for time and resumed from where it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger("training")


def run_schedule(step: int, total: int, per_epoch: int, minutes: float, eval_every: int,
                 epoch_batches: Callable[[int], Sequence], train_step: Callable[[object], dict[str, str]],
                 evaluate: Callable[[int, str], None], desc: str = "training") -> int:
    """Go on from `step` to `total`: each epoch's batches (`epoch_batches(epoch)`, the same for the same epoch) are
    handed to `train_step` in turn, from where the epoch stands, and whatever it returns is shown on the progress bar.
    `evaluate(step, label)` runs every `eval_every` steps, at the end of each epoch, at the end and when `minutes`
    have passed, which stops the run (a rerun that resumes goes on). Returns the step reached."""
    started = time.monotonic()
    with tqdm(total=total, initial=step, desc=desc, unit="step") as bar:
        while step < total:
            epoch = step // per_epoch
            for batch in epoch_batches(epoch)[step % per_epoch:]:
                shown = train_step(batch)
                step += 1
                bar.update(1)
                bar.set_postfix(**shown, epoch=epoch + 1)
                out_of_time = time.monotonic() - started > minutes * 60
                if step % eval_every == 0 or out_of_time or step == total:
                    evaluate(step, f"epoch {epoch + 1}" if step % per_epoch == 0 else "checkpoint")
                if out_of_time:
                    logger.info("stopping after %.0f minutes (step %d of %d); --resume goes on", minutes, step, total)
                    return step
                if step % per_epoch == 0 or step == total:
                    break
    return step


def schedule_and_resume(model, optimizer, warmup_steps: int, total: int, checkpoint: Path, resume: bool):
    """A learning rate that warms up over `warmup_steps` and falls linearly to 0 at `total`; and, with `resume` and a
    `checkpoint` there, the model, optimizer and schedule as it saved them. Returns (schedule, step, log)."""
    import torch

    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) * max(0.0, 1 - step / total)
    )
    if not (resume and checkpoint.exists()):
        return schedule, 0, []
    state = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    logger.info("resumed at step %d of %d", state["step"], total)
    return schedule, state["step"], state["log"]
