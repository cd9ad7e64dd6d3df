import numpy as np
import pytest

from s2s_cli.data.batching import Shard, make_batches
from s2s_cli.data.loader import collate, prefetch
from s2s_cli.data.spm import BOS, EOS, PAD


@pytest.fixture
def sizes():
    rng = np.random.default_rng(0)
    return rng.integers(2, 40, 500), rng.integers(2, 40, 500)


def test_every_example_exactly_once_and_budget_respected(sizes):
    src, tgt = sizes
    batches = make_batches(src, tgt, 300, None, seed=1, epoch=1)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for batch in batches:
        width = max(src[batch].max(), tgt[batch].max())
        assert len(batch) == 1 or width * len(batch) <= 300


def _greedy_cut(order, longest, max_tokens, max_sentences):
    """The batching rule step by step, one sentence at a time (the reference for ``_cut``)."""
    batches, current, widest = [], [], 0
    for position, length in zip(order.tolist(), longest.tolist(), strict=True):
        width = max(widest, length)
        if current and (
            width * (len(current) + 1) > max_tokens or len(current) + 1 > max_sentences
        ):
            batches.append(current)
            current, width = [], length
        current.append(position)
        widest = width
    return [*batches, current]


@pytest.mark.parametrize(
    ("max_tokens", "max_sentences"), [(300, 10**9), (64, 10**9), (4096, 7), (5, 3)]
)
def test_batches_follow_the_greedy_rule_exactly(max_tokens, max_sentences):
    """Vectorized per batch, the cut must equal the sentence-by-sentence rule, including
    sentences longer than the whole budget (each alone)."""
    rng = np.random.default_rng(4)
    order = rng.permutation(3000)
    longest = rng.integers(1, 80, 3000)
    from s2s_cli.data.batching import _cut

    got = [b.tolist() for b in _cut(order, longest[order], max_tokens, max_sentences)]
    assert got == _greedy_cut(order, longest[order], max_tokens, max_sentences)


def test_max_sentences(sizes):
    src, tgt = sizes
    assert max(len(b) for b in make_batches(src, tgt, 10**6, 7, seed=1, epoch=1)) == 7


def test_deterministic_per_seed_and_epoch(sizes):
    src, tgt = sizes
    a = make_batches(src, tgt, 300, None, seed=1, epoch=1)
    b = make_batches(src, tgt, 300, None, seed=1, epoch=1)
    c = make_batches(src, tgt, 300, None, seed=1, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_length_buckets_keep_padding_low(sizes):
    src, tgt = sizes
    batches = make_batches(src, tgt, 400, None, seed=1, epoch=1)
    padded = sum(len(b) * tgt[b].max() for b in batches)
    assert padded / tgt.sum() < 1.1  # < 10% target padding


def test_ranks_partition_each_update():
    batches = [np.array([i]) for i in range(10)]
    shards = [Shard(rank, 2, 2) for rank in range(2)]
    assert shards[0].updates_in(batches) == 2  # 10 batches / 4 per update, tail dropped
    for update in range(2):
        parts = [s.micro_batches(batches, update) for s in shards]
        flat = sorted(int(b[0]) for part in parts for b in part)
        assert flat == list(range(4 * update, 4 * update + 4))
        assert all(len(p) == 2 for p in parts)


def test_collate_adds_eos_and_bos(tiny_dataset):
    from s2s_cli import Dataset

    split = Dataset(tiny_dataset).split("train")
    batch = collate(split, np.array([0, 1, 2]))
    for row in range(3):
        src, tgt = split[row]
        n, m = len(src), len(tgt)
        assert batch.src[row, :n].tolist() == src.tolist() and batch.src[row, n] == EOS
        assert batch.src_lengths[row] == n + 1
        assert batch.tgt_in[row, 0] == BOS and batch.tgt_in[row, 1 : m + 1].tolist() == tgt.tolist()
        assert batch.tgt_out[row, :m].tolist() == tgt.tolist() and batch.tgt_out[row, m] == EOS
        assert (batch.tgt_out[row, m + 1 :] == PAD).all()
    assert batch.target_tokens == sum(len(split[i][1]) + 1 for i in range(3))


def test_prefetch_preserves_order_and_reraises():
    assert list(prefetch(iter(range(20)), depth=3)) == list(range(20))

    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(broken()))
