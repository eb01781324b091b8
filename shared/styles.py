"""Story styles: STORY_STYLES names LoRA adapters that one worker serves side by side.

`STORY_STYLES=bedtime=adapters/bedtime,adventure=s3://b/adventure` (each location as STORY_ADAPTER
takes it); a job picks one by name (`style`), STORY_DEFAULT_STYLE (else the first listed) serves
jobs that name none. Parsed here, without torch, so the web app checks a job's `style` against the
very names the workers serve. A bad value is an error at start-up (the worker's model load,
create_app), never at import: Settings() itself must still load to report it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # peft adapter names: no dots; "__base__" stays free


class StyleError(ValueError):
    """STORY_STYLES / STORY_DEFAULT_STYLE cannot work; the message says which and why."""


class UnknownStyle(ValueError):
    """A job asked for a style that is not served."""


@dataclass(frozen=True)
class Styles:
    locations: dict[str, str] = field(default_factory=dict)  # name -> adapter location, in STORY_STYLES order
    default: str | None = None  # None exactly when no styles are configured

    @property
    def names(self) -> list[str]:
        return list(self.locations)

    def resolve(self, requested: str | None) -> str | None:
        """The style a job runs in: `requested`, else the default (None without styles)."""
        requested = (requested or "").strip()
        if not requested:
            return self.default
        if requested not in self.locations:
            if not self.locations:
                raise UnknownStyle(f"This server has no story styles; leave 'style' out (got {requested[:40]!r}).")
            raise UnknownStyle(f"'style' must be one of {', '.join(self.names)} (got {requested[:40]!r}).")
        return requested


def parse_styles(raw: str | None, default: str | None = None, adapter: str | None = None) -> Styles:
    """Raise StyleError for anything but comma-separated unique `name=location` pairs and a default
    among those names. `adapter` is STORY_ADAPTER: with styles it would be silently unused."""
    locations: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue  # a trailing comma
        name, sep, location = (part.strip() for part in item.partition("="))
        if not sep or not location:
            raise StyleError(
                f"STORY_STYLES: {item.strip()!r} is not name=location "
                "(e.g. bedtime=adapters/bedtime,adventure=s3://bucket/adventure)"
            )
        if not NAME.fullmatch(name):
            raise StyleError(
                f"STORY_STYLES: style name {name!r} must be 1-40 letters, digits, '_' or '-' "
                "(starting with a letter or digit)"
            )
        if name in locations:
            raise StyleError(f"STORY_STYLES names the style {name!r} twice")
        locations[name] = location
    default = (default or "").strip() or None
    if not locations:
        if default:
            raise StyleError(f"STORY_DEFAULT_STYLE={default!r} but STORY_STYLES is empty: set both, or neither")
        return Styles()
    if adapter:
        raise StyleError(
            "STORY_ADAPTER and STORY_STYLES are both set: serve that adapter as one of the styles "
            f"(STORY_STYLES=...,name={adapter}) and unset STORY_ADAPTER"
        )
    if default is not None and default not in locations:
        raise StyleError(
            f"STORY_DEFAULT_STYLE={default!r} is not one of the STORY_STYLES names ({', '.join(locations)})"
        )
    return Styles(locations, default or next(iter(locations)))


def from_settings(settings) -> Styles:
    return parse_styles(
        getattr(settings, "story_styles", ""),
        getattr(settings, "story_default_style", None),
        getattr(settings, "story_adapter", None),
    )
