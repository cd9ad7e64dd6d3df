import math

import pytest
import torch

from s2s_cli.config import TrainConfig
from s2s_cli.training.loss import ProjectedCrossEntropy, label_smoothed_nll
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


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_the_cpu_optimizer_is_fused_and_updates_as_pytorchs_default_adam(kind):
    """build_optimizer takes PyTorch's fused Adam(W) on the CPU (one pass per parameter instead
    of ~10); five updates land where the default single-tensor loop lands, up to rounding."""
    from s2s_cli.config import TrainConfig
    from s2s_cli.training.schedule import build_optimizer

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(5)]
    cfg = TrainConfig(optimizer=kind, lr=1e-2, weight_decay=0.01)
    reference_cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    updated = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        if fused:
            optimizer = build_optimizer(params, cfg)
            assert optimizer.defaults.get("fused") and type(optimizer) is reference_cls
        else:
            optimizer = reference_cls(params, lr=1e-2, weight_decay=0.01, foreach=False)
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        updated.append([p.detach() for p in params])
    for fused, plain, start in zip(*updated, weights):
        assert (plain - start).abs().mean() > 1e-3  # the updates moved the weights
        assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_projected_loss_equals_projection_then_reference_loss(eps):
    torch.manual_seed(0)
    inputs = torch.randn(600, 12, dtype=torch.float64, requires_grad=True)  # > one row chunk
    weight = torch.randn(25, 12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(25, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 25, (600,))
    loss, nll = ProjectedCrossEntropy(eps)(inputs, weight, bias, target)
    (loss * 0.3).backward()
    fused = [t.grad.clone() for t in (inputs, weight, bias)]
    for t in (inputs, weight, bias):
        t.grad = None
    expected, expected_nll = label_smoothed_nll(inputs @ weight.T + bias, target, eps)
    (expected * 0.3).backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(nll) == pytest.approx(float(expected_nll), rel=1e-6)
    for got, t in zip(fused, (inputs, weight, bias)):
        assert torch.allclose(got, t.grad, atol=1e-9)


def test_projected_loss_in_bf16_is_the_float32_loss_of_the_bf16_product_for_any_row_chunk(
    monkeypatch,
):
    """bf16 features (as under autocast): the product is rounded to bf16 once, the bias is added
    and the statistics computed in float32 row chunks of one reused buffer. The loss is the
    reference loss of those logits; the chunk size (a speed setting) changes no input or weight
    gradient bit, and the bias gradient (summed per chunk in float32) only in rounding."""
    import s2s_cli.training.loss as loss_module

    torch.manual_seed(0)
    inputs = torch.randn(600, 16).bfloat16()
    weight = torch.randn(40, 16) * 0.3
    bias = torch.randn(40) * 0.1
    target = torch.randint(0, 40, (600,))
    logits = (inputs @ weight.bfloat16().t()).float() + bias
    expected, expected_nll = label_smoothed_nll(logits, target, 0.1)
    reference = [t.clone().requires_grad_() for t in (inputs.float(), weight, bias)]
    reference_loss, _ = label_smoothed_nll(
        (reference[0] @ reference[1].bfloat16().float().t()) + reference[2], target, 0.1
    )
    (reference_loss * 0.01).backward()
    gradients = []
    for rows in (600, 256, 64, 7):  # one chunk; several with a short last one
        monkeypatch.setattr(loss_module, "ROWS_PER_CHUNK", rows)
        params = [t.clone().requires_grad_() for t in (inputs, weight, bias)]
        loss, nll = ProjectedCrossEntropy(0.1)(*params, target)
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
        assert float(nll) == pytest.approx(float(expected_nll), rel=1e-6)
        (loss * 0.01).backward()
        gradients.append([p.grad for p in params])
        # against float32 autograd: bf16 rounding of the gradient buffer is the only difference
        for got, want in zip(gradients[-1], reference):
            assert (got.float() - want.grad).norm() < 0.01 * want.grad.norm()
    for other in gradients[1:]:
        assert torch.equal(gradients[0][0], other[0]) and torch.equal(gradients[0][1], other[1])
        assert torch.allclose(gradients[0][2], other[2], rtol=1e-5, atol=1e-8)


def test_projected_loss_gradient_matches_finite_differences_and_reuse_is_guarded():
    torch.manual_seed(0)
    criterion = ProjectedCrossEntropy(0.1)
    tensors = [
        torch.randn(7, 4, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
        torch.randn(6, dtype=torch.float64),
    ]
    target = torch.randint(0, 6, (7,))
    params = [t.clone().requires_grad_() for t in tensors]
    criterion(*params, target)[0].backward()
    for param, base in zip(params, tensors):
        numeric = torch.zeros_like(base)
        for i in range(base.numel()):
            plus, minus = [t.clone() for t in tensors], [t.clone() for t in tensors]
            which = next(k for k, t in enumerate(tensors) if t is base)
            plus[which].view(-1)[i] += 1e-6
            minus[which].view(-1)[i] -= 1e-6
            numeric.view(-1)[i] = (
                criterion(*plus, target)[0] - criterion(*minus, target)[0]
            ) / 2e-6
        assert torch.allclose(param.grad, numeric, atol=1e-6)
    inputs, weight, bias = params
    first, _ = criterion(inputs, weight, bias, target)
    criterion(inputs, weight, bias, target)  # a second forward reuses the workspace...
    with pytest.raises(RuntimeError, match="another forward ran before this backward"):
        first.backward()  # ...so the first backward refuses to return a wrong gradient


def test_loss_module_objectives_agree(monkeypatch):
    """The objectives LossModule can pick per device give the same loss and gradients: fused,
    plain over the gathered non-padding positions (CPU), plain over every position with padding
    weighted out (CUDA, where gathering costs a host sync)."""
    from s2s_cli.config import ModelConfig
    from s2s_cli.data.spm import BOS, EOS, PAD
    from s2s_cli.models.build import build_model
    from s2s_cli.training import step
    from s2s_cli.training.step import LossModule

    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=8, hidden_size=12, dropout=0.0), 30, 30)
    src = torch.randint(4, 30, (3, 6))
    src[:, -1] = EOS
    lengths = torch.full((3,), 6)
    tgt_out = torch.randint(4, 30, (3, 5))
    tgt_out[0, 3], tgt_out[0, 4] = EOS, PAD
    tgt_out[2, 1], tgt_out[2, 2:] = EOS, PAD
    tgt_in = torch.cat([torch.full((3, 1), BOS), tgt_out[:, :-1]], dim=1)
    results = []
    for fused, gather in ((True, True), (False, True), (False, False)):
        monkeypatch.setitem(step.GATHER_POSITIONS, "cpu", gather)
        model.zero_grad()
        loss, nll = LossModule(model, 0.1, fused=fused)(src, lengths, tgt_in, tgt_out)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), nll, grads))
    loss_a, nll_a, grads_a = results[0]
    for loss_b, nll_b, grads_b in results[1:]:
        assert torch.allclose(loss_a, loss_b, atol=1e-5)
        assert torch.allclose(nll_a, nll_b, atol=1e-5)
        for a, b in zip(grads_a, grads_b):
            assert torch.allclose(a, b, atol=1e-6)
    # (so padding adds nothing to the weighted sum: the gathered one never sees it)


def test_rnn_cast_call_computes_in_the_requested_dtype_and_reaches_fp32_weights():
    """The bf16-on-CUDA route of run_rnn (weights cast per call), exercised on the CPU."""
    from s2s_cli.models.recurrent import _call_in

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(8, 16, batch_first=True)
    x = torch.randn(3, 5, 8)
    out, (h, _) = _call_in(rnn, x, None, torch.bfloat16, torch.float32)
    assert out.dtype == torch.float32 and h.dtype == torch.float32  # back in the inputs' dtype
    reference = torch.nn.LSTM(8, 16, batch_first=True)
    reference.load_state_dict(rnn.state_dict())
    expected, _ = reference.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert torch.equal(out, expected.float())
    out.sum().backward()
    assert rnn.weight_hh_l0.grad is not None and rnn.weight_hh_l0.grad.dtype == torch.float32


def test_teacher_forcing_schedule():
    from s2s_cli.training.schedule import teacher_forcing_ratio

    constant = TrainConfig(teacher_forcing=0.8)
    assert [teacher_forcing_ratio(constant, u) for u in (0, 10**6)] == [0.8, 0.8]
    linear = TrainConfig(teacher_forcing_final=0.5, teacher_forcing_updates=100)
    ratios = [teacher_forcing_ratio(linear, u) for u in (0, 50, 100, 1000)]
    assert ratios == pytest.approx([1.0, 0.75, 0.5, 0.5])


def test_no_teacher_forcing_feeds_back_the_models_own_greedy_predictions():
    """teacher_forcing=0: every step's input is the argmax of the previous step's output."""
    from s2s_cli.config import ModelConfig
    from s2s_cli.data.spm import BOS, EOS
    from s2s_cli.models.build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=8, hidden_size=12, dropout=0.0), 30, 30).eval()
    src = torch.randint(4, 30, (2, 5))
    src[:, -1] = EOS
    lengths = torch.full((2,), 5)
    gold = torch.randint(4, 30, (2, 6))
    gold[:, 0] = BOS
    features, _ = model.features(src, lengths, gold, teacher_forcing=0.0)
    enc = model.encode(src, lengths)
    state = model.init_state(enc)
    prev, expected = gold[:, 0], []
    for _ in range(gold.size(1)):
        feature, state, _ = model.decoder.step(prev, state, enc)
        expected.append(feature)
        prev = model.decoder.project(feature).argmax(-1)
    assert torch.allclose(features, torch.stack(expected, dim=1), atol=1e-6)
    teacher_forced, _ = model.features(src, lengths, gold)
    assert not torch.allclose(features, teacher_forced, atol=1e-3)
