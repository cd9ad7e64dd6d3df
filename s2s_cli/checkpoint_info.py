"""``s2s info CHECKPOINT``: architecture, parameter counts per module, training progress."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from s2s_cli.checkpoint import FORMAT_VERSION, load_checkpoint, model_from_checkpoint


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    from s2s_cli.models.build import parameter_counts

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint)
    m = checkpoint.config.model
    architecture = {
        "cell": m.cell,
        "embed_dim": m.embed_dim,
        "hidden_size": m.hidden_size,
        "encoder": f"{m.encoder_layers}x{'bi-' if m.bidirectional else ''}{m.cell} "
        f"{m.encoder_output_size}",
        "decoder": f"{m.decoder_layers}x{m.cell} {m.hidden_size}",
        "attention": m.attention
        if m.attention == "none"
        else f"{m.attention} ({m.attention_placement})",
        "input_feeding": m.input_feeding,
        "peeky": m.peeky,
        "bridge": m.bridge,
        "reverse_source": m.reverse_source,
        "tie_embeddings": m.tie_embeddings,
        "share_embeddings": m.share_embeddings,
        "preset": m.preset,
    }
    vocab = checkpoint.vocab
    return {
        "path": str(path),
        "s2s_version": checkpoint.s2s_version,
        "format_version": FORMAT_VERSION,
        "integrity": "sha256 verified" if checkpoint.digest else "unverified (no digest)",
        "languages": f"{vocab.src_lang}-{vocab.tgt_lang}",
        "vocab_size": {"src": vocab.src_size, "tgt": vocab.tgt_size},
        "model": architecture,
        "parameters": parameter_counts(model),
        "progress": asdict(checkpoint.progress),
        "best": {} if checkpoint.best is None else asdict(checkpoint.best),
        "averaged_from": checkpoint.averaged_from,
        "weights": "int8" if checkpoint.int8_scales else "float",
    }
