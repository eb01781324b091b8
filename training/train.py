"""Fine-tune the story model with LoRA: `python -m training.train --data FILE --out DIR [...]`.

Order matters: the dataset and the device/quantization settings are checked first, so a bad row or
an impossible --quantize exits 2 with one line in a second instead of after a model load.
Writes DIR/adapter_config.json, DIR/adapter_model.safetensors and DIR/training_report.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.dataset import DatasetError, read_dataset, split_eval
from training.errors import UsageError

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "stories.jsonl"


def build_parser() -> argparse.ArgumentParser:
    from shared.settings import get_settings

    settings = get_settings()
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data", default=str(DEFAULT_DATA), help="JSON array or JSON Lines of {prompt, story} (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="folder for the adapter and training_report.json")
    p.add_argument(
        "--base", default=settings.story_model, help="base model: hub id or folder (default: STORY_MODEL, %(default)s)"
    )
    p.add_argument("--epochs", type=float, default=3, help="passes over the training split (default: %(default)s)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many optimizer steps (overrides --epochs)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps with linear warm-up")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=32, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout (default: %(default)s)")
    p.add_argument(
        "--target-modules",
        default="q_proj,v_proj",
        help="comma-separated module names, or all-linear. Default q_proj,v_proj (the seed's recipe, "
        "fewest parameters). The QLoRA paper (Dettmers et al., 2023) found adapting every linear "
        "layer is needed to match full fine-tuning; try all-linear with --rank 16 when quality matters more than size.",
    )
    p.add_argument(
        "--quantize",
        choices=("none", "8bit", "4bit"),
        default="none",
        help="QLoRA base weights via bitsandbytes (CUDA only)",
    )
    p.add_argument(
        "--device", default=settings.device, help="auto | cpu | cuda | cuda:N (default: DEVICE, %(default)s)"
    )
    p.add_argument(
        "--eval-fraction", type=float, default=0.1, help="held-out share for eval_loss (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--words",
        type=int,
        default=None,
        help="story length written into every prompt (default: each story's own length, rounded to 5, "
        "so the adapter learns to follow the length the service asks for)",
    )
    p.add_argument("--max-length", type=int, default=512, help="tokens per example, prompt included")
    p.add_argument("--push", metavar="URL", default=None, help="upload the adapter folder to s3://bucket/prefix")
    return p


def check_args(args) -> None:
    for name in ("batch_size", "rank", "max_length", "words"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if args.epochs <= 0 or args.lr <= 0 or args.alpha <= 0:
        raise UsageError("--epochs, --lr and --alpha must be positive")
    if not 0 <= args.dropout < 1 or not 0 <= args.warmup_ratio < 1:
        raise UsageError("--dropout and --warmup-ratio must be in [0, 1)")
    if args.push and not args.push.startswith("s3://"):
        raise UsageError(f"--push takes s3://bucket/prefix, got {args.push!r}")


def resolve_hardware(args):
    """(device, dtype) or UsageError: before any weights are read."""
    import torch

    from worker.engine.devices import ConfigError, check_quantize, resolve_device

    try:
        device = resolve_device(args.device)
        check_quantize(args.quantize, device)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("QUANTIZE=", "--quantize ").replace("DEVICE=", "--device ")) from None
    if device.type != "cuda":
        return device, torch.float32
    # bf16 trains stably without loss scaling; older GPUs (pre-Ampere) get fp16 plus a GradScaler.
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as exc:  # pydantic's ValidationError: a bad STORY_MODEL/DEVICE/... variable
        print(f"error: invalid settings in the environment: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        check_args(args)
        dataset = read_dataset(args.data)
        examples = dataset.examples
        train, evals = split_eval(examples, args.eval_fraction, args.seed)
        device, dtype = resolve_hardware(args)
    except (DatasetError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dataset.duplicates:
        print(f"warning: {dataset.duplicates_message(args.data)}", file=sys.stderr)
    if len(train) < args.batch_size:
        print(
            f"warning: {len(train)} training examples is fewer than one batch (--batch-size {args.batch_size})",
            file=sys.stderr,
        )
    if args.eval_fraction > 0 and not evals:
        print(
            f"warning: the eval split is empty ({len(examples)} examples x {args.eval_fraction}); "
            "eval_loss will be null",
            file=sys.stderr,
        )

    from training.run import run_training

    try:
        report = run_training(args, train, evals, device, dtype, duplicates_dropped=len(dataset.duplicates))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one readable line for the usual failures; the rest keep a traceback
        import torch

        if isinstance(exc, (torch.cuda.OutOfMemoryError, FloatingPointError)):
            hint = (
                " (try a smaller --batch-size or --max-length, or --quantize 4bit)"
                if isinstance(exc, torch.cuda.OutOfMemoryError)
                else ""
            )
            print(f"error: {str(exc).splitlines()[0]}{hint}", file=sys.stderr)
            return 1
        raise
    print(
        f"done: {report['steps']} steps in {report['seconds']:.1f}s, loss {report['initial_loss']:.4f} -> "
        f"{report['final_loss']:.4f}, eval_loss {report['eval_loss']}, adapter in {args.out}"
    )
    if args.push:
        from shared.storage import StorageError
        from training.push import push_adapter

        try:
            keys = push_adapter(args.out, args.push)
        except StorageError as exc:
            print(f"error: push to {args.push} failed: {exc} (the adapter is kept in {args.out})", file=sys.stderr)
            return 1
        print(f"pushed {len(keys)} files to {args.push}; serve with STORY_ADAPTER={args.push}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
