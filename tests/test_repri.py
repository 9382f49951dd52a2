"""RePRI (fss_lab.methods.repri): official numbers, step count, prior schedule, bias init, batched == looped."""
import pytest
import torch
import torch.nn.functional as F

from fss_lab.methods import NotFittedError
from fss_lab.methods.repri import RePRI, cosine_scores
from tests.tasks import episode_tasks, fss_task, stacked


def one(fs, ms, fq, mq=None, size=None):
    """One 1-way task; ``mq`` (0/1/255 query masks) gives ``query_valid = mq != 255`` and the oracle's labels."""
    kw = {} if mq is None else {"query_valid": mq != 255, "query_labels": mq}
    return fss_task(fs, ms, fq, size, **kw)


def many(fs, ms, fq, mq=None, size=(24, 24)):
    """One task per episode from ``[E, ...]`` tensors (``mq`` as in :func:`one`)."""
    kw = {} if mq is None else {"query_valid": mq != 255, "query_labels": mq}
    return episode_tasks(fs, ms, fq, size, **kw)


def episodes(e=3, k=2, q=2, seed=0):
    """E episodes of K supports and Q queries: 16-d features on 6x6, masks 24x24 (fg square, some 255)."""
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(e, k, 16, 6, 6, generator=g)
    fq = torch.randn(e, q, 16, 6, 6, generator=g)
    fg = torch.randn(e, 1, 16, 1, 1, generator=g)  # each episode's class direction
    ms = torch.zeros(e, k, 24, 24, dtype=torch.long)
    ms[:, :, 4:16, 4:16] = 1
    ms[:, :, 20:] = 255
    mq = torch.zeros(e, q, 24, 24, dtype=torch.long)
    mq[:, :, 8:20, 8:20] = 1
    mq[:, :, :, :4] = 255
    fs = fs + 2 * fg * (F.interpolate(ms.float().clamp(max=1), size=(6, 6)) == 1).unsqueeze(2)
    fq = fq + 2 * fg * (F.interpolate(mq.float().clamp(max=1), size=(6, 6)) == 1).unsqueeze(2)
    return fs, ms, fq, mq


def test_matches_numbers_from_the_official_code():
    """Reference values from running mboudiaf/RePRI's Classifier (CPU) on these inputs (adapt_iter 14)."""
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(2, 2, 4, 3, 3, generator=g)
    fq = torch.randn(2, 1, 4, 3, 3, generator=g)
    gs = torch.zeros(2, 2, 6, 6, dtype=torch.long)
    gs[:, :, 1:4, 1:4], gs[:, :, 5] = 1, 255
    gq = torch.zeros(2, 1, 6, 6, dtype=torch.long)
    gq[:, :, 2:5, 2:5], gq[:, :, :, 0] = 1, 255
    r = RePRI(adapt_iter=14)
    r.fit_predict(many(fs, gs, fq, gq, (6, 6)))
    official = {  # step: {term: [episode 0, episode 1]}
        0: {"ce": [0.63575166, 5.73816347], "kl": [0.0, 0.0], "entropy": [0.00479328, 0.14994054]},
        8: {"ce": [0.55956149, 3.84986663], "kl": [1.254e-07, 0.03011029], "entropy": [0.00737919, 0.03861839]},
        9: {"ce": [0.55158484, 3.42376804], "kl": [0.0, 0.0], "entropy": [0.00778291, 0.08720074]},
        12: {"ce": [0.53010339, 2.61394978], "kl": [1.522e-07, 4.565436e-05], "entropy": [0.00910129, 0.24300391]},
    }
    for step, terms in official.items():
        for k, v in terms.items():
            assert torch.allclose(r.history[k][step], torch.tensor(v), atol=5e-6), (step, k)
    assert torch.allclose(r.prior[:, 0], torch.tensor([[0.49996606, 0.50003392], [0.68185472, 0.31814525]]), atol=1e-5)
    assert torch.allclose(r.bias.flatten(), torch.tensor([4.47305584, -1.13206303]), atol=1e-5)
    p_fg = r._predict(fq, (6, 6)).exp()[:, 0, 1, 2]
    official_p = torch.tensor([[0.99997807, 0.99993551, 0.99981099, 0.97474164, 0.00599173, 9.4154e-07],
                               [0.99206984, 0.96610159, 0.86653775, 0.12922087, 0.00034016, 7.8026e-07]])
    assert torch.allclose(p_fg, official_p, atol=1e-5)


def test_step_count_is_adapt_iter_minus_one():
    fs, ms, fq, mq = episodes(e=1, q=1)
    r = RePRI(adapt_iter=50).fit(one(fs[0], ms[0], fq[0]))
    assert r.num_steps == 49 and r.history["loss"].shape == (49, 1)
    assert RePRI(adapt_iter=1).fit(one(fs[0], ms[0], fq[0])).history["loss"].shape == (0, 1)


def test_bias_init_is_mean_score_over_all_query_pixels():
    fs, ms, fq, mq = episodes(e=1, q=1)
    r = RePRI(adapt_iter=1).fit(one(fs[0], ms[0], fq[0], mq[0]))  # no step: initial classifier
    f = F.normalize(fs[0], dim=1)
    fg = (ms[0, :, ::4, ::4] == 1).unsqueeze(1).float()  # nearest down-sampling of the masks
    proto = (f * fg).sum((0, 2, 3)) / fg.sum()
    assert torch.allclose(r.prototypes[0, 0], proto, atol=1e-6)
    cos = 20 * F.cosine_similarity(F.normalize(fq[0, 0], dim=0), proto[:, None, None], dim=0)
    assert r.bias.item() == pytest.approx(cos.mean().item(), abs=1e-5)  # ignore pixels included
    valid = mq[0, 0, ::4, ::4] != 255
    assert r.bias.item() != pytest.approx(cos[valid].mean().item(), abs=1e-3)


def test_prior_update_after_step_9_and_kl_weight_plus_one():
    fs, ms, fq, mq = episodes(e=1, q=1, k=2)
    r = RePRI(adapt_iter=14).fit(one(fs[0], ms[0], fq[0], mq[0]))
    h = r.history
    # pi equal to the current proportion gives exactly 0 in float32 (p log(p / (p + 1e-10)), p ~ 0.3)
    assert torch.all(h["kl"][0] == 0)  # pi = initial proportion
    assert torch.all(h["kl"][8] != 0)
    assert torch.all(h["kl"][9] == 0)  # re-estimated after the 9th step
    lam = 1 / 2  # 1 / K
    for step, kl_weight in ((5, lam), (11, lam + 1)):
        expected = h["ce"][step] + kl_weight * h["kl"][step] + lam * h["entropy"][step]
        assert torch.allclose(h["loss"][step], expected, atol=1e-6), step
    fixed = RePRI(adapt_iter=14, prior_update_at=()).fit(one(fs[0], ms[0], fq[0], mq[0]))
    assert torch.all(fixed.history["kl"][9] != 0)


def test_oracle_prior():
    fs, ms, fq, mq = episodes(e=1, q=1)
    r = RePRI(adapt_iter=14, prior="oracle").fit(one(fs[0], ms[0], fq[0], mq[0]))
    assert r.reads_query_labels and not RePRI().reads_query_labels
    ds = mq[0, 0, ::4, ::4]
    fg = (ds[ds != 255] == 1).float().mean()
    assert torch.allclose(r.prior[0, 0], torch.stack([1 - fg, fg]), atol=1e-6)
    h = r.history  # no update: the KL weight stays 1/K
    assert torch.allclose(h["loss"][11], h["ce"][11] + 0.5 * h["kl"][11] + 0.5 * h["entropy"][11], atol=1e-6)
    with pytest.raises(ValueError, match="query_labels"):
        RePRI(prior="oracle").fit(one(fs[0], ms[0], fq[0]))


def test_batched_equals_looped():
    fs, ms, fq, mq = episodes(e=3, q=2)
    r, loop = RePRI(), RePRI()
    a = stacked(r.fit_predict(many(fs, ms, fq, mq)))
    b = stacked(loop.fit_predict(many(fs, ms, fq, mq), batched=False))
    assert a.shape == (3, 2, 2, 24, 24)
    assert torch.allclose(a.exp(), b.exp(), atol=1e-5) and torch.equal(a.argmax(2), b.argmax(2))
    assert torch.allclose(r.history["loss"], loop.history["loss"], atol=1e-5)
    assert torch.allclose(r.prototypes, loop.prototypes, atol=1e-5) and r.prototypes.shape == (3, 2, 16)
    # the Method loop: one fit / predict per episode
    c = torch.stack([RePRI().fit(t).predict(t) for t in many(fs, ms, fq)])
    d = stacked(RePRI().fit_predict(many(fs, ms, fq)))
    assert torch.allclose(c.exp(), d.exp(), atol=1e-5) and torch.equal(c.argmax(2), d.argmax(2))


def test_prediction_upsamples_scores_before_the_sigmoid():
    fs, ms, fq, mq = episodes(e=1, q=2)
    task = one(fs[0], ms[0], fq[0])
    r = RePRI(adapt_iter=5).fit(task)
    s = cosine_scores(F.normalize(fq, dim=2), r.prototypes, 20.0, paired=True)[0]  # [Q, 1, 6, 6]
    up = F.interpolate(s, size=(24, 24), mode="bilinear", align_corners=True)
    p_fg = torch.sigmoid(up - r.bias[0][:, None, None, None])[:, 0]
    out = r.predict(task)
    assert out.shape == (2, 2, 24, 24)
    assert torch.allclose(out[:, 1].exp(), p_fg, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(2, 24, 24), atol=1e-6)


def test_features_are_l2_normalised_first():
    fs, ms, fq, mq = episodes(e=1, q=1)
    scale = torch.rand(1, 1, 6, 6) * 5 + 0.1  # a positive factor per pixel
    t, ts = one(fs[0], ms[0], fq[0]), one(fs[0] * scale, ms[0], fq[0] * scale)
    a = RePRI(adapt_iter=10).fit(t).predict(t)
    b = RePRI(adapt_iter=10).fit(ts).predict(ts)
    assert torch.allclose(a, b, atol=1e-4)
    c = RePRI(adapt_iter=10, normalize_features=False).fit(ts)
    assert not torch.allclose(a, c.predict(ts), atol=1e-3)


def test_transductive_refinement_beats_the_initial_classifier():
    fs, ms, fq, mq = episodes(e=4, q=1, k=1, seed=3)

    def fg_iou(logp):
        pred, valid = logp.argmax(2), mq != 255
        inter = ((pred == 1) & (mq == 1) & valid).sum()
        return float(inter / (((pred == 1) | (mq == 1)) & valid).sum())

    init = fg_iou(stacked(RePRI(adapt_iter=1).fit_predict(many(fs, ms, fq))))
    final = fg_iou(stacked(RePRI().fit_predict(many(fs, ms, fq))))
    assert final >= init


def test_bad_inputs():
    fs, ms, fq, mq = episodes(e=1, q=1)
    assert RePRI.transductive  # the evaluator fits it again for every query batch (a Task always has queries)
    with pytest.raises(NotFittedError, match="fit"):
        RePRI().predict(one(fs[0], ms[0], fq[0]))
    r = RePRI(adapt_iter=2).fit(one(fs[0], ms[0], fq[0]))
    with pytest.raises(ValueError, match="one classifier per query"):
        r.predict(one(fs[0], ms[0], torch.cat([fq[0], fq[0]])))
    no_fg = ms[0].clone()
    no_fg[no_fg == 1] = 0
    with pytest.raises(ValueError, match="no foreground"):
        RePRI().fit(one(fs[0], torch.cat([ms[0][:1], no_fg[1:]]), fq[0]))  # shot 1 without foreground
    all_ignored = torch.full_like(mq[0], 255)
    with pytest.raises(ValueError, match="no valid pixel"):
        RePRI().fit(one(fs[0], ms[0], fq[0], all_ignored))
    with pytest.raises(ValueError, match="prior"):
        RePRI(prior="hard")
    with pytest.raises(ValueError, match="weights"):
        RePRI(weights=(1.0, "sometimes", "auto"))


def test_fit_under_no_grad():
    fs, ms, fq, mq = episodes(e=2, q=1)
    ref = stacked(RePRI(adapt_iter=5).fit_predict(many(fs, ms, fq)))
    with torch.no_grad():
        out = stacked(RePRI(adapt_iter=5).fit_predict(many(fs, ms, fq)))
    assert torch.equal(ref, out)


def test_uint8_masks_as_in_evaluate_fss():
    fs, ms, fq, mq = episodes(e=2, q=1)
    a = stacked(RePRI(adapt_iter=5).fit_predict(many(fs, ms, fq)))
    b = stacked(RePRI(adapt_iter=5).fit_predict(many(fs, ms.to(torch.uint8), fq)))
    assert torch.equal(a, b)
