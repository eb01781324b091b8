"""Load and validate a {prompt, story} dataset before any model is loaded.

Two formats: a JSON array of objects (the seed's format) and JSON Lines. Every problem is reported
with the row it is on (a line number, or an item number plus its line for arrays) so a bad file
costs seconds, not a model load. No torch here: the CLI validates with only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("prompt", "story")


class DatasetError(ValueError):
    """The dataset cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Example:
    prompt: str
    story: str
    where: str  # "line 12" (JSONL) or "item 3 (line 14)" (array): for messages


def dataset_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    try:
        # utf-8-sig: editors on Windows like to add a byte-order mark.
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty")
    return text


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parse_jsonl(path: Path, text: str) -> list[tuple[object, str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are harmless
        try:
            rows.append((json.loads(line), f"line {number}"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return rows


def _parse_array(path: Path, text: str) -> list[tuple[object, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    # The document is valid, so a second pass with raw_decode finds where each item starts;
    # messages can then give a line number people can jump to.
    decoder, pos, starts = json.JSONDecoder(), text.index("[") + 1, []
    for _ in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        starts.append(pos)
        pos = decoder.raw_decode(text, pos)[1]
    return [
        (item, f"item {i} (line {_line_of(text, start)})")
        for i, (item, start) in enumerate(zip(data, starts, strict=True), 1)
    ]


def _check_row(path: Path, row: object, where: str) -> Example:
    if not isinstance(row, dict):
        raise DatasetError(f"{path}: {where}: expected an object with prompt and story, got {type(row).__name__}")
    values = []
    for field in FIELDS:
        if field not in row:
            raise DatasetError(f"{path}: {where}: missing field {field!r}")
        value = row[field]
        if not isinstance(value, str):
            raise DatasetError(f"{path}: {where}: field {field!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DatasetError(f"{path}: {where}: field {field!r} is empty")
        values.append(value.strip())
    return Example(values[0], values[1], where)


@dataclass(frozen=True)
class Dataset:
    examples: list[Example]
    # (where, where_of_first) for each exact repeat that was dropped, in file order.
    duplicates: list[tuple[str, str]]

    def duplicates_message(self, path: str | Path, shown: int = 3) -> str | None:
        """One line for the warning, or None when nothing was dropped."""
        if not self.duplicates:
            return None
        pairs = "; ".join(f"{dup} duplicates {first}" for dup, first in self.duplicates[:shown])
        more = f"; {len(self.duplicates) - shown} more" if len(self.duplicates) > shown else ""
        n = len(self.duplicates)
        return f"{path}: dropped {n} exact duplicate{'s' if n != 1 else ''} (same prompt and story): {pairs}{more}"


def read_dataset(path: str | Path) -> Dataset:
    """Parse and validate the whole file; raise DatasetError at the first problem.

    An exact repeat (same prompt and story once stripped) only weights one example more, so it is
    dropped and reported rather than refused: the seed's own file is 200 rows of 39 distinct ones.
    The same prompt with another story is kept: one photo may honestly have many stories.
    """
    path = Path(path)
    text = _read_text(path)
    parse = _parse_array if text.lstrip().startswith("[") else _parse_jsonl
    examples: list[Example] = []
    duplicates: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], str] = {}
    for row, where in parse(path, text):
        example = _check_row(path, row, where)
        key = (example.prompt, example.story)
        if key in seen:
            duplicates.append((where, seen[key]))
            continue
        seen[key] = where
        examples.append(example)
    if not examples:
        raise DatasetError(f"{path}: no examples in the file")
    return Dataset(examples, duplicates)


def load_examples(path: str | Path) -> list[Example]:
    """The distinct examples of `path` (exact duplicates dropped); see read_dataset."""
    return read_dataset(path).examples


def split_eval(examples: list[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Shuffle with `seed` and hold out round(fraction * n) examples; always keep one for training."""
    if not 0 <= fraction < 1:
        raise DatasetError(f"eval fraction must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(round(fraction * len(examples)), len(examples) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    evals = [examples[i] for i in sorted(held)]
    return train, evals
