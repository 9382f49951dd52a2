"""DIaM (fss_lab.methods.diam): official numbers, schedule, batched == looped, options, bad inputs."""
import pytest
import torch
import torch.nn.functional as F

from fss_lab.methods import NotFittedError, UnsupportedTaskError
from fss_lab.methods.diam import DIaM, novel_prototypes
from fss_lab.metrics import GFSSMeter
from fss_lab.ops import resize_labels
from tests.tasks import fss_task, gfss_task

B, N = 2, 2  # labels: 0 bg, 1-2 base, 3-4 novel


def toy_problem(q=4, shots=1, seed=0):
    """Separable toy GFSS task on an 8x8 feature grid (labels 32x32).

    Class c has feature direction dirs[c]; novel classes also point half-way to the background, so the copied
    base classifier (3 * e_c for bg and base) and the L2-normalised novel prototypes start by calling novel pixels
    background: the inference has something to fix.
    """
    g = torch.Generator().manual_seed(seed)
    d = 8
    dirs = torch.eye(d)[:5] * 3.0
    dirs[3] = 2 * torch.eye(d)[0] + 1.5 * torch.eye(d)[3]
    dirs[4] = 2 * torch.eye(d)[0] + 1.5 * torch.eye(d)[4]

    def image(classes):
        lab = torch.zeros(8, 8, dtype=torch.long)
        for c in classes:
            y, x = torch.randint(0, 5, (2,), generator=g).tolist()
            lab[y:y + 3, x:x + 3] = c
        feats = dirs[lab].permute(2, 0, 1) + 0.3 * torch.randn(d, 8, 8, generator=g)
        return feats, lab.repeat_interleave(4, 0).repeat_interleave(4, 1)

    sup = [image([1, 3 + n]) for n in range(N) for _ in range(shots)]
    qry = [image([1 + i % 2, 3 + i % 2]) for i in range(q)]
    base_w = dirs[:3].clone()
    base_w[1:, 0] = 0.0
    fs, ls = torch.stack([s[0] for s in sup]), torch.stack([s[1] for s in sup])
    fq, lq = torch.stack([s[0] for s in qry]), torch.stack([s[1] for s in qry])
    return base_w, torch.zeros(3), fs, ls, fq, lq


def task(fs, ls, fq, lq=None, *, shots=1, valid="labels", num_base=B):
    """The GFSS task (B = 2, N = 2); ``lq`` gives ``query_labels`` and, unless ``valid=None``, the official
    ``query_valid = lq != 255``."""
    qv = valid if not isinstance(valid, str) else None if lq is None else lq != 255
    return gfss_task(fs, ls, fq, num_base, N, shots, query_valid=qv, query_labels=lq)


def downsample_labels(labels, size):
    return resize_labels(labels, size, "nearest")


def test_matches_numbers_from_the_official_code():
    """Reference values computed by running sinahmr/DIaM's Classifier (CPU) on exactly these inputs
    (lr 0.01, 12 iterations so the "self" prior update after iteration 10 is covered)."""
    g = torch.Generator().manual_seed(0)
    conv_w = torch.randn(3, 4, 1, 1, generator=g)
    conv_b = torch.randn(3, generator=g) * 0.1
    fs = torch.randn(2, 4, 3, 3, generator=g).abs()
    fq = torch.randn(2, 4, 3, 3, generator=g).abs()
    ls = torch.zeros(2, 6, 6, dtype=torch.long)
    ls[0, :2], ls[1, 4:], ls[:, :, 5] = 3, 4, 255
    lq = torch.randint(0, 5, (2, 6, 6), generator=g)
    lq[:, 0, :] = 255
    m = DIaM.from_weights(conv_w, conv_b, lr=0.01, iterations=12).fit(task(fs, ls, fq, lq))
    official = {  # iteration: {term: [task 0, task 1]}
        0: {"ce": [0.27516329, 0.27516329], "kl": [0.0, 0.0], "entropy": [1.10948908, 1.25323641],
            "kd": [1.23998225, 0.36865988]},
        9: {"ce": [0.32015520, 0.22021453], "kl": [0.48412013, 0.20376560], "entropy": [1.13024223, 1.43324506],
            "kd": [0.07020298, 0.08945525]},
        10: {"ce": [0.31355405, 0.21143253], "kl": [0.0, 0.0], "entropy": [1.12520897, 1.42741776],
             "kd": [0.06522100, 0.08484747]},
        11: {"ce": [0.30968478, 0.20408440], "kl": [0.00025273, 0.00022297], "entropy": [1.11887419, 1.42212009],
             "kd": [0.05883570, 0.08032624]},
    }
    for it, terms in official.items():
        for k, v in terms.items():
            assert torch.allclose(m.history[k][it], torch.tensor(v), atol=2e-5), (it, k)
    pi = torch.tensor([[0.02734514, 0.43767521, 0.08720044, 0.17168750, 0.27609178],
                       [0.08710154, 0.12975529, 0.20302911, 0.23957612, 0.34053800]])
    assert torch.allclose(m.prior, pi, atol=2e-5)
    p = m.predict_proba(task(fs, ls, fq, lq))
    p23 = torch.tensor([[0.00812199, 0.78611624, 0.03936487, 0.07950118, 0.08689567],
                        [0.07245670, 0.17327334, 0.13652053, 0.20558979, 0.41215965]])
    assert torch.allclose(p[:, :, 2, 3], p23, atol=2e-5)
    pred = torch.tensor([[[4, 1, 1, 1, 3, 3], [4, 1, 1, 1, 1, 3], [4, 1, 1, 1, 1, 4], [1, 1, 1, 1, 1, 4],
                          [1, 1, 1, 1, 1, 4], [3, 3, 3, 4, 4, 4]],
                         [[4, 4, 4, 4, 4, 3], [4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4],
                          [3, 4, 4, 4, 4, 4], [3, 3, 2, 2, 4, 4]]])
    assert torch.equal(m.predict(task(fs, ls, fq, lq)).argmax(1), pred)


def test_batched_equals_per_query_loop():
    bw, bb, fs, ls, fq, lq = toy_problem(q=5)
    kw = dict(iterations=30, lr=0.01)
    batched = DIaM.from_weights(bw, bb, **kw).fit(task(fs, ls, fq))
    looped = DIaM.from_weights(bw, bb, **kw).fit(task(fs, ls, fq), batched=False)
    chunked = DIaM.from_weights(bw, bb, task_chunk=2, **kw).fit(task(fs, ls, fq))
    a, b, c = (m.predict(task(fs, ls, fq)) for m in (batched, looped, chunked))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1)) and torch.equal(a.argmax(1), c.argmax(1))
    assert torch.allclose(batched.history["loss"], looped.history["loss"], atol=1e-4)


def test_self_prior_initial_kl_zero_and_update_after_iteration_10():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    m = DIaM.from_weights(bw, bb, iterations=14, lr=0.01).fit(task(fs, ls, fq))
    kl = m.history["kl"]
    assert torch.all(kl[0].abs() < 1e-8)  # pi = initial marginal
    assert torch.all(kl[9] > 1e-6)  # the prior is still the initial one before step 10
    assert torch.all(kl[10].abs() < 1e-8)  # re-estimated after step 10 -> equals the marginal again
    assert torch.all(kl[11] > 0)
    assert torch.allclose(m.prior, m.history["marginal"][10], atol=1e-7)
    assert not torch.allclose(m.prior, m.initial_prior)
    never = DIaM.from_weights(bw, bb, iterations=14, lr=0.01, prior_update_at=()).fit(task(fs, ls, fq))
    assert torch.all(never.history["kl"][10] > 1e-6) and torch.equal(never.prior, never.initial_prior)
    no_kl = DIaM.from_weights(bw, bb, iterations=14, lr=0.01, weights=(100, 0, 1, 100)).fit(task(fs, ls, fq))
    assert torch.equal(no_kl.prior, no_kl.initial_prior)  # official: no update when the KL weight is 0


def test_priors():
    bw, bb, fs, ls, fq, lq = toy_problem(q=2)
    uni = DIaM.from_weights(bw, bb, iterations=2, prior="uniform").fit(task(fs, ls, fq))
    assert torch.allclose(uni.prior, torch.full((2, 5), 0.2))
    ora = DIaM.from_weights(bw, bb, iterations=2, prior="oracle").fit(task(fs, ls, fq, lq))
    true = torch.stack([torch.bincount(downsample_labels(lq, (8, 8))[i].flatten(), minlength=5) / 64.0
                        for i in range(2)])
    assert torch.allclose(ora.prior, true, atol=1e-6)
    img = DIaM.from_weights(bw, bb, iterations=2, prior="imglvl").fit(task(fs, ls, fq, lq))
    assert torch.all(img.prior[true == 0] == 0) and torch.allclose(img.prior.sum(1), torch.ones(2), atol=1e-5)
    for prior in ("imglvl", "oracle"):
        with pytest.raises(ValueError, match="query_labels"):
            DIaM.from_weights(bw, bb, prior=prior).fit(task(fs, ls, fq))


def test_initialisation():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    m = DIaM.from_weights(bw, bb, iterations=0).fit(task(fs, ls, fq))
    assert torch.equal(m.weight[:, :3], bw.expand(2, -1, -1)) and torch.equal(m.bias[:, :3], bb.expand(2, -1))
    assert torch.equal(m.bias[:, 3:], torch.zeros(2, N))
    novel = m.weight[0, 3:]
    assert torch.allclose(novel.norm(dim=1), torch.ones(N), atol=1e-6)  # only the novel weights are normalised
    ds = downsample_labels(ls, (8, 8))  # nearest: pixel (4i, 4j) of each 4x4 block
    assert torch.equal(ds, ls[:, ::4, ::4])
    mean3 = fs.permute(0, 2, 3, 1)[ds == 3].mean(0)
    assert torch.allclose(novel[0], mean3 / mean3.norm(), atol=1e-6)
    assert torch.allclose(novel_prototypes(fs, ds, [3, 4]), novel, atol=1e-6)


def test_base_frozen_option():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    frozen = DIaM.from_weights(bw, bb, iterations=10, fine_tune_base=False).fit(task(fs, ls, fq))
    assert torch.equal(frozen.weight[:, :3], bw.expand(2, -1, -1)) and torch.equal(frozen.bias[:, :3], bb.expand(2, -1))
    init = DIaM.from_weights(bw, bb, iterations=0).fit(task(fs, ls, fq))
    assert not torch.equal(frozen.weight[:, 3:], init.weight[:, 3:])
    tuned = DIaM.from_weights(bw, bb, iterations=10).fit(task(fs, ls, fq))
    assert not torch.equal(tuned.weight[:, :3], bw.expand(2, -1, -1))


def test_improves_novel_iou_on_a_separable_toy_problem():
    bw, bb, fs, ls, fq, lq = toy_problem(q=6)
    m = DIaM.from_weights(bw, bb, snapshot_at=(0, 100)).fit(task(fs, ls, fq))
    preds = m.snapshot_predictions((32, 32))
    scores = {}
    for step, pred in preds.items():
        meter = GFSSMeter(5, [1, 2], [3, 4])
        meter.update(pred, lq)
        scores[step] = meter.scores()
    assert scores[100]["novel_miou"] > scores[0]["novel_miou"] + 0.3
    assert scores[100]["base_miou"] > scores[0]["base_miou"] - 0.15  # base classes mostly kept (0.77 -> 0.68)
    assert torch.equal(preds[100], m.predict(task(fs, ls, fq)).argmax(1))
    assert m.snapshots[0].shape == (6, 5, 8, 8)
    assert set(m.history) == {"ce", "kl", "entropy", "kd", "loss", "marginal"}
    assert m.history["loss"].shape == (100, 6) and m.history["marginal"].shape == (100, 6, 5)


def test_base_labels_in_support_count_as_background():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    with_base = ls.clone()
    with_base[:, :4, :4] = 2  # base pixels labelled
    zeroed = with_base.masked_fill((with_base >= 1) & (with_base <= B), 0)
    a = DIaM.from_weights(bw, bb, iterations=5).fit(task(fs, with_base, fq)).predict(task(fs, ls, fq))
    b = DIaM.from_weights(bw, bb, iterations=5).fit(task(fs, zeroed, fq)).predict(task(fs, ls, fq))
    assert torch.equal(a, b)


def test_prediction_upsamples_probabilities():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    m = DIaM.from_weights(bw, bb, iterations=3).fit(task(fs, ls, fq))
    probs = torch.softmax(torch.einsum("qdhw,qcd->qchw", fq, m.weight) + m.bias[:, :, None, None], 1)
    up = F.interpolate(probs, size=(32, 32), mode="bilinear", align_corners=True)
    out = m.predict(task(fs, ls, fq))
    assert out.shape == (2, 5, 32, 32)
    assert torch.allclose(out.exp(), up, atol=1e-6) and torch.equal(out.argmax(1), up.argmax(1))


def test_from_classifier_and_query_valid():
    bw, bb, fs, ls, fq, lq = toy_problem(q=2)
    conv = torch.nn.Conv2d(8, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(bw[:, :, None, None])
        conv.bias.copy_(bb)
    a = DIaM(conv, iterations=3).fit(task(fs, ls, fq)).predict(task(fs, ls, fq))
    model = torch.nn.Module()
    model.classifier = conv
    assert torch.equal(a, DIaM(model, iterations=3).fit(task(fs, ls, fq)).predict(task(fs, ls, fq)))
    b = DIaM.from_weights(bw, bb, iterations=3).fit(task(fs, ls, fq)).predict(task(fs, ls, fq))
    assert torch.allclose(a, b)
    ignore = lq.clone()
    ignore[:, :16] = 255  # labels' 255 pixels leave the query terms (official valid = label != 255)
    # without query_valid, a method that reads the labels leaves their 255 pixels out too
    c = DIaM.from_weights(bw, bb, iterations=3, prior="oracle").fit(task(fs, ls, fq, ignore, valid=None))
    d = DIaM.from_weights(bw, bb, iterations=3, prior="oracle").fit(task(fs, ls, fq, ignore))
    assert torch.equal(c.history["loss"], d.history["loss"])
    every_pixel = DIaM.from_weights(bw, bb, iterations=3).fit(task(fs, ls, fq))
    assert not torch.allclose(c.history["entropy"], every_pixel.history["entropy"])


def test_bad_inputs():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    m = DIaM.from_weights(bw, bb, iterations=1)
    with pytest.raises(NotFittedError, match="fit"):
        m.predict(task(fs, ls, fq))
    assert DIaM.transductive  # the evaluator fits it on every query batch (a Task always has queries)
    with pytest.raises(ValueError, match="shots"):  # S = 2 supports is not N * K = 2 * 2
        m.fit(task(fs, ls, fq, shots=2))
    with pytest.raises(ValueError, match="B=1 base classes but the classifier has 2"):
        m.fit(task(fs, torch.where((ls >= 2) & (ls != 255), ls - 1, ls), fq, num_base=1))
    with pytest.raises(UnsupportedTaskError, match="diam handles gfss"):
        m.fit(fss_task(fs, (ls == 3).long(), fq))
    bad = ls.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[9\]"):
        m.fit(task(fs, bad, fq))
    with pytest.raises(ValueError, match="classifier's D"):
        m.fit(task(fs[:, :4], ls, fq[:, :4]))
    m.fit(task(fs, ls, fq))
    with pytest.raises(ValueError, match="one classifier per query"):
        m.predict(task(fs, ls, fq[:1]))
    with pytest.raises(ValueError, match="prior"):
        DIaM.from_weights(bw, bb, prior="flat")
    with pytest.raises(ValueError, match="base_weight"):
        DIaM.from_weights(bw[0], bb)
    with pytest.raises(TypeError, match="1x1 nn.Conv2d"):
        DIaM(torch.nn.Linear(8, 3))
    empty = ls.clone()
    empty[empty == 4] = 0
    with pytest.raises(ValueError, match=r"novel class\(es\) \[4\] have no support pixel"):  # Method.check_task
        DIaM.from_weights(bw, bb, iterations=1).fit(task(fs, empty, fq))
    lost = empty.clone()
    lost[1, 1, 1] = 4  # one pixel that nearest down-sampling (pixel (4i, 4j) of each block) never reads
    with pytest.warns(UserWarning, match="no support pixel at the feature size"):
        DIaM.from_weights(bw, bb, iterations=1).fit(task(fs, lost, fq))


def test_fit_under_no_grad():
    bw, bb, fs, ls, fq, _ = toy_problem(q=2)
    ref = DIaM.from_weights(bw, bb, iterations=5).fit(task(fs, ls, fq)).predict(task(fs, ls, fq))
    with torch.no_grad():
        out = DIaM.from_weights(bw, bb, iterations=5).fit(task(fs, ls, fq)).predict(task(fs, ls, fq))
    assert torch.equal(ref, out)
