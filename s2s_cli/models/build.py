"""``build_model``: the one factory from a validated ``ModelConfig`` to a ``Seq2Seq``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

from s2s_cli.config import ModelConfig
from s2s_cli.data.spm import PAD
from s2s_cli.errors import ConfigError
from s2s_cli.models.decoder import Decoder
from s2s_cli.models.encoder import Encoder
from s2s_cli.models.seq2seq import Bridge, Seq2Seq


def build_model(
    cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, *, initialise: bool = True
) -> Seq2Seq:
    """Build the model the config describes (choices were validated when the config loaded).

    ``initialise=False`` leaves every weight as ``torch.empty`` made it, for a caller that loads
    all of them next (a checkpoint): drawing the random initial weights took 0.1 s of every
    ``s2s translate`` (12M numbers, some drawn twice), about 8% of a one-sentence command.
    """
    # (skipped, every initialiser below is torch.nn.init's too, so each leaves its tensor as is)
    with contextlib.nullcontext() if initialise else _initialisation_skipped():
        return _build(cfg, src_vocab_size, tgt_vocab_size)


def _build(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    std = cfg.embed_init_std or cfg.embed_dim**-0.5
    src_embedding = _embedding(src_vocab_size, cfg.embed_dim, std)
    if cfg.share_embeddings:
        if src_vocab_size != tgt_vocab_size:
            raise ConfigError(
                "model.share_embeddings needs one joint vocabulary; this dataset has "
                f"{src_vocab_size} source and {tgt_vocab_size} target pieces"
            )
        tgt_embedding = src_embedding
    else:
        tgt_embedding = _embedding(tgt_vocab_size, cfg.embed_dim, std)
    encoder = Encoder(
        src_embedding,
        cell=cfg.cell,
        output_size=cfg.encoder_output_size,
        layers=cfg.encoder_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        reverse_source=cfg.reverse_source,
        bidirectional_layers=cfg.bidirectional_layers,
    )
    decoder = Decoder(
        tgt_embedding,
        cell=cfg.cell,
        hidden_size=cfg.hidden_size,
        layers=cfg.decoder_layers,
        encoder_size=cfg.encoder_output_size,
        attention=cfg.attention,
        placement=cfg.attention_placement,
        input_feeding=cfg.input_feeding,
        peeky=cfg.peeky,
        tie_embeddings=cfg.tie_embeddings,
        dropout=cfg.dropout,
    )
    bridge = Bridge(
        cfg.bridge,
        cell=cfg.cell,
        encoder_size=cfg.encoder_output_size,
        hidden_size=cfg.hidden_size,
        layers=cfg.decoder_layers,
    )
    model = Seq2Seq(encoder, decoder, bridge, word_dropout=cfg.word_dropout)
    if cfg.weight_init == "lecun_normal":
        _lecun_normal_(model)
    elif cfg.weight_init == "uniform":
        _uniform_(model, cfg.init_range)
    return model


_INITIALISATION_PATCH = threading.Lock()


@contextlib.contextmanager
def _initialisation_skipped() -> Iterator[None]:
    """Within: ``torch.nn.init``'s in-place initialisers leave their tensor as it is.

    PyTorch's modules initialise their weights in their constructors, through these functions
    (looked up at every call); there is no switch to skip them short of the meta device, and
    that imports ``torch._dynamo`` (0.9 s). The functions are swapped for the duration of one
    build, under a lock, so two builds never save each other's stand-ins; a module another
    thread constructs meanwhile would start uninitialised too (s2s builds in one thread).
    """
    init = torch.nn.init
    names = [
        name
        for name in dir(init)
        if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))
    ]
    with _INITIALISATION_PATCH:
        saved = {name: getattr(init, name) for name in names}
        try:
            for name in names:
                setattr(init, name, _unchanged)
            yield
        finally:
            for name, function in saved.items():
                setattr(init, name, function)


def _unchanged(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


def _lecun_normal_(model: nn.Module) -> None:
    """N(0, 1/fan_in) for every weight matrix but the embeddings, zero biases.

    The initialisation of the reference implementations of the classic toy lessons (Saito, "Deep
    Learning from Scratch 2"): with PyTorch's default uniform(+-1/sqrt(hidden)) the RNN's input
    weights start ~5x smaller for small embeddings, and the reversed-source addition model never
    takes off in 25 epochs (recipes/toy/README.md).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with torch.no_grad():
        for param in model.parameters():
            if id(param) in embeddings:
                continue
            if param.dim() == 1:
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=param.shape[1] ** -0.5)


def _uniform_(model: nn.Module, bound: float) -> None:
    """U(-bound, bound) for every parameter, embeddings and biases included (padding row zero).

    The classic NMT initialisation (Luong et al. 2015 with 0.1; Sutskever et al. 2014 with
    0.08), and what OpenNMT-py and fairseq's LSTM do. Its recurrent weights start 1.6-3.2x larger
    than PyTorch's U(+-1/sqrt(hidden)) at hidden sizes of 256-1,024, and the model learns faster
    in its first updates (docs/models.md).
    """
    embeddings = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    with torch.no_grad():
        for param in model.parameters():
            nn.init.uniform_(param, -bound, bound)
        for weight in embeddings:
            weight[PAD].zero_()


def _embedding(vocab_size: int, dim: int, std: float) -> nn.Embedding:
    # 1/sqrt(dim) suits tied output layers (logits start small); small untied models learn
    # markedly faster from N(0, 1) (model.embed_init_std: 1.0; see recipes/toy/README.md).
    embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD)
    nn.init.normal_(embedding.weight, std=std)
    nn.init.zeros_(embedding.weight[PAD])
    return embedding


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level module (shared tensors counted once) and the total."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        parts = name.split(".")
        # decoder.rnn.weight_ih_l0 -> decoder.rnn; decoder.output_weight -> decoder.output
        module = (
            f"{parts[0]}.{parts[1]}" if len(parts) > 2 else f"{parts[0]}.{parts[1].split('_')[0]}"
        )
        counts[module] = counts.get(module, 0) + param.numel()
    counts["total"] = sum(counts.values())
    return counts
