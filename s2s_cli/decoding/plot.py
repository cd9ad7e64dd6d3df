"""Attention heatmaps as self-contained SVG files (open in any browser; no plotting library)."""

from __future__ import annotations

import html
from pathlib import Path

from torch import Tensor

from s2s_cli.io import atomic_write_text

CELL = 26
FONT = 12


def attention_svg(
    attention: Tensor,
    source: list[str],
    target: list[str],
    title: str = "",
    piece_scores: list[float] | None = None,
) -> str:
    """An SVG heatmap: rows are target pieces, columns source pieces, darker = more attention;
    a colour scale on the right, and each target piece's log-probability beside its row."""
    weights = attention[: len(target), : len(source)].float().tolist()
    label_width = max([len(t) for t in target] + [4]) * 7 + 12
    label_height = max([len(s) for s in source] + [4]) * 7 + 12
    grid_right = label_width + CELL * len(source)
    score_width = 64 if piece_scores is not None else 0
    scale_x = grid_right + score_width + 16
    width = scale_x + 60
    height = label_height + max(CELL * len(target), 120) + 30
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
    if piece_scores is not None:
        parts.append(f'<text x="{grid_right + 6}" y="{label_height - 6}" fill="#555">log p</text>')
    for i, piece in enumerate(target):
        y = label_height + i * CELL
        parts.append(
            f'<text x="{label_width - 6}" y="{y + CELL / 2 + 4:.1f}" text-anchor="end">'
            f"{html.escape(piece)}</text>"
        )
        for j, weight in enumerate(weights[i]):
            parts.append(
                f'<rect x="{label_width + j * CELL}" y="{y}" width="{CELL}" height="{CELL}" '
                f'fill="{_shade(weight)}" stroke="#ddd">'
                f"<title>{html.escape(target[i])} / {html.escape(source[j])}: {weight:.3f}"
                "</title></rect>"
            )
        if piece_scores is not None and i < len(piece_scores):
            parts.append(
                f'<text x="{grid_right + 6}" y="{y + CELL / 2 + 4:.1f}" fill="#555">'
                f"{piece_scores[i]:.2f}</text>"
            )
    parts += _colour_scale(scale_x, label_height)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _shade(weight: float) -> str:
    level = round(255 * (1.0 - max(0.0, min(1.0, weight))))
    return f"rgb({level},{level},{level})"


def _colour_scale(x: float, top: float, steps: int = 10, height: int = 100) -> list[str]:
    """A vertical bar from 1.0 (top, black) to 0.0 (bottom, white), labelled."""
    step = height / steps
    parts = [f'<text x="{x}" y="{top - 6}" fill="#555">weight</text>']
    for k in range(steps):
        weight = 1.0 - (k + 0.5) / steps
        parts.append(
            f'<rect x="{x}" y="{top + k * step:.1f}" width="14" height="{step:.1f}" '
            f'fill="{_shade(weight)}" stroke="none"/>'
        )
    parts.append(
        f'<rect x="{x}" y="{top}" width="14" height="{height}" fill="none" stroke="#999"/>'
    )
    for value, y in ((1.0, top), (0.5, top + height / 2), (0.0, top + height)):
        parts.append(f'<text x="{x + 18}" y="{y + 4:.1f}">{value:.1f}</text>')
    return parts


def write_attention_plot(
    directory: Path,
    index: int,
    attention: Tensor,
    source: list[str],
    target: list[str],
    score: float | None = None,
    piece_scores: list[float] | None = None,
) -> Path:
    """Write ``directory/NNNNNN.svg`` for sentence ``index`` (0-based; files count from 1, like
    the ids of ``--format jsonl``) and return its path."""
    path = directory / f"{index + 1:06d}.svg"
    title = f"sentence {index + 1}" + ("" if score is None else f", score {score:.3f}")
    atomic_write_text(path, attention_svg(attention, source, target, title, piece_scores))
    return path
