"""Small training sets for the trainer's tests."""

from __future__ import annotations

import json
from pathlib import Path

# Eight short, distinct examples: small enough for a few CPU steps, varied enough to be a real set.
SMALL_SET = [
    {
        "prompt": "a dog sitting on a couch",
        "story": "The dog waited on the couch all day. At six the door opened. He jumped down, tail "
        "wagging, and the evening walk began.",
    },
    {
        "prompt": "a red car parked on the street",
        "story": "Nobody claimed the red car for a week. Then an old woman found her keys in a coat pocket "
        "and drove it home, laughing.",
    },
    {
        "prompt": "a plate of food with rice",
        "story": "Sam burned the rice twice. The third pot was perfect, and his friends ate every grain "
        "before he could take a photo.",
    },
    {
        "prompt": "a mountain with snow on top",
        "story": "Greta climbed the mountain at sixty. The wind was cruel, the view was endless, and she "
        "cried a little at the top.",
    },
    {
        "prompt": "a cat on a window sill",
        "story": "The cat watched one sparrow all summer and never chased it. In autumn the bird left. In "
        "spring it came back.",
    },
    {
        "prompt": "a man riding a bike",
        "story": "His chain snapped on the way to the bakery. A stranger lent a wrench, and they arrived "
        "together for the last warm loaf.",
    },
    {
        "prompt": "a boat on a lake",
        "story": "Grandfather stopped rowing in the middle of the lake. They listened. A loon called, and "
        "nobody spoke until dark.",
    },
    {
        "prompt": "a kite in the sky",
        "story": "The newspaper kite looked hopeless. Nico ran down the hill anyway, the wind caught it, "
        "and it climbed above them all.",
    },
]


def seed_like_rows() -> list[dict]:
    """Shaped like the seed's own file: 200 rows cycling through 39 distinct ones, so item 40
    repeats item 1 and 161 rows are exact duplicates."""
    animals = ("dog", "cat", "horse", "duck", "bear", "bird", "cow", "sheep", "fox", "owl", "goat", "pig", "frog")
    places = ("in a park", "on a bed", "in a field")
    distinct = [
        {
            "prompt": f"a {animal} {place}",
            "story": f"Once upon a time there was a {animal} {place}. "
            f"It had a small adventure, made a friend, and went home happy. The end.",
        }
        for place in places
        for animal in animals
    ]
    return [distinct[i % len(distinct)] for i in range(200)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
