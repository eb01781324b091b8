"""A plain PyTorch training loop: AdamW, linear warm-up then decay, gradient clipping, a progress bar.

Chosen over transformers' Trainer for fewer moving parts: every step that matters for the report
(which loss is measured, when, on which tokens) is visible here.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch


@dataclass
class LoopResult:
    steps: int = 0
    epochs: float = 0.0
    first_step_loss: float | None = None
    last_step_loss: float | None = None  # mean of the last few steps: one batch is noisy
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), about 50 points


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def mean_loss(model, loader, device) -> float | None:
    """Loss per story token over a whole loader (token-weighted, so batch size does not skew it)."""
    if loader is None or len(loader.dataset) == 0:
        return None
    was_training = model.training
    model.eval()  # no LoRA dropout: losses before and after training are comparable
    total, tokens = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        n = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
        total += float(model(**batch).loss) * n
        tokens += n
    model.train(was_training)
    return total / tokens if tokens else None


def train_steps(
    model,
    loader,
    device,
    *,
    total_steps: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    fp16: bool = False,
) -> LoopResult:
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    # fp16 weights (GPUs without bf16) underflow small gradients; the scaler guards against it.
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    result, recent = LoopResult(), []
    every = max(1, total_steps // 50)
    model.train()
    bar = tqdm(total=total_steps, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)
    while result.steps < total_steps:
        for batch in loader:
            loss = model(**to_device(batch, device)).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            value = float(loss.detach())
            if not math.isfinite(value):
                bar.close()
                raise FloatingPointError(f"the loss became {value} at step {result.steps + 1}; lower --lr")
            result.steps += 1
            result.first_step_loss = value if result.first_step_loss is None else result.first_step_loss
            recent = (recent + [value])[-10:]
            if result.steps % every == 0 or result.steps == total_steps:
                result.curve.append((result.steps, round(sum(recent) / len(recent), 4)))
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if result.steps >= total_steps:
                break
    bar.close()
    result.last_step_loss = sum(recent) / len(recent) if recent else None
    result.epochs = round(result.steps / max(1, len(loader)), 3)
    return result
