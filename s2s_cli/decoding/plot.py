"""Attention heatmaps as self-contained SVG files (open in any browser; no plotting library)."""

from __future__ import annotations

import html
from pathlib import Path

from torch import Tensor

from s2s_cli.io import atomic_write_text

CELL = 26
FONT = 12


def attention_svg(attention: Tensor, source: list[str], target: list[str], title: str = "") -> str:
    """An SVG heatmap: rows are target pieces, columns source pieces, darker = more attention."""
    weights = attention[: len(target), : len(source)].float().tolist()
    label_width = max([len(t) for t in target] + [4]) * 7 + 12
    label_height = max([len(s) for s in source] + [4]) * 7 + 12
    width = label_width + CELL * len(source) + 10
    height = label_height + CELL * len(target) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="4" y="{height - 8}" fill="#555">{html.escape(title)}</text>',
    ]
    for j, piece in enumerate(source):
        x = label_width + j * CELL + CELL / 2 + 4
        parts.append(
            f'<text transform="translate({x:.1f},{label_height - 6}) rotate(-90)">'
            f"{html.escape(piece)}</text>"
        )
    for i, piece in enumerate(target):
        y = label_height + i * CELL
        parts.append(
            f'<text x="{label_width - 6}" y="{y + CELL / 2 + 4:.1f}" text-anchor="end">'
            f"{html.escape(piece)}</text>"
        )
        for j, weight in enumerate(weights[i]):
            shade = round(255 * (1.0 - max(0.0, min(1.0, weight))))
            parts.append(
                f'<rect x="{label_width + j * CELL}" y="{y}" width="{CELL}" height="{CELL}" '
                f'fill="rgb({shade},{shade},{shade})" stroke="#ddd">'
                f"<title>{html.escape(target[i])} / {html.escape(source[j])}: {weight:.3f}"
                "</title></rect>"
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_attention_plot(
    directory: Path, index: int, attention: Tensor, source: list[str], target: list[str]
) -> Path:
    """Write ``directory/NNNNNN.svg`` for sentence ``index`` (0-based) and return its path."""
    path = directory / f"{index + 1:06d}.svg"
    atomic_write_text(path, attention_svg(attention, source, target, f"sentence {index + 1}"))
    return path
