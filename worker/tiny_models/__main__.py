"""python -m worker.tiny_models --out DIR [--seed N]"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.tiny_models", description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write caption/, story/ and speech/ into")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # building never needs the hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from worker.tiny_models import build_all

    out = build_all(args.out, seed=args.seed)
    for name in ("caption", "story", "speech"):
        size = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
        print(f"{out / name}  {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
