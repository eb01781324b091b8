"""python -m worker.tiny_models --out DIR [--seed N] [--languages deu,hin]
       python -m worker.tiny_models --out DIR [--seed N] --full-size [--layers N] [--device D] [--no-report]

Without --full-size: the few-MB models the tests use; --languages adds a voice per language code
(DIR/speech-deu, ...; languages MMS speaks from romanized text, such as hin, get is_uroman). With
--full-size: random-weight models of the real sizes (BLIP base, Qwen2.5-1.5B-Instruct, MMS-TTS-eng)
for the bench, followed by a report of what they do."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.tiny_models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder to write caption/, story/ and speech/ into")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    parser.add_argument("--languages", default="", help="comma-separated ISO 639-3 codes: a tiny voice each")
    parser.add_argument("--full-size", action="store_true", help="the real models' sizes, random weights")
    parser.add_argument("--layers", type=int, help="with --full-size: every transformer's layer count (a CPU check)")
    parser.add_argument("--device", default="cpu", help="with --full-size: where the report runs (default cpu)")
    parser.add_argument("--no-report", action="store_true", help="with --full-size: build only")
    args = parser.parse_args(argv)
    if not args.full_size and (args.layers is not None or args.device != "cpu" or args.no_report):
        parser.error("--layers, --device and --no-report go with --full-size")
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be at least 1")
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    if languages and args.full_size:
        parser.error("--languages goes without --full-size")
    from shared.languages import CODE

    bad = [code for code in languages if not CODE.fullmatch(code)]
    if bad:
        parser.error(f"--languages: {bad[0]!r} is not an ISO 639-3 code (three lowercase letters: deu, hin)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # building never needs the hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.full_size:
        from worker.tiny_models.full_size import build_full_size

        out = build_full_size(args.out, seed=args.seed, layers=args.layers)
    else:
        from worker.tiny_models import build_all

        out = build_all(args.out, seed=args.seed, languages=languages)
    for name in ("caption", "story", "speech", *(f"speech-{code}" for code in languages)):
        size = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
        print(f"{out / name}  {size / 1e6:.2f} MB")
    if args.full_size and not args.no_report:
        from worker.tiny_models.full_size_report import format_report, report

        print(format_report(report(out, device=args.device, seed=args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
