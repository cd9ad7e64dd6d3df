"""Learning tests: a tiny model of each preset learns a toy task to high held-out accuracy."""

import pytest
import torch

from s2s_cli.config import DecodeConfig, load_config
from s2s_cli.data.spm import BOS, EOS
from s2s_cli.decoding.greedy import greedy_search
from s2s_cli.decoding.scorer import Ensemble
from s2s_cli.models.build import build_model
from s2s_cli.training.step import LossModule

SYMBOLS = 10
VOCAB = 4 + SYMBOLS


def toy_batch(size: int, generator: torch.Generator, reverse: bool, max_len: int):
    lengths = torch.randint(3, max_len + 1, (size,), generator=generator)
    width = int(lengths.max()) + 1
    src = torch.zeros(size, width, dtype=torch.long)
    tgt_in = torch.zeros_like(src)
    tgt_out = torch.zeros_like(src)
    for i, n in enumerate(lengths.tolist()):
        seq = torch.randint(4, VOCAB, (n,), generator=generator)
        target = seq.flip(0) if reverse else seq
        src[i, :n], src[i, n] = seq, EOS
        tgt_in[i, 0], tgt_in[i, 1 : n + 1] = BOS, target
        tgt_out[i, :n], tgt_out[i, n] = target, EOS
    return src, lengths + 1, tgt_in, tgt_out


def exact_match(model, test) -> float:
    src, lengths, _, tgt_out = test
    model.eval()
    with torch.no_grad():
        hyps = greedy_search(Ensemble([model]), src, lengths, DecodeConfig(beam=1, min_len=0))
    model.train()
    hits = sum(h[0].tokens == tgt_out[i, : lengths[i] - 1].tolist() for i, h in enumerate(hyps))
    return hits / len(hyps)


# (task, max updates, learning rate, hidden size, max length, required accuracy)
CASES = {
    "fast": ("reverse", 400, 3e-3, 64, 8, 0.99),
    "luong": ("reverse", 400, 3e-3, 64, 8, 0.99),
    "bahdanau": ("reverse", 400, 3e-3, 64, 8, 0.99),
    "cho": ("copy", 3000, 5e-3, 128, 6, 0.90),
    # 4 layers and no attention: copies of up to 5 symbols took 300-450 updates over 5 seeds
    "sutskever": ("copy", 1500, 1e-2, 128, 5, 0.90),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(CASES))
def test_preset_learns_a_toy_task(preset):
    task, max_updates, lr, hidden, max_len, required = CASES[preset]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(
            overrides=[
                f"model.preset={preset}",
                "model.embed_dim=32",
                f"model.hidden_size={hidden}",
                "model.dropout=0",
            ]
        ).model
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB, VOCAB)
        objective = LossModule(model, 0.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        data = torch.Generator().manual_seed(0)
        test = toy_batch(300, torch.Generator().manual_seed(123), task == "reverse", max_len)
        accuracy = 0.0
        for update in range(1, max_updates + 1):
            src, lengths, tgt_in, tgt_out = toy_batch(64, data, task == "reverse", max_len)
            loss, _ = objective(src, lengths, tgt_in, tgt_out)
            (loss / (tgt_out != 0).sum()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad()
            if update % 100 == 0:
                accuracy = exact_match(model, test)
                if accuracy >= required:  # learned: the assertion below holds
                    break
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= required, f"{preset}: {accuracy:.3f} exact match after {update} updates"
