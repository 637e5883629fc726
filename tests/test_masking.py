import numpy as np
import pytest

from w2vtk.masking import channel_mask, span_mask, time_mask, utterance_rngs


def test_span_count_follows_fairseq_formula():
    # int(mask_prob * L / M + U) spans, each M long; with no overlap possible the count is exact.
    rng = np.random.default_rng(0)
    counts = [len(span_mask(1000, 0.65, 10, 2, rng)) for _ in range(200)]
    # 65 spans of 10 frames = 650 frames before overlaps; overlaps only remove frames.
    assert max(counts) <= 660
    assert 400 < np.mean(counts) < 650


def test_min_masks_and_bounds():
    rng = np.random.default_rng(1)
    for length in (12, 30, 50):
        idx = span_mask(length, 0.0, 10, 2, rng)
        assert len(idx) >= 2 and idx.max() < length and idx.min() >= 0


def test_time_mask_respects_lengths_and_equalises_counts():
    lengths = [100, 60, 80]
    mask = time_mask(lengths, 100, 0.65, 10, 2, utterance_rngs(1, 0, [0, 1, 2]))
    assert mask.shape == (3, 100)
    for row, n in zip(mask, lengths):
        assert not row[n:].any()  # starts drawn over the unpadded length only
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and counts[0] >= 2


def test_time_mask_without_equalising_keeps_own_counts():
    mask = time_mask([100, 40], 100, 0.65, 10, 2, utterance_rngs(1, 0, [0, 1]), require_same_masks=False)
    assert mask[0].sum() > mask[1].sum()


def test_masks_depend_on_the_utterance_not_the_batch():
    # The same utterance id at the same step gets the same spans in any batch (DDP, resume).
    a = time_mask([80], 80, 0.65, 10, 2, utterance_rngs(3, 7, [42]), require_same_masks=False)
    b = time_mask([80, 80], 80, 0.65, 10, 2, utterance_rngs(3, 7, [42, 5]), require_same_masks=False)
    assert (a[0] == b[0]).all()
    c = time_mask([80], 80, 0.65, 10, 2, utterance_rngs(3, 8, [42]), require_same_masks=False)
    assert not (a[0] == c[0]).all()


def test_channel_mask_spans_channels():
    mask = channel_mask(4, 256, 0.5, 16, utterance_rngs(0, 0, range(4), stream=3))
    assert mask.shape == (4, 256)
    assert mask.any(1).all()
    assert not channel_mask(2, 64, 0.0, 8, utterance_rngs(0, 0, [0, 1])).any()


@pytest.mark.parametrize("length", [0, 1, 3])
def test_short_utterances_mask_within_bounds(length):
    idx = span_mask(length, 0.65, 10, 2, np.random.default_rng(0))
    assert len(idx) <= length and (idx < max(length, 1)).all()
