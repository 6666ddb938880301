"""Batches: the single label shift, deterministic resumable order, rank sharding, validation, bpb."""

import math

import numpy as np
import pytest
import torch

from src.data.batches import TrainBatches, num_windows, validation_batches
from src.losses import IGNORE_INDEX, bits_per_byte

TOKENS = np.arange(1, 1 + 8 * 101, dtype=np.uint16)  # distinct tokens: a value gives its position


def take(batches, n):
    return [batches.next_batch() for _ in range(n)]


def test_single_shift_within_one_window_of_the_cache():
    seq_len = 8
    batches = TrainBatches(TOKENS, seq_len=seq_len, batch_size=4, seed=0)
    for x, y in take(batches, 30):
        assert x.shape == y.shape == (4, seq_len) and x.dtype == y.dtype == torch.long
        assert torch.equal(y[:, :-1], x[:, 1:])
        for row_x, row_y in zip(x, y):
            start = int(row_x[0]) - 1  # position in TOKENS
            assert start % seq_len == 0
            window = torch.from_numpy(TOKENS[start : start + seq_len + 1].astype(np.int64))
            assert torch.equal(row_x, window[:-1]) and torch.equal(row_y, window[1:])


def test_epoch_covers_each_window_once_in_a_seeded_order():
    batches = TrainBatches(TOKENS, seq_len=8, batch_size=5, seed=1)
    assert batches.n_windows == num_windows(len(TOKENS), 8) == 100 and batches.batches_per_epoch == 20
    starts = [int(v) for x, _ in take(batches, 20) for v in x[:, 0]]
    assert sorted(starts) == [1 + 8 * i for i in range(100)] and batches.epoch == 1
    again = [int(v) for x, _ in take(TrainBatches(TOKENS, 8, 5, seed=1), 20) for v in x[:, 0]]
    other_seed = [int(v) for x, _ in take(TrainBatches(TOKENS, 8, 5, seed=2), 20) for v in x[:, 0]]
    next_epoch = [int(v) for x, _ in take(batches, 20) for v in x[:, 0]]
    assert again == starts and other_seed != starts and next_epoch != starts


@pytest.mark.parametrize("consumed", [7, 13, 20])  # mid-epoch, across the epoch boundary, at it
def test_state_dict_resumes_at_the_exact_next_batch(consumed):
    reference = TrainBatches(TOKENS, 8, 6, seed=3)  # 100 windows, 16 batches per epoch, 4 skipped
    expected = take(reference, consumed + 12)[consumed:]
    first = TrainBatches(TOKENS, 8, 6, seed=3)
    take(first, consumed)
    state = first.state_dict()
    resumed = TrainBatches(TOKENS, 8, 6, seed=99)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert resumed.epoch == first.epoch and resumed.state_dict() == state
    for (x, y), (ex, ey) in zip(take(resumed, 12), expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_state_for_other_data_is_refused():
    state = TrainBatches(TOKENS, 8, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        TrainBatches(TOKENS, 16, 4, seed=0).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_union_is_the_single_process_batch(world_size):
    single = TrainBatches(TOKENS, 8, 4 * world_size, seed=5)
    ranks = [TrainBatches(TOKENS, 8, 4, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(r.batches_per_epoch == single.batches_per_epoch for r in ranks)
    for _ in range(2 * single.batches_per_epoch + 1):  # into a third epoch
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        starts = [set(p[0][:, 0].tolist()) for p in parts]
        assert all(not (a & b) for i, a in enumerate(starts) for b in starts[i + 1 :])  # disjoint


def test_bad_arguments():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainBatches(TOKENS[:50], 8, 4, seed=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        TrainBatches(TOKENS, 8, 4, seed=0, rank=2, world_size=2)


def test_validation_covers_every_target_once_in_order():
    tokens = TOKENS[:83]  # 82 targets: 10 full windows of 8 and a partial one of 2
    seen_x, seen_y = [], []
    batches = list(validation_batches(tokens, seq_len=8, batch_size=4))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 3]
    for x, y in batches:
        keep = y != IGNORE_INDEX
        seen_x += x[keep].tolist()
        seen_y += y[keep].tolist()
        assert torch.equal(y[:, :-1][keep[:, 1:]], x[:, 1:][keep[:, 1:]])
    assert seen_y == tokens[1:].tolist() and seen_x == tokens[:-1].tolist()
    assert len(list(validation_batches(tokens, 8, 4, max_batches=2))) == 2


def test_bits_per_byte():
    # 2 tokens per 8 bytes at ln(2) nats per token = 0.25 bits per byte
    assert math.isclose(bits_per_byte(math.log(2), n_tokens=2, n_bytes=8), 0.25)
