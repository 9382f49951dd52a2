"""The fast paths of issue 13 give the reference results: DIaM's closed-form step (fused value + gradient) equals
autograd on the public InfoMax terms, batched equals the per-query loop at a realistic layout, RePRI's chunked
batches equal one batch and the loop. (Speed is measured in bench/, never asserted here.)"""
import torch

from fss_lab.losses import infomax as im
from fss_lab.methods.diam import DIaM
from fss_lab.methods.repri import RePRI
from tests.tasks import fss_task, gfss_task

B, N = 3, 2


def test_fused_support_cross_entropy_equals_autograd():
    g = torch.Generator().manual_seed(0)
    t, s, c, h, w = 3, 4, 1 + B + N, 5, 6
    z = torch.randn(t, s, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    lab = torch.randint(0, c, (1, s, h, w), generator=g)
    lab[(lab >= 1) & (lab <= B)] = 0
    lab[0, 0, 0] = 255
    for shots in (1, 2):
        ref = im.support_cross_entropy(torch.softmax(z, 2), lab, 1 + B, shots)
        (grad,) = torch.autograd.grad(ref.sum(), z)
        flat = lab.reshape(-1)
        valid = (flat != 255).double()
        cw = torch.ones(c, dtype=torch.float64)
        cw[0] = im.support_background_weight(shots)
        pw = cw[flat.masked_fill(flat == 255, 0)] * valid / (valid.sum() + im.EPS)
        z_pm = z.detach().permute(1, 3, 4, 0, 2).reshape(-1, t, c)  # [S*h*w, T, C]
        ce, g_pm = im.support_cross_entropy_fused(z_pm, im.support_fold_mask(flat, c, 1 + B).double(), pw)
        torch.testing.assert_close(ce, ref.detach(), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(g_pm.view(s, h, w, t, c).permute(3, 0, 4, 1, 2), grad, atol=1e-12, rtol=1e-9)


def test_fused_query_terms_equal_autograd():
    g = torch.Generator().manual_seed(1)
    t, c, h, w = 3, 1 + B + N, 4, 5
    z = torch.randn(t, 1, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    snap = torch.softmax(torch.randn(t, 1, 1 + B, h, w, generator=g, dtype=torch.float64), 2)
    valid = (torch.rand(t, 1, h, w, generator=g) > 0.2).double()
    prior = torch.softmax(torch.randn(t, c, generator=g, dtype=torch.float64), 1)
    l2, l3, l4 = 1.0, 0.7, 100.0
    p = torch.softmax(z, 2)
    kl = im.kl_to_prior(im.class_marginal(p, valid), prior)
    ent = im.conditional_entropy(p, valid)
    kd = im.distillation_kl(p, snap, valid, 1 + B)
    (grad,) = torch.autograd.grad((l2 * kl + l3 * ent + l4 * kd).sum(), z)
    pm = lambda x: x.detach().flatten(3).transpose(2, 3)[:, 0]  # noqa: E731  [T, h*w, C]
    kl_f, ent_f, kd_f, marg, _, g_f = im.query_infomax_fused(pm(z), pm(snap), valid.reshape(t, -1), prior, 1 + B,
                                                             (l2, l3, l4))
    for a, b in ((kl_f, kl), (ent_f, ent), (kd_f, kd), (marg, im.class_marginal(p, valid))):
        torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g_f.transpose(1, 2).reshape(t, 1, c, h, w), grad, atol=1e-12, rtol=1e-9)


def _diam_problem(q=4, shots=2, d=24, grid=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = 4 * (grid - 1) + 1
    fs = torch.relu(torch.randn(N * shots, d, grid, grid, generator=g))
    fq = torch.relu(torch.randn(q, d, grid, grid, generator=g))
    ls = torch.randint(0, 1 + B, (N * shots, size, size), generator=g)
    for i in range(N * shots):
        ls[i, 5:20, 8:25] = 1 + B + i // shots
    ls[:, :2] = 255
    valid = torch.ones(q, size, size, dtype=torch.bool)
    valid[:, -3:] = False
    w, b = 0.2 * torch.randn(1 + B, d, generator=g), 0.1 * torch.randn(1 + B, generator=g)
    return w, b, gfss_task(fs, ls, fq, B, N, shots, query_valid=valid)


def test_diam_batched_equals_loop_at_a_realistic_layout():
    w, b, task = _diam_problem()
    kw = dict(iterations=25, lr=0.01, snapshot_at=(0, 25))
    batched = DIaM.from_weights(w, b, **kw).fit(task)
    looped = DIaM.from_weights(w, b, **kw).fit(task, batched=False)
    pa, pb = batched.predict_proba(task), looped.predict_proba(task)
    assert float((pa - pb).abs().max()) <= 1e-5
    assert not torch.allclose(batched.snapshots[0], batched.snapshots[25], atol=1e-4)  # the inference moved
    torch.testing.assert_close(batched.history["loss"], looped.history["loss"], atol=1e-4, rtol=1e-5)


def test_diam_fixed_base_keeps_base_rows():
    w, b, task = _diam_problem(q=2)
    m = DIaM.from_weights(w, b, iterations=5, lr=0.01, fine_tune_base=False).fit(task)
    assert torch.equal(m.weight[:, :1 + B], w.expand(2, -1, -1)) and torch.equal(m.bias[:, :1 + B], b.expand(2, -1))
    assert not torch.equal(m.weight[:, 1 + B:], DIaM.from_weights(w, b, iterations=0).fit(task).weight[:, 1 + B:])


def test_repri_chunks_equal_one_batch_and_the_loop():
    g = torch.Generator().manual_seed(2)
    tasks = []
    for _ in range(5):
        fs, fq = torch.relu(torch.randn(2, 16, 6, 6, generator=g)), torch.relu(torch.randn(1, 16, 6, 6, generator=g))
        ms = torch.zeros(2, 21, 21, dtype=torch.long)
        ms[:, 4:14, 3:12] = 1
        tasks.append(fss_task(fs, ms, fq))
    one = torch.stack(RePRI(adapt_iter=15, chunk_bytes=0).fit_predict(tasks))
    chunked = torch.stack(RePRI(adapt_iter=15, chunk_bytes=1).fit_predict(tasks))  # one episode per chunk
    loop = torch.stack(RePRI(adapt_iter=15).fit_predict(tasks, batched=False))
    assert float((one.exp() - chunked.exp()).abs().max()) <= 1e-6
    assert float((one.exp() - loop.exp()).abs().max()) <= 1e-5
