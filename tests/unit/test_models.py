import itertools

import pytest
import torch

from s2s_cli.config import ATTENTIONS, CELLS, PRESETS, ModelConfig, load_config, load_preset
from s2s_cli.data.spm import BOS, EOS, PAD, UNK
from s2s_cli.errors import ConfigError
from s2s_cli.models.attention import ATTENTION_KINDS
from s2s_cli.models.build import build_model, parameter_counts
from s2s_cli.models.encoder import reverse_padded
from s2s_cli.models.seq2seq import drop_words

VOCAB = 20


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 5, 3, 6])
    src = torch.randint(4, VOCAB, (4, 7), generator=g)
    for i, n in enumerate(lengths.tolist()):
        src[i, n - 1] = EOS
        src[i, n:] = PAD
    tgt_in = torch.randint(4, VOCAB, (4, 6), generator=g)
    tgt_in[:, 0] = BOS
    return src, lengths, tgt_in


def model_for(**kwargs) -> torch.nn.Module:
    base = {"embed_dim": 8, "hidden_size": 12, "dropout": 0.0}
    base.update(kwargs)
    torch.manual_seed(1)
    return build_model(ModelConfig(**base), VOCAB, VOCAB).eval()


def step_logits(model, src, lengths, tgt_in):
    enc = model.encode(src, lengths)
    state = model.init_state(enc)
    logits, attention = [], []
    for t in range(tgt_in.size(1)):
        out, state, att = model.step(tgt_in[:, t], state, enc)
        logits.append(out)
        attention.append(att)
    return torch.stack(logits, 1), attention


GRID = list(
    itertools.product(
        [1, 2],
        [False, True],
        ["luong", "bahdanau"],
        [False, True],
        [False, True],
        ["zero", "last", "last_hidden", "bridge"],
    )
)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_variant_builds_and_step_decoding_equals_teacher_forcing(cell, attention):
    """The key invariant, over the whole grid: incremental decoding == teacher-forced forward."""
    src, lengths, tgt_in = batch()
    for layers, bidirectional, placement, feeding, peeky, bridge in GRID:
        model = model_for(
            cell=cell,
            attention=attention,
            encoder_layers=layers,
            decoder_layers=layers,
            bidirectional=bidirectional,
            attention_placement=placement,
            input_feeding=feeding,
            peeky=peeky,
            bridge=bridge,
        )
        with torch.no_grad():
            logits = model(src, lengths, tgt_in)
            stepped, step_attention = step_logits(model, src, lengths, tgt_in)
        assert logits.shape == (4, 6, VOCAB)
        assert torch.allclose(logits, stepped, atol=1e-5), (
            layers,
            bidirectional,
            placement,
            feeding,
            peeky,
            bridge,
        )
        if attention == "none":
            assert step_attention[0] is None
        else:
            assert step_attention[0].shape == (4, 7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("attention", ["none", "general", "additive"])
@pytest.mark.parametrize("peeky", [False, True])
def test_fused_path_equals_step_path(cell, attention, peeky):
    model = model_for(cell=cell, attention=attention, peeky=peeky, input_feeding=False)
    assert model.decoder.fused
    src, lengths, tgt_in = batch()
    with torch.no_grad():
        enc = model.encode(src, lengths)
        fused, fused_attention = model.decoder.forward_fused(tgt_in, model.init_state(enc), enc)
        stepped, step_attention = model._features_by_step(tgt_in, model.init_state(enc), enc, 1.0)
    assert torch.allclose(fused, stepped, atol=1e-5)
    if attention != "none":
        assert torch.allclose(fused_attention, step_attention, atol=1e-6)


def test_fused_path_has_no_python_loop_over_time(monkeypatch):
    model = model_for(attention="general")
    calls = []
    original = model.decoder.step
    monkeypatch.setattr(model.decoder, "step", lambda *a: calls.append(1) or original(*a))
    src, lengths, tgt_in = batch()
    model(src, lengths, tgt_in)
    assert calls == []
    looped = model_for(attention="general", input_feeding=True)
    assert not looped.decoder.fused


@pytest.mark.parametrize("preset", PRESETS)
def test_padding_never_changes_a_result(preset):
    cfg = load_config(
        overrides=[
            f"model.preset={preset}",
            "model.embed_dim=8",
            "model.hidden_size=12",
            "model.dropout=0",
        ]
    ).model
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, VOCAB).eval()
    src, lengths, tgt_in = batch()
    padded_src = torch.cat([src, torch.zeros(4, 5, dtype=torch.long)], 1)
    padded_tgt = torch.cat([tgt_in, torch.zeros(4, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(src, lengths, tgt_in)
        padded = model(padded_src, lengths, padded_tgt)
        _features, attention = model.features(padded_src, lengths, padded_tgt)
        alone = [
            model(src[i : i + 1, : lengths[i]], lengths[i : i + 1], tgt_in[i : i + 1])
            for i in range(4)
        ]
    assert torch.allclose(logits, padded[:, :6], atol=1e-5)
    for i in range(4):
        assert torch.allclose(alone[i][0], logits[i], atol=1e-5)
    if attention is not None:
        for i, n in enumerate(lengths.tolist()):
            assert torch.all(attention[i, :, n:] == 0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_one_encoder_row_per_sentence_steps_like_a_copy_per_beam(cell, attention):
    """Beam search keeps one encoder row per sentence for its k adjacent beams: every variant's
    steps (logits, attention, state) equal those over an encoder output copied per beam."""
    src, lengths, tgt_in = batch()
    k = 3
    beams = torch.arange(src.size(0)).repeat_interleave(k)
    for placement, feeding, peeky in itertools.product(
        ["luong", "bahdanau"], [False, True], [False, True]
    ):
        model = model_for(
            cell=cell,
            attention=attention,
            encoder_layers=2,
            decoder_layers=2,
            attention_placement=placement,
            input_feeding=feeding,
            peeky=peeky,
        )
        with torch.no_grad():
            enc = model.encode(src, lengths)
            copied = enc.select(beams)
            state = shared_state = model.init_state(enc).select(beams)
            # beams diverge: each row of a sentence is fed different pieces
            pieces = torch.randint(4, VOCAB, (tgt_in.size(1), beams.numel()))
            for t in range(tgt_in.size(1)):
                expected, state, expected_attention = model.step(pieces[t], state, copied)
                got, shared_state, got_attention = model.step(pieces[t], shared_state, enc)
                variant = (placement, feeding, peeky, t)
                assert torch.allclose(got, expected, atol=1e-6), variant
                for a, b in zip(shared_state, state, strict=True):
                    assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6), variant
                if attention == "none":
                    assert got_attention is None and expected_attention is None
                else:
                    assert torch.allclose(got_attention, expected_attention, atol=1e-6), variant


def test_select_reorders_like_decoding_the_reordered_batch():
    for feeding in (False, True):
        model = model_for(attention="general", input_feeding=feeding)
        src, lengths, tgt_in = batch()
        order = torch.tensor([2, 0, 0, 3])
        with torch.no_grad():
            enc = model.encode(src, lengths)
            state = model.init_state(enc)
            _, state, _ = model.step(tgt_in[:, 0], state, enc)
            enc_sel, state_sel = enc.select(order), state.select(order)
            a, _, att_a = model.step(tgt_in[order, 1], state_sel, enc_sel)

            enc2 = model.encode(src[order], lengths[order])
            state2 = model.init_state(enc2)
            _, state2, _ = model.step(tgt_in[order, 0], state2, enc2)
            b, _, att_b = model.step(tgt_in[order, 1], state2, enc2)
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(att_a, att_b, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_parameter_receives_a_gradient(preset):
    cfg = load_config(
        overrides=[f"model.preset={preset}", "model.embed_dim=8", "model.hidden_size=12"]
    ).model
    model = build_model(cfg, VOCAB, VOCAB).train()
    src, lengths, tgt_in = batch()
    model(src, lengths, tgt_in).sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert missing == []


def test_source_reversal_reads_backwards_but_keeps_output_order():
    forward = model_for(bidirectional=False, attention="none", reverse_source=False)
    backward = model_for(bidirectional=False, attention="none", reverse_source=True)
    src, lengths, _ = batch()
    with torch.no_grad():
        out_rev, _, final_rev, _ = backward.encoder(src, lengths)
        # the same weights on a manually reversed source (EOS kept last) give the same state...
        flipped = reverse_padded(src, lengths - 1)
        last = (lengths - 1).unsqueeze(1)
        assert torch.equal(flipped.gather(1, last), src.gather(1, last))
        out_fwd, _, final_fwd, _ = forward.encoder(flipped, lengths)
    assert torch.allclose(final_rev, final_fwd, atol=1e-6)
    # ...and outputs come back in the original order (position j <-> source token j)
    assert torch.allclose(out_rev, reverse_padded(out_fwd, lengths - 1), atol=1e-6)


def test_reverse_padded_leaves_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    assert reverse_padded(x, torch.tensor([3, 2])).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def test_tied_and_shared_embeddings_are_one_tensor():
    tied = model_for(tie_embeddings=True, share_embeddings=True, embed_dim=8, hidden_size=12)
    assert tied.encoder.embedding is tied.decoder.embedding
    assert tied.decoder.output_weight is None and tied.decoder.pre_output is not None
    counts = parameter_counts(tied)
    untied = parameter_counts(model_for())
    assert counts["total"] < untied["total"]


def test_bridge_allows_different_encoder_and_decoder_shapes():
    model = model_for(
        bridge="bridge",
        encoder_layers=3,
        decoder_layers=2,
        encoder_hidden_size=20,
        hidden_size=12,
        bidirectional=True,
        attention="general",
    )
    src, lengths, tgt_in = batch()
    with torch.no_grad():
        state = model.init_state(model.encode(src, lengths))
    assert state.hidden.shape == (2, 4, 12) and state.cell.shape == (2, 4, 12)
    assert model(src, lengths, tgt_in).shape == (4, 6, VOCAB)


def test_bridge_last_uses_the_encoder_final_state_and_zero_is_zero():
    src, lengths, _ = batch()
    last = model_for(bridge="last")
    with torch.no_grad():
        enc = last.encode(src, lengths)
        state = last.init_state(enc)
    assert torch.equal(state.hidden, enc.final_hidden) and torch.equal(state.cell, enc.final_cell)
    last_hidden = model_for(bridge="last_hidden")
    with torch.no_grad():
        enc = last_hidden.encode(src, lengths)
        state = last_hidden.init_state(enc)
    assert torch.equal(state.hidden, enc.final_hidden) and torch.all(state.cell == 0)
    zero = model_for(bridge="zero")
    with torch.no_grad():
        assert torch.all(zero.init_state(zero.encode(src, lengths)).hidden == 0)


def test_teacher_forcing_below_one_feeds_back_predictions():
    model = model_for(attention="general")
    src, lengths, tgt_in = batch()
    with torch.no_grad():
        teacher = model.features(src, lengths, tgt_in, teacher_forcing=1.0)[0]
        free = model.features(src, lengths, tgt_in, teacher_forcing=0.0)[0]
        # with no teacher forcing the model's own greedy output replaces the gold prefix
        greedy_in = tgt_in.clone()
        for t in range(1, tgt_in.size(1)):
            greedy_in[:, t] = model.decoder.project(free[:, t - 1]).argmax(-1)
        expected = model.features(src, lengths, greedy_in, teacher_forcing=1.0)[0]
    assert torch.allclose(free[:, 0], teacher[:, 0], atol=1e-6)
    assert torch.allclose(free, expected, atol=1e-5)


def test_drop_words_replaces_that_share_of_words_and_never_a_special_id():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (200, 500), generator=g)
    torch.manual_seed(5)
    dropped = drop_words(tokens, 0.3)
    changed = dropped != tokens
    words = tokens > EOS
    assert not changed[~words].any()  # PAD, UNK, BOS and EOS stay
    assert (dropped[changed] == UNK).all()
    assert changed[words].float().mean().item() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("input_feeding", [False, True])  # the fused and the step-by-step decoder
def test_word_dropout_drops_source_and_target_words_in_training_only(input_feeding):
    src, lengths, tgt_in = batch()
    plain = model_for(input_feeding=input_feeding)
    dropping = model_for(input_feeding=input_feeding, word_dropout=0.5)
    assert dropping.decoder.fused is not input_feeding
    with torch.no_grad():
        evaluated = dropping.features(src, lengths, tgt_in)[0]
        assert torch.equal(evaluated, plain.features(src, lengths, tgt_in)[0])  # eval: no effect
        dropping.train()
        torch.manual_seed(3)
        trained = dropping.features(src, lengths, tgt_in)[0]
        torch.manual_seed(3)
        src_dropped, tgt_dropped = drop_words(src, 0.5), drop_words(tgt_in, 0.5)
        plain.train()  # (dropout 0: the same computation, down to the LSTM kernel)
        expected = plain.features(src_dropped, lengths, tgt_dropped)[0]
    assert not torch.equal(src_dropped, src) and not torch.equal(tgt_dropped, tgt_in)
    assert torch.equal(trained, expected)
    assert not torch.allclose(trained, evaluated)


def test_word_dropout_is_validated():
    with pytest.raises(ConfigError, match="model.word_dropout"):
        ModelConfig(word_dropout=1.0)


def test_attention_keys_are_projected_once_per_sentence(monkeypatch):
    model = model_for(attention="general")
    calls = []
    original = model.decoder.attention.project_keys
    monkeypatch.setattr(
        model.decoder.attention, "project_keys", lambda v: calls.append(1) or original(v)
    )
    src, lengths, tgt_in = batch()
    step_logits(model, src, lengths, tgt_in)
    assert len(calls) == 1


def test_lecun_normal_init_scales_by_fan_in_and_leaves_embeddings_alone():
    cfg = {"embed_dim": 64, "hidden_size": 256, "attention": "additive", "bridge": "bridge"}
    default, lecun = model_for(**cfg), model_for(weight_init="lecun_normal", **cfg)
    lecun_params = dict(lecun.named_parameters())
    checked = 0
    for name, param in default.named_parameters():
        new = lecun_params[name]
        if "embedding" in name:  # same seed, same embedding init, padding row still zero
            assert torch.equal(new, param) and not new[PAD].any()
        elif new.dim() == 1:
            assert not new.any(), name
        elif new.numel() >= 4096:  # big enough for a tight estimate of the spread
            assert new.std().item() == pytest.approx(new.shape[1] ** -0.5, rel=0.1), name
            if ".rnn" in name:  # PyTorch's default there is uniform(+-1/sqrt(hidden))
                assert new.std().item() != pytest.approx(param.std().item(), rel=0.1), name
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("bound", [0.1, 0.08])
def test_uniform_init_covers_every_parameter_within_the_range(bound):
    cfg = {"embed_dim": 64, "hidden_size": 256, "attention": "additive", "bridge": "bridge"}
    model = model_for(weight_init="uniform", init_range=bound, **cfg)
    checked = 0
    for name, param in model.named_parameters():
        values = param
        if "embedding" in name:  # the padding row (PAD = 0) stays zero
            assert PAD == 0 and not param[PAD].any(), name
            values = param[1:]
        assert values.abs().max().item() <= bound, name
        if values.numel() >= 256:  # biases too: PyTorch's own stay within +-1/sqrt(256)
            assert values.abs().max().item() > 0.9 * bound, name
            checked += 1
        if values.numel() >= 4096:  # U(-b, b) has spread b/sqrt(3)
            assert values.std().item() == pytest.approx(bound / 3**0.5, rel=0.05), name
    assert checked >= 10


def test_init_range_must_be_positive():
    with pytest.raises(ConfigError, match="model.init_range"):
        ModelConfig(init_range=0.0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("layers", "bidirectional_layers"), [(1, None), (2, None), (3, 1), (2, 0)])
def test_packed_encoder_equals_the_segment_encoder(cell, layers, bidirectional_layers):
    """The CUDA encoder path (PackedSequence) computes exactly what the CPU path does."""
    model = model_for(
        cell=cell,
        encoder_layers=layers,
        decoder_layers=layers,
        bidirectional_layers=bidirectional_layers,
        reverse_source=True,
    )
    src, lengths, _ = batch(3)
    results = {}
    for impl in ("segments", "packed"):
        model.encoder.impl = impl
        results[impl] = model.encoder(src, lengths)
    for name, a, b in zip(("outputs", "mask", "hidden", "cell"), *results.values()):
        if a is None:
            assert b is None
            continue
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_bidirectional_layers_read_both_ways_only_at_the_bottom():
    model = model_for(
        encoder_layers=3, decoder_layers=3, bidirectional_layers=1, hidden_size=12, bridge="last"
    )
    assert model.encoder.layer_directions == [2, 1, 1]
    stacks = [(s.hidden_size, s.num_layers, s.bidirectional) for s in model.encoder.stacks]
    assert stacks == [(6, 1, True), (12, 2, False)]
    src, lengths, tgt_in = batch()
    # padding never changes a result, here too: the first sentence alone equals it in the batch
    alone = model(src[:1, : lengths[0]], lengths[:1], tgt_in[:1])
    together = model(src, lengths, tgt_in)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_checkpoints_from_before_the_encoder_stacks_load_unchanged():
    """Before the stacks, each encoder layer and direction was its own module ``rnns.N``."""
    model = model_for(
        encoder_layers=3, decoder_layers=3, bidirectional_layers=1, hidden_size=12, bridge="last"
    )
    # the old layout, written out by hand: layer 0 forward and backward, then layers 1 and 2
    old_names = {
        "stacks.0.{}_l0": "rnns.0.{}_l0",
        "stacks.0.{}_l0_reverse": "rnns.1.{}_l0",
        "stacks.1.{}_l0": "rnns.2.{}_l0",
        "stacks.1.{}_l1": "rnns.3.{}_l0",
    }
    old_state = {}
    for key, value in model.state_dict().items():
        for new, old in old_names.items():
            for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if key == "encoder." + new.format(param):
                    key = "encoder." + old.format(param)
        old_state[key] = value
    assert sum(k.startswith("encoder.rnns.") for k in old_state) == 16
    torch.manual_seed(2)
    fresh = build_model(
        ModelConfig(
            embed_dim=8,
            hidden_size=12,
            dropout=0.0,
            encoder_layers=3,
            decoder_layers=3,
            bidirectional_layers=1,
            bridge="last",
        ),
        VOCAB,
        VOCAB,
    ).eval()
    fresh.load_state_dict(old_state)
    src, lengths, tgt_in = batch()
    assert torch.equal(fresh(src, lengths, tgt_in), model(src, lengths, tgt_in))


def test_bidirectional_layers_is_validated():
    with pytest.raises(ConfigError, match="model.bidirectional_layers"):
        ModelConfig(encoder_layers=2, bidirectional_layers=3)


@pytest.mark.parametrize(
    ("autocast", "policy", "bf16_rnn", "weights", "inputs", "expected"),
    [
        # training under autocast: fp16 stays autocast's (with its scaler); bf16 never becomes fp16
        ("fp16", "fp32", True, "fp32", "fp32", None),
        ("bf16", "fp32", True, "fp32", "fp32", "fp32"),
        ("bf16", "bf16", True, "fp32", "fp32", "bf16"),
        ("bf16", "bf16", False, "fp32", "fp32", "fp32"),
        ("bf16", "autocast", True, "fp32", "fp32", None),
        # inference on pre-cast weights, no autocast
        (None, "fp32", True, "bf16", "bf16", None),
        (None, "fp32", False, "bf16", "bf16", "fp32"),
        (None, "fp32", True, "fp32", "fp32", None),
    ],
)
def test_cuda_rnn_precision_rules(
    monkeypatch, autocast, policy, bf16_rnn, weights, inputs, expected
):
    """The decision table of models/recurrent.run_rnn on CUDA, checked without a GPU."""
    from s2s_cli.models import recurrent

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}
    monkeypatch.setattr(recurrent, "BF16_RNN_ON_CUDA", policy)
    monkeypatch.setattr(
        recurrent,
        "_cuda_autocast",
        lambda: (autocast is not None, dtypes[autocast] or torch.float16),
    )
    monkeypatch.setattr(recurrent, "cudnn_rnn_supports", lambda dtype, device: bf16_rnn)
    data = torch.zeros(1, dtype=dtypes[inputs])
    assert recurrent._compute_dtype(dtypes[weights], data) == dtypes[expected]


@pytest.mark.parametrize(
    ("bridge", "peeky", "feeding"), [("bridge", True, True), ("last", False, False)]
)
def test_bf16_decoding_around_float32_recurrent_layers(monkeypatch, bridge, peeky, feeding):
    """What bf16 decoding runs on CUDA (cast_for_inference: bf16 weights, float32 recurrent
    layers, since cuDNN cannot keep bf16 RNN weights flat), routed through run_rnn's CUDA rules
    on the CPU: every layer meets inputs of its own dtype, and the logits agree with float32."""
    import copy
    import warnings

    from s2s_cli.models import recurrent

    model = model_for(
        encoder_layers=2, decoder_layers=2, bridge=bridge, peeky=peeky, input_feeding=feeding
    )
    cast = recurrent.cast_for_inference(copy.deepcopy(model), torch.bfloat16, torch.device("cuda"))
    for name, param in cast.named_parameters():
        recurrent_weight = ".stacks." in name or ".rnn." in name
        assert param.dtype == (torch.float32 if recurrent_weight else torch.bfloat16), name
    on_cpu = recurrent.cast_for_inference(copy.deepcopy(model), torch.bfloat16, torch.device("cpu"))
    assert {p.dtype for p in on_cpu.parameters()} == {torch.bfloat16}  # oneDNN runs bf16 RNNs
    monkeypatch.setattr(recurrent, "_precision_rules_apply", lambda data: True)
    cast.encoder.impl = "packed"  # the CUDA encoder (the CPU one runs oneDNN without the rules)
    src, lengths, tgt_in = batch()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.autocast("cuda", enabled=False) without CUDA
        reduced, _ = step_logits(cast, src, lengths, tgt_in)
        full, _ = step_logits(model, src, lengths, tgt_in)
    assert reduced.dtype == torch.bfloat16
    assert torch.allclose(reduced.float(), full, atol=0.05, rtol=0.05)


LUONG = load_preset("luong")  # input feeding, attention after the RNN
BAHDANAU = load_preset("bahdanau") | {"cell": "lstm"}


def training_features(model, src, lengths, tgt_in, deferred: bool, precision: str = "fp32"):
    """Teacher-forced features and every parameter's gradient, through the deferred step loop
    (Decoder.forward_steps) or autograd's loop over Decoder.step."""
    import s2s_cli.models.decoder as decoder_module
    from s2s_cli.device import autocast

    model.train().zero_grad()
    decoder_module.DEFER_WEIGHT_GRADIENTS = deferred
    try:
        with autocast(torch.device("cpu"), precision):
            features, _ = model.features(src, lengths, tgt_in)
            loss = model.decoder.project(features).float().logsumexp(-1).sum()
        loss.backward()
    finally:
        decoder_module.DEFER_WEIGHT_GRADIENTS = True
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return features.detach().float(), grads


@pytest.mark.parametrize(
    "options",
    [
        LUONG,  # input feeding
        BAHDANAU,  # attention before the RNN
        {**BAHDANAU, "input_feeding": True, "peeky": True, "bidirectional": False},
        {**LUONG, "decoder_layers": 3, "encoder_layers": 2, "bridge": "zero"},
        {**LUONG, "attention": "none", "peeky": True, "bridge": "bridge"},
    ],
)
def test_deferred_weight_gradients_equal_autograds(monkeypatch, options):
    """The training step loop that computes shared weights' gradients once per batch gives the
    features and gradients of autograd's loop over Decoder.step (up to summation order)."""
    model = model_for(**options)
    src, lengths, tgt_in = batch()
    reference, expected = training_features(model, src, lengths, tgt_in, deferred=False)
    calls = []
    original = type(model.decoder).forward_steps
    monkeypatch.setattr(
        type(model.decoder),
        "forward_steps",
        lambda self, *a: calls.append(1) or original(self, *a),
    )
    features, grads = training_features(model, src, lengths, tgt_in, deferred=True)
    assert calls, "the deferred step loop did not run"
    torch.testing.assert_close(features, reference, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_deferred_weight_gradients_under_bf16_autocast_stay_near_fp32():
    model = model_for(**{**LUONG, "embed_dim": 16, "hidden_size": 32})
    src, lengths, tgt_in = batch()
    _, exact = training_features(model, src, lengths, tgt_in, deferred=False)
    features, grads = training_features(model, src, lengths, tgt_in, True, "bf16")
    assert features.isfinite().all()
    for name, grad in grads.items():
        relative = (grad.float() - exact[name]).norm() / exact[name].norm()
        assert relative < 0.05, name  # bf16 carries 8 bits of mantissa


def test_deferred_step_loop_is_training_only_and_lstm_only():
    model = model_for(**LUONG)
    assert model.decoder.can_run_steps(torch.device("cpu"))
    assert not model_for(**{**LUONG, "cell": "gru"}).decoder.can_run_steps(torch.device("cpu"))
    src, lengths, tgt_in = batch()
    model.eval()
    with torch.no_grad():  # evaluation goes through Decoder.step, as decoding does
        evaluated, _ = model.features(src, lengths, tgt_in)
        model.train()
        stepped, _ = model.features(src, lengths, tgt_in)  # no grad: not deferred either
    trained, _ = training_features(model, src, lengths, tgt_in, deferred=True)
    torch.testing.assert_close(evaluated, stepped)
    torch.testing.assert_close(trained, evaluated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_decoding_step_computes_the_lstm_as_nn_lstm_does(monkeypatch, layers):
    """In eval mode on the CPU a decoder step runs its LSTM as two products per layer
    (decoder._lstm_step); its features and state match nn.LSTM's to rounding, in fp32 and for
    a model cast to bf16. Training keeps nn.LSTM."""
    import copy

    import s2s_cli.models.decoder as decoder_module
    from s2s_cli.models.recurrent import cast_for_inference

    model = model_for(decoder_layers=layers, encoder_layers=layers, input_feeding=True)
    calls = []
    original = decoder_module._lstm_step
    monkeypatch.setattr(decoder_module, "_lstm_step", lambda *a: calls.append(1) or original(*a))
    src, lengths, tgt_in = batch()
    bf16 = cast_for_inference(copy.deepcopy(model), torch.bfloat16, torch.device("cpu"))
    with torch.no_grad():
        by_products, _ = step_logits(model, src, lengths, tgt_in)
        reduced, _ = step_logits(bf16, src, lengths, tgt_in)
        assert len(calls) == 2 * tgt_in.size(1)
        monkeypatch.setattr(decoder_module.Decoder, "_lstm_step_by_products", lambda *a: False)
        by_module, _ = step_logits(model, src, lengths, tgt_in)
        reduced_by_module, _ = step_logits(bf16, src, lengths, tgt_in)
    assert len(calls) == 2 * tgt_in.size(1)  # nothing more once switched off
    assert torch.allclose(by_products, by_module, atol=1e-5)
    assert reduced.dtype == torch.bfloat16
    assert torch.allclose(reduced.float(), reduced_by_module.float(), atol=0.05, rtol=0.05)
    model.train()
    assert not model.decoder._lstm_step_by_products(src.float())


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("bridge", ["last", "zero"])
def test_a_bf16_search_reads_float32_keys_and_gets_the_same_steps(attention, bridge):
    """A CPU search of a bf16 model holds attention keys and values in float32, converted
    once per batch (Ensemble.encode), except for additive attention: its steps then give the
    all-bf16 steps' logits and attention to bf16 rounding, the context in bf16."""
    import copy

    from s2s_cli.decoding.scorer import Ensemble
    from s2s_cli.models.recurrent import cast_for_inference

    model = model_for(attention=attention, bridge=bridge, input_feeding=True)
    bf16 = cast_for_inference(copy.deepcopy(model), torch.bfloat16, torch.device("cpu"))
    src, lengths, tgt_in = batch()
    with torch.no_grad():
        (enc,) = Ensemble([bf16]).encode(src, lengths)
        plain = bf16.encode(src, lengths)
        float_keys = attention != "additive"
        assert enc.keys.dtype == (torch.float32 if float_keys else torch.bfloat16)
        assert enc.outputs.dtype == enc.keys.dtype and enc.final_hidden.dtype == torch.bfloat16
        state, plain_state = bf16.init_state(enc), bf16.init_state(plain)
        for t in range(tgt_in.size(1)):
            features, state, weights = bf16.decoder.step(tgt_in[:, t], state, enc)
            expected, plain_state, plain_weights = bf16.decoder.step(
                tgt_in[:, t], plain_state, plain
            )
            assert features.dtype == torch.bfloat16 and state.hidden.dtype == torch.bfloat16
            assert torch.allclose(features.float(), expected.float(), atol=0.05, rtol=0.05)
            assert torch.allclose(weights.float(), plain_weights.float(), atol=0.02)
        (fp32_enc,) = Ensemble([model]).encode(src, lengths)
        assert torch.equal(fp32_enc.outputs, model.encode(src, lengths).outputs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_bf16_decoding_by_packed_weights_gives_the_unpacked_scores(monkeypatch, cell, attention):
    """Over the design space a bf16 model's CPU search steps (output layer, LSTM step, attentional
    layer, tied pre-output projection) by packed weights give the log-probabilities of the same
    bf16 steps through ``linear``, to bf16 rounding."""
    import copy

    from s2s_cli.decoding.scorer import Ensemble
    from s2s_cli.models import products
    from s2s_cli.models.recurrent import cast_for_inference

    if not products._onednn_packing(torch.bfloat16):
        pytest.skip(
            "packed bf16 weights are off here by design (they need an AVX-512 CPU and PyTorch's oneDNN ops)"
        )
    src, lengths, tgt_in = batch()
    packed_calls = []
    packed_linear = products.packed_linear
    monkeypatch.setattr(
        products, "packed_linear", lambda *a: packed_calls.append(1) or packed_linear(*a)
    )
    variants = [
        {"decoder_layers": 2, "encoder_layers": 2, "input_feeding": True},
        {"attention_placement": "bahdanau", "peeky": True, "bridge": "bridge"},
        {"tie_embeddings": True, "embed_dim": 8, "hidden_size": 12},
    ]
    for variant in variants:
        model = model_for(cell=cell, attention=attention, **variant)
        bf16 = cast_for_inference(copy.deepcopy(model), torch.bfloat16, torch.device("cpu"))
        scorer = Ensemble([bf16])

        def scores(scorer: Ensemble = scorer) -> torch.Tensor:
            with torch.no_grad():
                enc = scorer.encode(src, lengths)
                state = scorer.init_state(enc)
                steps = []
                for t in range(tgt_in.size(1)):
                    lprobs, state, _ = scorer.step(tgt_in[:, t], state, enc)
                    steps.append(lprobs.clone())  # (a buffer the next step reuses)
                return torch.stack(steps, 1)

        packed_calls.clear()
        by_packed = scores()
        assert packed_calls  # the output layer at least
        with monkeypatch.context() as unpacked:
            unpacked.setattr(products, "packs", lambda *a: False)
            by_linear = scores()
        assert torch.allclose(by_packed, by_linear, atol=0.05, rtol=0.02), variant


@pytest.mark.parametrize("weight_init", ["pytorch", "uniform", "lecun_normal"])
def test_a_model_built_to_be_loaded_draws_nothing_and_loads_to_the_same_model(weight_init):
    cfg = ModelConfig(embed_dim=8, hidden_size=12, dropout=0.0, weight_init=weight_init)
    torch.manual_seed(3)
    trained = build_model(cfg, VOCAB, VOCAB).eval()
    rng = torch.get_rng_state()
    empty = build_model(cfg, VOCAB, VOCAB, initialise=False)
    assert torch.equal(torch.get_rng_state(), rng)  # no random initial weights were drawn
    empty.load_state_dict(trained.state_dict())
    src, lengths, tgt_in = batch()
    with torch.no_grad():
        assert torch.equal(empty.eval()(src, lengths, tgt_in), trained(src, lengths, tgt_in))
    # and torch.nn.init works again afterwards, for everyone
    torch.manual_seed(3)
    again = build_model(cfg, VOCAB, VOCAB)
    for (name, a), b in zip(trained.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_initialisers_come_back_when_a_build_fails(monkeypatch):
    import s2s_cli.models.build as build

    uniform = torch.nn.init.uniform_

    def broken(*args, **kwargs):
        raise RuntimeError("build failed")

    monkeypatch.setattr(build, "Seq2Seq", broken)
    with pytest.raises(RuntimeError, match="build failed"):
        build_model(ModelConfig(embed_dim=8, hidden_size=12), VOCAB, VOCAB, initialise=False)
    assert torch.nn.init.uniform_ is uniform
