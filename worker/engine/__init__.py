"""The narration engine. Importing this package loads no model (and Engine() loads none either)."""

from worker.engine.devices import ConfigError
from worker.engine.pipeline import Engine, Narration

__all__ = ["ConfigError", "Engine", "Narration"]
