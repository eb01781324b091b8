"""Command line: `python -m worker narrate IMAGE -o OUT.mp3 [--json] [--seed N] [--words N]`.

Runs the engine in-process on the models configured in the environment (CAPTION_MODEL, ...).
Bad input or configuration exits 2 with one `error: ...` line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Photo -> narrated short story.")
    commands = parser.add_subparsers(dest="command", required=True)
    narrate = commands.add_parser("narrate", help="narrate one photo into an MP3")
    narrate.add_argument("image", type=Path, help="JPEG, PNG, WebP, GIF, BMP or TIFF file")
    narrate.add_argument("-o", "--output", type=Path, required=True, help="where to write the MP3")
    narrate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    narrate.add_argument("--seed", type=int, default=None, help="make the story and voice reproducible")
    narrate.add_argument("--words", type=int, default=None, help="story length (default STORY_WORDS)")
    narrate.add_argument("--greedy", action="store_true", help="greedy story decoding instead of sampling")
    return parser


def _quiet_transformers() -> None:
    # Progress bars and backend notices would bury the one line of output people look for.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _settings():
    from pydantic import ValidationError

    from shared.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]).upper()
        raise UsageError(f"invalid setting {name}: {first['msg']}") from None


def narrate(args: argparse.Namespace) -> int:
    from shared.images import ImageError, load_image

    settings = _settings()
    if args.words is not None and not 10 <= args.words <= 200:
        raise UsageError("--words must be between 10 and 200")
    try:
        image = load_image(args.image, max_pixels=settings.max_image_pixels)
    except ImageError as exc:
        prefix = "" if exc.code == "not_found" else f"{args.image}: "  # that message names the file
        raise UsageError(prefix + exc.message) from None

    _quiet_transformers()
    from worker.engine import ConfigError, Engine
    from worker.engine.adapters import AdapterError

    try:
        engine = Engine(settings)
        narration = engine.narrate(image, words=args.words, seed=args.seed, sample=not args.greedy)
    # A bad DEVICE/QUANTIZE/model folder or STORY_ADAPTER; a hub id that is neither cached nor
    # reachable (worker.engine.hub.ModelLoadError, a ConfigError).
    except (ConfigError, AdapterError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a model folder or hub id that cannot be loaded (offline, typo)
        raise UsageError(f"could not load a model: {str(exc).splitlines()[0]}") from None

    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(narration.mp3)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None

    if args.json:
        print(json.dumps({**narration.to_json(), "output": str(args.output)}, ensure_ascii=False))
    else:
        print(f"Caption: {narration.caption}")
        print(f"Story:   {narration.story}")
        print(f"Audio:   {narration.audio_seconds:.1f} s -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return narrate(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
