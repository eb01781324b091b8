"""The narration engine. Importing this package loads no model (and Engine() loads none either)."""

import logging

from worker.engine.devices import ConfigError
from worker.engine.pipeline import Engine, Narration

__all__ = ["ConfigError", "Engine", "Narration"]

# bitsandbytes, which peft imports, warns on CPUs with AVX512-BF16 that an optional package for its
# 4-bit CPU kernel is missing. 4-bit weights are refused on a CPU anyway (QUANTIZE), so the warning
# would only look like a failure in the worker's and the trainer's output; errors still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
