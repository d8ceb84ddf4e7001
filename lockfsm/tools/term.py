"""What a terminal can show: colour, and a live line that rewrites itself.

Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org) or
``TERM=dumb``; a live line only on a terminal that is not dumb.
"""

from __future__ import annotations

import os
from typing import TextIO


def live(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can rewrite its line."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def colour(stream: TextIO) -> bool:
    """Whether ``stream`` may be coloured."""
    return live(stream) and "NO_COLOR" not in os.environ


class Status:
    """A status line on ``stream``: rewritten in place on a live terminal, one line per new
    stage elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = live(stream)
        self.stage = ""
        self.width = 0

    def show(self, stage: str, detail: str) -> None:
        if self.live:
            text = f"{stage}: {detail}"
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif stage != self.stage:
            self.stream.write(f"{stage}: {detail}\n")
            self.stream.flush()
        self.stage = stage

    def done(self) -> None:
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
