import math

import pytest
import torch

from s2s_cli.config import TrainConfig
from s2s_cli.training.loss import label_smoothed_nll
from s2s_cli.training.schedule import LearningRate


def test_label_smoothing_equals_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    eps = 0.1
    # by hand: p = softmax(row); loss = (1-eps)*(-log p_target) + eps * mean_v(-log p_v)
    loss_by_hand, nll_by_hand = 0.0, 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        z = math.log(sum(math.exp(x) for x in row))
        logp = [x - z for x in row]
        nll_by_hand += -logp[t]
        loss_by_hand += (1 - eps) * -logp[t] + eps * sum(-lp for lp in logp) / 3
    loss, nll = label_smoothed_nll(logits, target, eps)
    assert float(loss) == pytest.approx(loss_by_hand, abs=1e-6)
    assert float(nll) == pytest.approx(nll_by_hand, abs=1e-6)
    torch_value = torch.nn.functional.cross_entropy(
        logits, target, label_smoothing=eps, reduction="sum"
    )
    assert float(loss) == pytest.approx(float(torch_value), abs=1e-6)


def test_no_smoothing_is_plain_nll():
    logits = torch.randn(5, 7)
    target = torch.randint(0, 7, (5,))
    loss, nll = label_smoothed_nll(logits, target, 0.0)
    assert float(loss) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    )
    assert float(loss) == pytest.approx(float(nll))


def schedule(**kwargs) -> LearningRate:
    return LearningRate(TrainConfig(**kwargs), kwargs.pop("total", None))


def test_warmup_and_constant():
    lr = schedule(lr=1.0, warmup_updates=4)
    assert [lr.at(u) for u in (1, 2, 4, 5, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_inverse_sqrt():
    lr = schedule(lr=1.0, warmup_updates=4, scheduler="inverse_sqrt")
    assert lr.at(4) == 1.0 and lr.at(16) == pytest.approx(0.5) and lr.at(64) == pytest.approx(0.25)


def test_cosine_reaches_min_lr_at_the_end():
    lr = LearningRate(TrainConfig(lr=1.0, min_lr=0.1, scheduler="cosine"), 100)
    assert lr.at(1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.01)))
    assert lr.at(50) == pytest.approx(0.55)
    assert lr.at(100) == pytest.approx(0.1) and lr.at(200) == pytest.approx(0.1)


def test_plateau_halves_after_patience_and_state_round_trips():
    lr = schedule(lr=1.0, scheduler="plateau", plateau_factor=0.5, plateau_patience=1)
    for value in (10.0, 11.0, 9.0):  # improves, improves, worse (1 bad: within patience)
        lr.observe(value, higher_is_better=True)
    assert lr.at(10) == 1.0
    lr.observe(8.0, higher_is_better=True)  # second bad validation -> halve
    assert lr.at(10) == 0.5
    clone = schedule(lr=1.0, scheduler="plateau", plateau_factor=0.5, plateau_patience=1)
    clone.load_state_dict(lr.state_dict())
    assert clone.at(10) == 0.5 and clone.best == 11.0
