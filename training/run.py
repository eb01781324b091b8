"""Load the base model, wrap it with LoRA, train, measure, save the adapter and its report."""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

from training.collate import Collator, EncodingError, encode_example, end_token_id, pad_id
from training.dataset import dataset_sha256
from training.errors import UsageError
from training.loop import mean_loss, train_steps

FEW_STEPS = 20  # fewer optimizer steps than this cannot move a LoRA adapter far from where it starts
BASE_FIXES = (
    "Fixes: --base a local model folder (`python -m worker.tiny_models --out DIR` builds a tiny one in DIR/story "
    "for a trial run); or fill the Hugging Face cache (HF_HOME) on a machine with network and run with "
    "HF_HUB_OFFLINE=1."
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA; LoRA's A matrices are drawn from it


def load_base(args, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.engine.devices import quantization_config
    from worker.engine.hub import ModelLoadError, fixes, load_pretrained

    base = Path(args.base).expanduser()
    if args.base.startswith(("/", "./", "../", "~")) and not base.is_dir():
        raise UsageError(f"--base {args.base}: no such model folder")
    qconfig = quantization_config(args.quantize, compute_dtype=dtype)
    kwargs = {"dtype": dtype}
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": device.index or 0})

    def load(local_files_only: bool):
        tokenizer = AutoTokenizer.from_pretrained(args.base, local_files_only=local_files_only)
        return tokenizer, AutoModelForCausalLM.from_pretrained(args.base, local_files_only=local_files_only, **kwargs)

    # The worker's loader: a cached hub id loads without the network, and an unreachable hub is one
    # short probe instead of huggingface_hub's retries (about a minute per file before this).
    try:
        tokenizer, model = load_pretrained("--base", args.base, load)
    except ModelLoadError as exc:  # its fixes are the service's; a trainer's are these
        raise UsageError(str(exc).replace(fixes("--base"), BASE_FIXES)) from None
    except (OSError, ValueError) as exc:  # a folder that holds no model, say
        raise UsageError(f"cannot load the base model {args.base!r}: {str(exc).splitlines()[0]}") from None
    if qconfig is None:
        model.to(device)
    else:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and turns on gradient checkpointing: the QLoRA recipe for small cards.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model.config.use_cache = False  # the KV cache only serves generation and fights checkpointing
    return tokenizer, model


def add_lora(model, args):
    from peft import LoraConfig, get_peft_model

    modules = args.target_modules.strip()
    targets = modules if modules == "all-linear" else [m.strip() for m in modules.split(",") if m.strip()]
    config = LoraConfig(
        task_type="CAUSAL_LM", r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=targets
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 method that is deprecated: noise for our users.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a module name that does not exist in this model
        raise UsageError(f"--target-modules {modules}: {str(exc).splitlines()[0]}") from None


def prompt_words(story: str) -> int:
    # The length the prompt asks for is the story's own, so training teaches the model to follow it.
    return max(5, 5 * round(len(story.split()) / 5))


def encode_all(tokenizer, examples, args):
    end_id = end_token_id(tokenizer)
    try:
        encoded = [
            encode_example(tokenizer, e.prompt, e.story, args.words or prompt_words(e.story), args.max_length, end_id)
            for e in examples
        ]
    except EncodingError as exc:
        raise UsageError(str(exc)) from None
    cut = sum(1 for f in encoded if f["input_ids"][-1] != end_id)
    if cut:
        print(f"warning: {cut} stories were cut to fit --max-length {args.max_length}", file=sys.stderr)
    return encoded, cut


def loader_for(features, batch_size, collator, seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.utils.data.DataLoader(
        features, batch_size=batch_size, shuffle=seed is not None, generator=generator, collate_fn=collator
    )


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    # ru_maxrss is KiB on Linux: the whole process's peak, model and Python included.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_training(args, train, evals, device, dtype, duplicates_dropped: int = 0) -> dict:
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    tokenizer, model = load_base(args, device, dtype)
    model = add_lora(model, args)
    load_seconds = time.perf_counter() - started
    trainable, total = model.get_nb_trainable_parameters()

    train_features, cut = encode_all(tokenizer, train, args)
    eval_features, _ = encode_all(tokenizer, evals, args)
    collator = Collator(pad_id(tokenizer))
    train_loader = loader_for(train_features, args.batch_size, collator, seed=args.seed)
    measure_loader = loader_for(train_features, args.batch_size, collator)  # fixed order, no shuffling
    eval_loader = loader_for(eval_features, args.batch_size, collator)
    steps = args.max_steps or max(1, math.ceil(args.epochs * len(train_loader)))
    warmup = int(args.warmup_ratio * steps)
    if steps < FEW_STEPS:
        # LoRA starts as a no-op (its B matrices are zero): a handful of small steps leaves the
        # adapter all but the base model, which a user would otherwise only notice in its stories.
        print(
            f"warning: only {steps} optimizer step(s): the adapter will barely differ from the base model "
            f"(use more data, --epochs or --max-steps; {FEW_STEPS} or more)",
            file=sys.stderr,
        )

    initial_loss = mean_loss(model, measure_loader, device)
    initial_eval = mean_loss(model, eval_loader, device)
    started = time.perf_counter()
    result = train_steps(
        model,
        train_loader,
        device,
        total_steps=steps,
        lr=args.lr,
        warmup_steps=warmup,
        weight_decay=args.weight_decay,
        fp16=dtype == torch.float16,
    )
    seconds = time.perf_counter() - started
    # Imported only here for their versions: peft imports bitsandbytes, which may log a line about
    # its optional CPU kernels, and a run that stops at the base model should print only its error.
    import peft
    import transformers

    report = {
        "base_model": args.base,
        "dataset": str(Path(args.data).resolve()),
        "dataset_sha256": dataset_sha256(args.data),
        "examples": {"train": len(train), "eval": len(evals), "truncated": cut},
        # Exact repeats of earlier rows that the loader left out (train + eval counts exclude them).
        "duplicates_dropped": duplicates_dropped,
        "hyperparameters": {
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": warmup,
            "weight_decay": args.weight_decay,
            "max_grad_norm": 1.0,
            "rank": args.rank,
            "alpha": args.alpha,
            "dropout": args.dropout,
            "target_modules": args.target_modules,
            "quantize": args.quantize,
            "words": args.words,
            "max_length": args.max_length,
            "seed": args.seed,
        },
        "steps": result.steps,
        "epochs_completed": result.epochs,
        "seconds": round(seconds, 3),
        "load_seconds": round(load_seconds, 3),
        # Measured on the whole training split in eval mode (no dropout), before and after training.
        "initial_loss": initial_loss,
        "final_loss": mean_loss(model, measure_loader, device),
        "initial_eval_loss": initial_eval,
        "eval_loss": mean_loss(model, eval_loader, device),
        "first_step_loss": result.first_step_loss,
        "last_step_loss": result.last_step_loss,
        "loss_curve": result.curve,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # a PeftModel writes only adapter_config.json + adapter_model.safetensors
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
