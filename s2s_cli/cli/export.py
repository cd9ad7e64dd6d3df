"""``s2s export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import QuietOpt, VerboseOpt, setup_logging, user_errors

FORMATS = ("int8", "onnx")


def export(
    checkpoint: Annotated[
        Path, typer.Option("-c", "--checkpoint", metavar="CKPT", help="The checkpoint to export.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            metavar="PATH",
            help="Where the export goes: a file (int8) or a directory (onnx).",
        ),
    ],
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="|".join(FORMATS),
            help="int8: a checkpoint with int8 weight matrices (one float scale per row), about "
            "a quarter of the size, that s2s translate -c runs with --precision int8 (CPU). "
            "onnx: a directory with the encoder and one decoder step as ONNX graphs, the "
            "SentencePiece models and model.json, that s2s translate -c runs on onnxruntime "
            "(needs the onnx extra: pip install 's2s-cli[onnx]').",
        ),
    ] = "int8",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Make a model to ship from a checkpoint; prints the output's path."""
    from s2s_cli.errors import ConfigError

    with user_errors():
        setup_logging(verbose, quiet=quiet)
        if export_format not in FORMATS:
            raise ConfigError(f"--format: '{export_format}' is not one of: {', '.join(FORMATS)}")
        from s2s_cli.checkpoint import load_checkpoint, save_checkpoint

        loaded = load_checkpoint(checkpoint)
        if export_format == "onnx":
            from s2s_cli.decoding.onnx_model import export_onnx

            export_onnx(loaded, output)
        else:
            from s2s_cli.decoding.int8 import int8_checkpoint

            save_checkpoint(int8_checkpoint(loaded), output)
    print(output, flush=True)
