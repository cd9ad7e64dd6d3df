"""Hard alignments from attention, and ``<unk>`` replacement by the most-attended source piece."""

from __future__ import annotations

from torch import Tensor


def hard_alignment(
    attention: Tensor, source_pieces: int, target_pieces: int
) -> list[tuple[int, int]]:
    """``(source, target)`` index pairs: each target piece's most-attended source piece.

    ``attention`` is ``(target_pieces + 1) x (source_pieces + 1)`` including the EOS row and
    column; EOS is left out on both sides.
    """
    if source_pieces == 0 or target_pieces == 0:
        return []
    best = attention[:target_pieces, :source_pieces].argmax(dim=1).tolist()
    return [(int(s), t) for t, s in enumerate(best)]


def format_alignment(pairs: list[tuple[int, int]]) -> str:
    return " ".join(f"{s}-{t}" for s, t in pairs)


def replace_unknowns(
    target_pieces: list[str], source_pieces: list[str], alignment: list[tuple[int, int]], unk: str
) -> list[str]:
    """Copy the aligned source piece over every ``unk`` target piece."""
    aligned = dict((t, s) for s, t in alignment)
    return [
        source_pieces[aligned[t]] if piece == unk and t in aligned else piece
        for t, piece in enumerate(target_pieces)
    ]
