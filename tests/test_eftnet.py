"""EFTNet (seed 001): the Q2S pseudo-mask filter, the 0.8 / 0.2 mixing, the round selection rule, no leakage between
episodes, the batched path equal to the per-query loop, and the round-0 / Q2S-off identities."""
import pytest
import torch

from fss_lab.methods.eftnet import (EFTNet, EFTNetTrace, binary_iou, mix, poly_lr, pseudo_mask, select_round,
                                    unit_loss)
from fss_lab.methods.pfenet import PFENetMetaLearner
from tests.test_method_contract import make_task


# ---- the pieces ----------------------------------------------------------------------------------------------

def test_pseudo_mask_keeps_the_top_20_percent_of_the_confident_foreground():
    # 10 pixels above 0.5 -> int(10 * 0.2) = 2 kept: 0.95 and 0.9; the 5 pixels <= 0.5 never
    p = torch.tensor([[0.95, 0.90, 0.80, 0.75, 0.70],
                      [0.65, 0.60, 0.55, 0.52, 0.51],
                      [0.50, 0.40, 0.30, 0.20, 0.10]])
    want = torch.zeros(3, 5)
    want[0, 0] = want[0, 1] = 1
    assert torch.equal(pseudo_mask(p), want)
    # keep = 0.5 -> 5 kept
    want5 = torch.zeros(3, 5)
    want5[0, :] = 1
    assert torch.equal(pseudo_mask(p, keep=0.5), want5)
    # leading axes are filtered one by one
    assert torch.equal(pseudo_mask(torch.stack([p, p.flip(-1)])), torch.stack([want, want.flip(-1)]))


def test_pseudo_mask_official_quirk_with_too_few_foreground_pixels():
    # 3 pixels above 0.5 -> int(0.6) = 0 -> the threshold is the smallest value + 1e-10: every pixel above it
    p = torch.tensor([[0.9, 0.8, 0.7], [0.2, 0.1, 0.0]])
    assert torch.equal(pseudo_mask(p), torch.tensor([[1.0, 1, 1], [1, 1, 0]]))


def test_mix_and_the_round_inputs_mix_real_and_pseudo_supports_0_8_0_2():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([6.0, -3.0])
    torch.testing.assert_close(mix(a, b), torch.tensor([2.0, 1.0]))
    m = EFTNet()
    protos = torch.tensor([[1.0, 0.0], [3.0, 2.0]])              # K = 2 shots
    pseudo = torch.tensor([[10.0, 10.0]])
    prior_real, prior_pq = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 1.0)
    prior_ss = torch.arange(16.0).view(2, 2, 2, 2)              # [support as query, shot, h, w]
    prior_ps = torch.full((2, 1, 2, 2), 100.0)
    qp, qprior, sp, sprior = m._round_inputs(protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, True)
    torch.testing.assert_close(qp, 0.8 * torch.tensor([[2.0, 1.0]]) + 0.2 * pseudo)
    torch.testing.assert_close(qprior, torch.full((1, 1, 2, 2), 0.8 * 0.5 + 0.2))
    # S2Q: support 0 is the query -> shots {pseudo, support 1} mixed 0.8 with support 0 itself
    torch.testing.assert_close(sp[0], 0.8 * (pseudo[0] + protos[1]) / 2 + 0.2 * protos[0])
    torch.testing.assert_close(sp[1], 0.8 * (protos[0] + pseudo[0]) / 2 + 0.2 * protos[1])
    torch.testing.assert_close(sprior[0, 0], 0.8 * (100 + prior_ss[0, 1]) / 2 + 0.2 * prior_ss[0, 0])
    torch.testing.assert_close(sprior[1, 0], 0.8 * (prior_ss[1, 0] + 100) / 2 + 0.2 * prior_ss[1, 1])
    qp_off, qprior_off, _, _ = m._round_inputs(protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, False)
    torch.testing.assert_close(qp_off, protos.mean(0, keepdim=True))
    torch.testing.assert_close(qprior_off, prior_real)


def test_round_selection_rule_is_the_official_discrimination():
    nan = float("nan")
    assert select_round([nan, 0.3, 0.5, 0.5, 0.2]) == 3       # highest mean support IoU, ties -> later round
    assert select_round([nan, 0.0, 0.0, 0.0]) == 3            # iou >= best (0): never round 0
    assert select_round([nan, 0.7, 0.1, 0.6]) == 1
    assert select_round([nan]) == 0                           # R = 0
    trace = EFTNetTrace(predictions=torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2),
                                                 torch.eye(2)[None]]).to(torch.uint8),
                        fg_prob=torch.zeros(3, 1, 2, 2, dtype=torch.float16),
                        pseudo_labels=torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                        pseudo_masks=torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                        support_iou=torch.tensor([[nan], [0.9], [0.2]]), chosen=torch.tensor([1]))
    labels = torch.eye(2, dtype=torch.long)[None]
    assert trace.choose("discrimination").tolist() == [1] and trace.choose("last").tolist() == [2]
    assert trace.choose("first").tolist() == [0] and trace.choose("oracle", labels).tolist() == [2]
    with pytest.raises(ValueError, match="oracle round needs"):
        trace.choose("oracle")


def test_poly_lr_binary_iou_and_unit_loss():
    assert poly_lr(0.005, 5, 0) == pytest.approx(0.005 + 1e-10)
    assert poly_lr(0.005, 5, 3) == pytest.approx(0.005 * (1 - 3 / 6) ** 0.9 + 1e-10)
    pred = torch.tensor([[1, 1, 0, 0]])[None]
    lab = torch.tensor([[1, 0, 1, 255]])[None]
    assert binary_iou(pred, lab).item() == pytest.approx(1 / 3)
    logits = torch.randn(2, 2, 4, 4)
    labels = torch.randint(0, 2, (2, 4, 4))
    labels[1, :2] = 255
    one = unit_loss(logits, [], labels)
    for i in range(2):  # each query's mean over its own valid pixels
        torch.testing.assert_close(one[i], torch.nn.functional.cross_entropy(logits[i:i + 1], labels[i:i + 1],
                                                                             ignore_index=255))


# ---- the method ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learner():
    m = EFTNet()
    m.fit(make_task("fss", 0))
    return m.learner


def test_no_leakage_the_wrapped_model_is_unchanged_and_episodes_are_independent(learner):
    before = {k: v.clone() for k, v in learner.network.state_dict().items()}
    t1, t2 = make_task("fss", 1), make_task("fss", 2)
    both = EFTNet(learner, lr=0.5).fit_predict([t1, t2])            # a large lr: any leak would show
    alone = EFTNet(learner, lr=0.5).fit(t2).predict(t2)
    after = EFTNet(learner, lr=0.5, batched=False).fit_predict([t1, t2])
    for k, v in learner.network.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(both[1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(after[1], alone, atol=1e-5, rtol=0)


def test_round_0_is_the_wrapped_models_prediction_and_fine_tuning_changes_it(learner):
    t = make_task("fss", 3)
    m = EFTNet(learner, lr=0.5, selection="first")
    out = m.fit(t).predict(t)
    torch.testing.assert_close(out, learner.fit(t).predict(t), atol=1e-5, rtol=0)
    trace = EFTNet(learner, lr=0.5, keep_traces=1, selection="last")
    last = trace.fit(t).predict(t)
    assert not torch.allclose(last, out)
    tr = trace.traces[0]
    assert tr.predictions.shape == (6, 2, 16, 16) and tr.pseudo_labels.shape == (5, 2, 16, 16)
    assert torch.isnan(tr.support_iou[0]).all() and bool((tr.support_iou[1:] >= 0).all())
    # round r trains on round r - 1's argmax, padding (query_valid False) set to 255
    want = tr.predictions[0].clone()
    want[~t.valid().cpu()] = 255
    assert torch.equal(tr.pseudo_labels[0], want)


def test_without_q2s_round_1_equals_round_0(learner):
    t = make_task("fss", 4)
    m = EFTNet(learner, q2s=False, lr=0.5, keep_traces=1)
    m.fit(t)
    tr = m.traces[0]
    assert torch.equal(tr.predictions[1], tr.predictions[0])  # theta_0, real supports only
    m2 = EFTNet(learner, lr=0.5, keep_traces=1)
    m2.fit(t)
    assert not torch.equal(m2.traces[0].fg_prob[1], m2.traces[0].fg_prob[0])  # the pseudo support changes it


def test_oracle_and_official_label_s2q_read_query_labels(learner):
    assert EFTNet(learner, selection="oracle").reads_query_labels
    assert EFTNet(learner, s2q_query_mask="label").reads_query_labels and not EFTNet(learner).reads_query_labels
    t = make_task("fss", 5)
    with pytest.raises(ValueError, match="reads the query labels"):
        EFTNet(learner, selection="oracle").fit(t.with_queries(t.query_features))
    with pytest.raises(ValueError, match="selection must be"):
        EFTNet(learner, selection="best")
    with pytest.raises(TypeError, match="PFENetMetaLearner"):
        EFTNet(object())


@pytest.fixture(scope="module")
def two_level_tasks():
    """Real tasks with the layer-3 -> layer-4 path (s16, s32), 2 shots, from a small synthetic experiment."""
    from fss_lab.engine.evaluate import fss_task_groups
    from fss_lab.experiments.fss import FSSConfig, FSSExperiment
    from fss_lab.models.backbones import create_backbone
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    exp = FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 16},
                                  image_size=(64, 64), n_episodes=3, min_area=16, device="cpu"), backbone=backbone)
    learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0, 0.5), backbone=backbone)
    q, s = exp.level_caches(("s16", "s32"))
    group = next(fss_task_groups(learner, exp.episodes(2), exp.query_items, exp.support_items, q, s, device="cpu",
                                 batch_episodes=3))
    learner.build_for(group.tasks[0])
    return learner, group.tasks


@pytest.mark.filterwarnings("ignore:fold 0. classes dropped")
def test_batched_equals_the_loop_with_the_layer4_path_and_two_shots(two_level_tasks):
    learner, tasks = two_level_tasks
    fast = EFTNet(learner, lr=0.05, keep_traces=None)
    a = fast.fit_predict(tasks)
    slow = EFTNet(learner, lr=0.05, batched=False, keep_traces=None)
    b = slow.fit_predict(tasks)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)
    for ta, tb in zip(fast.traces, slow.traces):
        torch.testing.assert_close(ta.support_iou, tb.support_iou, atol=1e-6, rtol=0, equal_nan=True)
        assert torch.equal(ta.pseudo_masks, tb.pseudo_masks)


# ---- MM-Former's matching module (the second adapter) ----------------------------------------------------------

def _mm_learner(task):
    from fss_lab.methods.mmformer import MMFormer
    m = MMFormer(levels=("bottleneck",), hidden_dim=8, nhead=2, dim_feedforward=16, num_layers=1, min_size=2,
                 init="threshold")
    return m.fit(task)


def _two_shot(task):
    """``task`` with its support shown twice, the second copy's mask shifted (K = 2)."""
    from fss_lab.methods.task import Task
    labels = torch.cat([task.support_labels, task.support_labels.roll(3, -1)])
    feats = {k: torch.cat([v, v.flip(-1)]) for k, v in task.support_features.items()}
    return Task(feats, labels, task.query_features, task.label_space, shots=2, size=task.size,
                query_valid=task.query_valid, meta=dict(task.meta))


@pytest.fixture(scope="module")
def mm_learner():
    return _mm_learner(make_task("fss", 0))


def test_mmformer_runs_round_0_is_its_prediction_and_fine_tuning_changes_it(mm_learner):
    for t in (make_task("fss", 3), _two_shot(make_task("fss", 3))):
        with torch.no_grad():
            want = mm_learner.fit(t).predict(t)
        first = EFTNet(mm_learner, lr=0.5, selection="first").fit(t).predict(t)
        torch.testing.assert_close(first, want, atol=1e-5, rtol=0)
        m = EFTNet(mm_learner, lr=0.5, selection="last", keep_traces=1)
        last = m.fit(t).predict(t)
        assert last.shape == (2, 2, 16, 16) and not torch.allclose(last, first)
        tr = m.traces[0]
        assert tr.predictions.shape == (6, 2, 16, 16) and tr.support_iou.shape == (6, 2)
        assert bool((tr.support_iou[1:] >= 0).all())
        # MM-Former's output is [1 - fg, fg]: the trace's foreground probability is channel 1 itself
        torch.testing.assert_close(tr.fg_prob[0].float(), want[:, 1].detach(), atol=1e-2, rtol=0)


def test_mmformer_no_leakage_and_the_loop_over_episodes(mm_learner):
    before = {k: v.clone() for k, v in mm_learner.network.state_dict().items()}
    t1, t2 = make_task("fss", 1), make_task("fss", 2)
    both = EFTNet(mm_learner, lr=0.5).fit_predict([t1, t2])    # MM-Former: no vmap, fit_predict loops
    alone = EFTNet(mm_learner, lr=0.5).fit(t2).predict(t2)
    for k, v in mm_learner.network.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(both[1], alone, atol=1e-5, rtol=0)
    assert EFTNet(mm_learner).feature_levels == mm_learner.feature_levels


def test_mmformer_prototype_mixing_0_8_0_2_by_hand():
    """A stand-in model whose ``"pair"`` returns the value tagging its support (supports 1 and 2, the pseudo
    support = the query, 100) and whose ``"head"`` returns its (embedding, prototype): the mixing is visible."""
    from fss_lab.methods.eftnet import _MMFormerAdapter, _MMUnits
    tag = lambda v: [torch.full((1, 1, 1, 1), float(v))]  # noqa: E731
    u = _MMUnits(qf=[tag(100)], sf=[[tag(1), tag(2)]], s_masks=[torch.zeros(2, 4, 4, dtype=torch.long)],
                 q_props=[torch.ones(1, 3, 4, 4)], s_props=[torch.ones(2, 3, 4, 4)],
                 s_labels=torch.zeros(1, 2, 4, 4, dtype=torch.long), valid=torch.ones(1, 4, 4, dtype=torch.bool),
                 labels=None, size=(4, 4))

    def run_all(kind, *args):
        if kind == "pair":  # (embedding = the query's tag, prototype = the support's tag)
            qf, sf = args[0][0][0], args[1][0][0]
            return qf.view(1, 1, 1, 1), sf.view(1, 1, 1)
        emb, proto = args[0][0], args[1][0]
        return torch.stack([emb.flatten(), proto.flatten()], -1)[None, None]   # [U, 1, 1, 2]
    ad = _MMFormerAdapter(EFTNet(), None)
    q_mask = torch.ones(1, 4, 4)
    out = ad.query_forward(run_all, u, q_mask, None, True)[0]
    assert out.flatten().tolist() == pytest.approx([100, 0.8 * (1 + 2) / 2 + 0.2 * 100])
    off = ad.query_forward(run_all, u, q_mask, None, False)[0]
    assert off.flatten().tolist() == pytest.approx([100, 1.5])
    s2q = ad.s2q_forward(run_all, u, q_mask, None)                               # [U, K, 1, 2]
    # support 0 as query: shots {pseudo (100), support 1 (2)}, mixed 0.8 with support 0 itself (1)
    assert s2q[0, 0].flatten().tolist() == pytest.approx([1, 0.8 * (100 + 2) / 2 + 0.2 * 1])
    assert s2q[0, 1].flatten().tolist() == pytest.approx([2, 0.8 * (1 + 100) / 2 + 0.2 * 2])


def test_eftnet_refuses_a_learner_without_an_adapter(mm_learner):
    from fss_lab.methods.mmformer import HeuristicMatching
    with pytest.raises(TypeError, match="MMFormer"):
        EFTNet(HeuristicMatching())
