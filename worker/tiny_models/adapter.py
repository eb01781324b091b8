"""Random LoRA adapters for the tiny story model: stand-ins for trained styles in tests and the bench.

peft's fresh adapters are no-ops (B starts at zero); init_lora_weights=False gives A and B random
values, so each seed's adapter changes the model's output, and two seeds change it differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def build(
    base: str | Path, out: str | Path, seed: int, rank: int = 4, target_modules: Sequence[str] = ("q_proj", "v_proj")
) -> Path:
    """Save a LoRA adapter for the model in `base` to `out` (adapter_config.json + weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), init_lora_weights=False, task_type="CAUSAL_LM"
    )
    out = Path(out)
    get_peft_model(model, config).save_pretrained(out)
    return out
