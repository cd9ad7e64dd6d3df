"""``s2s shortlist``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import QuietOpt, VerboseOpt, setup_logging, user_errors
from s2s_cli.config import DecodeConfig

log = logging.getLogger(__name__)


def shortlist(
    data: Annotated[
        Path,
        typer.Option(
            "--data", metavar="DIR", help="The dataset directory the model was trained on."
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="FILE", help="The shortlist file (.npz).")
    ] = Path("shortlist.npz"),
    per_source: Annotated[
        int,
        typer.Option(
            "--per-source",
            metavar="N",
            help="Candidates kept per source piece: the target pieces that co-occur with it "
            "most (Dice coefficient over the training sentences).",
        ),
    ] = 50,
    frequent: Annotated[
        int,
        typer.Option(
            "--frequent", metavar="N", help="The N most frequent target pieces, always scored."
        ),
    ] = 100,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn a lexical shortlist from the training split for s2s translate --shortlist; prints
    its path. Reports, on the validation split, the mean list size per batch and the share of
    reference pieces it holds."""
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.decoding.shortlist import build_shortlist, split_coverage

    with user_errors():
        setup_logging(verbose, quiet=quiet)
        result = build_shortlist(data, per_source=per_source, frequent=frequent)
        result.save(output)
        batch_size = DecodeConfig().batch_size
        for split in Dataset(data).splits:
            if split == "train":
                continue
            share, size = split_coverage(result, data, split, batch_size)
            log.info(
                "%s: %.1f%% of the reference pieces are in their batch's shortlist "
                "(%d-sentence batches; %.0f of %d pieces per batch on average)",
                split,
                100 * share,
                batch_size,
                size,
                result.tgt_vocab,
            )
    print(output, flush=True)
