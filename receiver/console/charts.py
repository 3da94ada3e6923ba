"""Small inline SVG charts for the console (no script, no library): one value per day, bars,
with the numbers also given as text for screen readers."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH = 280
HEIGHT = 60


def bars(values: Sequence[float | None], top: float, label: str, unit: str = "") -> Markup:
    """A bar per value (None: no bar), scaled to `top`; the label and values as its title."""
    count = max(len(values), 1)
    step = WIDTH / count
    shapes = []
    for index, value in enumerate(values):
        if value is None or value <= 0:
            continue
        height = 0.0 if top <= 0 else max(1.0, HEIGHT * min(value, top) / top)
        shapes.append(
            f'<rect x="{index * step + 1:.1f}" y="{HEIGHT - height:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{height:.1f}"></rect>'
        )
    said = ", ".join("no data" if v is None else f"{v:.1f}{unit}" for v in values)
    # Markup: every text in it is escaped above, every other value a number.
    return Markup(  # noqa: S704
        f'<svg class="chart" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(label)}: {escape(said)}">'
        f"<title>{escape(label)}: {escape(said)}</title>"
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"></line>{"".join(shapes)}</svg>'
    )
