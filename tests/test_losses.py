import numpy as np
import torch
import torch.nn.functional as F

from w2vtk.losses import contrastive_logits, contrastive_loss, diversity_loss, sample_negative_indices


def test_negatives_never_the_positive_and_cover_the_rest():
    idx = sample_negative_indices(5, 400, [np.random.default_rng(0), np.random.default_rng(1)])
    assert idx.shape == (2, 5, 400)
    own = torch.arange(5)[None, :, None]
    assert not (idx == own).any()
    assert idx.min() == 0 and idx.max() == 4
    for t in range(5):  # every other masked frame is drawn
        assert set(idx[0, t].tolist()) == set(range(5)) - {t}


def test_logits_equal_the_direct_cosine_formula():
    torch.manual_seed(0)
    b, n, k, d = 2, 6, 4, 8
    x, y = torch.randn(b, n, d), torch.randn(b, n, d)
    codes = torch.arange(b * n).view(b, n, 1)  # all distinct
    neg = sample_negative_indices(n, k, [np.random.default_rng(i) for i in range(b)])
    logits = contrastive_logits(x, y, neg, codes, 0.1)
    negs = torch.stack([y[i][neg[i]] for i in range(b)])  # (B, n, K, D)
    targets = torch.cat([y.unsqueeze(2), negs], dim=2)
    expected = F.cosine_similarity(x.unsqueeze(2), targets, dim=-1) / 0.1
    assert torch.allclose(logits, expected, atol=1e-5)


def test_negative_equal_to_positive_gets_minus_inf():
    x = torch.randn(1, 3, 4)
    y = torch.randn(1, 3, 4)
    y[0, 2] = y[0, 0]
    codes = torch.tensor([[[1], [2], [1]]])  # frames 0 and 2 share a code
    neg = torch.tensor([[[2, 1], [0, 2], [0, 1]]])
    logits = contrastive_logits(x, y, neg, codes, 0.1)
    assert torch.isinf(logits[0, 0, 1]) and logits[0, 0, 1] < 0
    assert torch.isinf(logits[0, 2, 1])
    assert torch.isfinite(logits[0, 1]).all()


def test_loss_is_summed_cross_entropy_with_class_zero():
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    loss, correct = contrastive_loss(logits)
    expected = F.cross_entropy(logits[0], torch.zeros(2, dtype=torch.long), reduction="sum")
    assert torch.allclose(loss, expected) and int(correct) == 1


def test_diversity_zero_at_uniform_use_and_near_one_when_collapsed():
    assert float(diversity_loss(torch.tensor(640.0), 640)) == 0.0
    assert float(diversity_loss(torch.tensor(2.0), 640)) > 0.99
