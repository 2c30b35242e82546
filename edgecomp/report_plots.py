"""PNG charts for the compile report, drawn with Pillow (``ImageDraw``; no matplotlib).

Charts are plain RGB images with a fixed layout, so the same data always gives the same bytes (PNG
without time or text chunks, zlib at a fixed level) on the same Pillow version.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH = 960
"""Chart width in pixels."""
TOP = 64
"""Pixels above the first layer row (title, legend)."""
BOTTOM = 56
"""Pixels below the last layer row (x axis ticks and label)."""
ROW_HEIGHT = 28
"""Pixels per layer row: two bars of :data:`BAR_HEIGHT` and spacing."""
BAR_HEIGHT = 10
LABEL_WIDTH = 340
"""Pixels left of the plot area for the layer labels."""
RIGHT = 56

BACKGROUND = (255, 255, 255)
INK = (32, 32, 32)
GRID = (225, 225, 225)
ONLY_THIS_INT8 = (31, 119, 180)
"""Bar colour of "only this layer int8" (blue)."""
ALL_BUT_THIS = (255, 127, 14)
"""Bar colour of "all but this layer int8" (orange)."""
BASELINE = (214, 39, 40)
"""Colour of the all-int8 reference line (red)."""


def chart_size(layers: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`sensitivity_bar_chart` for ``layers`` rows."""
    return WIDTH, TOP + ROW_HEIGHT * max(layers, 1) + BOTTOM


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_step(span: float) -> float:
    """A 1/2/5 x 10^k tick step giving at most about 8 ticks over ``span``."""
    raw = span / 8 if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _fit(text: str, font, width: float) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def sensitivity_bar_chart(
    sensitivities: Sequence,
    path: str | os.PathLike | None = None,
    *,
    all_int8_db: float | None = None,
    title: str = "Per-layer sensitivity: model output SQNR vs FP32",
) -> bytes:
    """A horizontal bar chart of per-layer sensitivity, as PNG bytes (and written to ``path`` if given).

    One row per layer, in the given order (most sensitive first from
    :func:`~edgecomp.passes.quantize.sensitivity.analyze_sensitivity`), labelled ``op_type node``
    (and the node it is fused with, if any);
    two bars per row: output SQNR (dB) with only this layer int8 (blue) and with all but this layer
    int8 (orange). The x axis is SQNR in dB from ``min(0, lowest value)``; an optional red line marks
    the all-int8 SQNR. An infinite SQNR (lossless) is drawn to the axis end and labelled ``inf``.

    Args:
        sensitivities: objects with ``node``, ``op_type``, ``only_this_int8_db``, ``all_but_this_db``
            (:class:`~edgecomp.passes.quantize.sensitivity.LayerSensitivity`).
        path: file to write the PNG to, or None.
        all_int8_db: the all-int8 SQNR (dB) to mark, or None.
        title: the chart title.

    Returns:
        The PNG bytes; the image is RGB of :func:`chart_size` ``(len(sensitivities))``.
    """
    width, height = chart_size(len(sensitivities))
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    values = [v for s in sensitivities for v in (s.only_this_int8_db, s.all_but_this_db)]
    if all_int8_db is not None:
        values.append(all_int8_db)
    finite = [float(v) for v in values if math.isfinite(v)]
    low = min([0.0, *finite])
    high = max([1.0, *finite])
    step = _nice_step(high - low)
    low = step * math.floor(low / step)
    high = step * math.ceil(high / step)
    if high <= low:
        high = low + step
    left, right = LABEL_WIDTH, width - RIGHT
    bottom = TOP + ROW_HEIGHT * max(len(sensitivities), 1)

    def x_of(value: float) -> float:
        if math.isnan(value):
            return left
        value = min(max(value, low), high)
        return left + (value - low) / (high - low) * (right - left)

    # title and legend
    draw.text((12, 10), title, fill=INK, font=font)
    legend_y = 36
    entries = [(ONLY_THIS_INT8, "only this layer int8"), (ALL_BUT_THIS, "all but this layer int8 (this one float)")]
    if all_int8_db is not None:
        entries.append((BASELINE, f"all layers int8: {all_int8_db:.2f} dB"))
    x = left
    for colour, label in entries:
        draw.rectangle([x, legend_y + 2, x + 14, legend_y + 12], fill=colour)
        draw.text((x + 20, legend_y), label, fill=INK, font=small)
        x += 20 + int(small.getlength(label)) + 24
    # grid and x axis
    tick = low
    ticks = []
    while tick <= high + step / 2:
        ticks.append(tick)
        tick += step
    for tick in ticks:
        tx = round(x_of(tick))
        draw.line([tx, TOP, tx, bottom], fill=GRID)
        draw.line([tx, bottom, tx, bottom + 5], fill=INK)
        label = f"{tick:g}"
        draw.text((tx - small.getlength(label) / 2, bottom + 8), label, fill=INK, font=small)
    draw.line([left, bottom, right, bottom], fill=INK)
    draw.line([left, TOP, left, bottom], fill=INK)
    axis_label = "model output SQNR vs FP32 (dB)"
    draw.text(((left + right) / 2 - font.getlength(axis_label) / 2, bottom + 28), axis_label, fill=INK, font=font)
    draw.text((12, TOP - 18), "layer (op type, node), most sensitive first", fill=INK, font=small)
    # rows
    for row, entry in enumerate(sensitivities):
        y = TOP + row * ROW_HEIGHT
        others = [name for name in getattr(entry, "fused_layer", ()) if name != entry.node]
        text = f"{entry.op_type} {entry.node}" + (f" (fused with {', '.join(others)})" if others else "")
        label = _fit(text, small, LABEL_WIDTH - 24)
        draw.text((12, y + ROW_HEIGHT / 2 - 7), label, fill=INK, font=small)
        for offset, value, colour in ((3, entry.only_this_int8_db, ONLY_THIS_INT8), (3 + BAR_HEIGHT + 1, entry.all_but_this_db, ALL_BUT_THIS)):
            start, end = round(x_of(0.0)), round(x_of(value))  # low <= 0 <= high
            if (math.isfinite(value) or value > 0) and end != start:
                draw.rectangle([min(start, end), y + offset, max(start, end) - 1, y + offset + BAR_HEIGHT - 1], fill=colour)
            text = f"{value:.1f}" if math.isfinite(value) else str(value)
            draw.text((min(max(start, end) + 3, right + 2), y + offset - 1), text, fill=INK, font=_font(9))
    if all_int8_db is not None and math.isfinite(all_int8_db):
        bx = round(x_of(all_int8_db))
        for y in range(TOP, bottom, 6):  # dashed
            draw.line([bx, y, bx, min(y + 3, bottom)], fill=BASELINE, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=9)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data
