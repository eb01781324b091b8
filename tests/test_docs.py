"""The documentation a newcomer follows: a short README with contents and an offline quick start,
the reference in docs/, links that lead somewhere, and the sample photo every example uses shipped
with the code and accepted by the service."""

from __future__ import annotations

import re
from pathlib import Path

from shared.images import check_image, load_image
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
PHOTO = ROOT / "examples" / "photo.jpg"


def headings(text: str) -> list[str]:
    """The page's headings outside code blocks (a shell comment in a fence is not one)."""
    found, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.append(line.lstrip("#").strip())
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def quick_start(text: str) -> str:
    start = text.index("## Quick start")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_is_short_with_contents_and_the_quick_start_first():
    text = README.read_text()
    assert len(text.encode()) <= 20_000
    sections = headings(text)[1:]  # after the title
    assert sections[0] == "Contents" and sections[1].startswith("Quick start")
    contents = text[text.index("## Contents") : text.index("\n## ", text.index("## Contents") + 1)]
    assert [anchor(h) for h in sections[1:]] == re.findall(r"\]\(#([^)]+)\)", contents)
    assert "make test" in text  # the command CI reads


def test_the_quick_start_runs_offline_on_its_own_port_and_database_with_the_shipped_photo():
    steps = quick_start(README.read_text())
    assert "PORT=8090 REDIS_URL=redis://127.0.0.1:6379/3 MODELS=tiny make up" in steps
    assert "examples/photo.jpg" in steps and "photo.jpg" not in steps.replace("examples/photo.jpg", "")


def test_every_relative_link_and_anchor_resolves():
    pages = [README, *PAGES]
    anchors = {page: {anchor(h) for h in headings(page.read_text())} for page in pages}
    broken = []
    for page in pages:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, fragment = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (fragment and fragment not in anchors.get(target, {fragment})):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []
    assert {page.name for page in PAGES} <= set(re.findall(r"\(docs/([\w-]+\.md)\)", README.read_text()))


def test_examples_use_the_shipped_photo_and_it_is_accepted():
    texts = [README.read_text(), *(page.read_text() for page in PAGES)]
    used = {m for text in texts for m in re.findall(r"[\w./-]*photo\.jpg", text)}
    assert used == {"examples/photo.jpg"}, used
    data = PHOTO.read_bytes()
    assert 5_000 < len(data) < 100_000  # a real picture, small enough to ship
    assert check_image(data, Settings.model_fields["max_image_pixels"].default) == "JPEG"
    assert load_image(data).size == (640, 480)
