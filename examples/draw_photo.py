"""Draws examples/photo.jpg, the sample photo every example in the docs uses: a house, a tree and the
sun in a field. Made here rather than downloaded so it ships with the code and has no licence
question. Run from the repository root: `.venv/bin/python examples/draw_photo.py`."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480
HORIZON = 300


def draw() -> Image.Image:
    rng = random.Random(7)  # the same file every time
    image = Image.new("RGB", (WIDTH, HEIGHT))
    d = ImageDraw.Draw(image)
    for y in range(HORIZON):  # sky: deep blue at the top to pale near the horizon
        t = y / HORIZON
        d.line([(0, y), (WIDTH, y)], fill=(int(70 + 120 * t), int(130 + 90 * t), int(210 + 40 * t)))
    for y in range(HORIZON, HEIGHT):  # meadow, darker towards the viewer
        t = (y - HORIZON) / (HEIGHT - HORIZON)
        d.line([(0, y), (WIDTH, y)], fill=(int(110 - 50 * t), int(180 - 60 * t), int(70 - 30 * t)))
    d.ellipse([500, 40, 590, 130], fill=(255, 221, 80))  # sun
    for cx, cy in ((150, 80), (330, 60)):  # clouds
        for dx, dy, r in ((0, 0, 28), (30, -12, 32), (62, 0, 26), (30, 8, 28)):
            d.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=(250, 250, 252))
    d.polygon([(0, HORIZON), (120, 230), (260, HORIZON)], fill=(96, 140, 110))  # hills behind
    d.polygon([(180, HORIZON), (380, 210), (640, HORIZON)], fill=(86, 128, 100))

    # The house: walls, roof, door, two windows with frames, a chimney.
    d.rectangle([350, 200, 375, 300], fill=(150, 40, 40))  # chimney, behind the roof
    d.rectangle([200, 300, 420, 420], fill=(235, 215, 170))
    d.polygon([(185, 305), (310, 215), (435, 305)], fill=(170, 60, 45))
    d.rectangle([290, 345, 330, 420], fill=(110, 70, 40))
    d.ellipse([318, 380, 324, 386], fill=(230, 200, 60))
    for x in (225, 355):
        d.rectangle([x, 330, x + 45, 370], fill=(170, 210, 240), outline=(255, 255, 255), width=4)
        d.line([(x + 22, 330), (x + 22, 370)], fill=(255, 255, 255), width=3)

    # The tree: a trunk and a crown of overlapping leaf clusters.
    d.rectangle([500, 320, 525, 425], fill=(105, 70, 40))
    for _ in range(40):
        x, y, r = rng.randint(455, 570), rng.randint(225, 330), rng.randint(18, 30)
        green = rng.randint(100, 150)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(30, green, 40))

    for _ in range(300):  # grass blades and a few flowers in the foreground
        x, y = rng.randint(0, WIDTH), rng.randint(HORIZON + 110, HEIGHT)
        d.line([(x, y), (x + rng.randint(-3, 3), y - rng.randint(5, 12))], fill=(40, 100 + rng.randint(0, 40), 30))
    for _ in range(25):
        x, y = rng.randint(0, WIDTH), rng.randint(430, HEIGHT - 5)
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=rng.choice([(250, 250, 250), (240, 200, 60), (220, 90, 120)]))
    return image.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "photo.jpg"
    draw().save(out, "JPEG", quality=85, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
