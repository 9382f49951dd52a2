"""MM-Former stage-2 variants (named options beside the official ones): the plain Dice, the threshold start of the
matching MLP, the co_loss gradient at the bottom of the min-max range, and the POS's context features (Tab. 3b)."""
import pytest
import torch

from fss_lab.losses.mmformer import co_loss, mmformer_dice_loss, mmformer_loss
from fss_lab.models.mmformer import MatchingMLP
from fss_lab.models.mmformer.pos_training import POS_LEVELS, POS_MASK_LEVEL, POSContextExtractor, build_pos


def _blend(fg: torch.Tensor) -> torch.Tensor:
    return torch.cat([1 - fg, fg], 1)


def test_plain_dice_prefers_the_object_to_any_constant_and_is_zero_at_the_mask():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, :1] = 1                                                   # a 10 % object
    mask = (labels[:, None] == 1).float()
    def plain(fg):
        return mmformer_dice_loss(_blend(fg), labels, apply_sigmoid=False)
    consts = [plain(torch.full((1, 1, 10, 10), c)) for c in (-1.0, 0.0, 0.5, 1.0)]
    assert float(plain(mask)) == pytest.approx(0.0, abs=1e-6)           # the exact mask is the minimum
    half = mask.clone()
    half[..., 5:] = 0                                                   # half the object found
    assert plain(half) < min(consts)                                    # a partial match beats every constant
    parts = mmformer_loss(_blend(half), torch.rand(1, 3), torch.rand(1, 3, 10, 10), labels, dice="plain")
    assert torch.allclose(parts["fewshot_loss"], 10 * plain(half))
    with pytest.raises(ValueError, match="dice"):
        mmformer_loss(_blend(half), torch.rand(1, 3), torch.rand(1, 3, 10, 10), labels, dice="soft")


def test_threshold_start_across_is_the_mean_centred_rule():
    torch.manual_seed(0)
    mlp = MatchingMLP(6).init_threshold(offset=0.2, scale=10.0)
    s = torch.rand(4, 6)
    want = 0.5 + 10 * (s - s.mean(1, keepdim=True) - 0.2)
    assert torch.allclose(mlp(s), want, atol=0.02)                      # small random weights on the spare units
    assert torch.equal(mlp(s) > 0.5, want > 0.5) or (want - 0.5).abs().min() < 0.02
    assert mlp.fc1.weight[12:].abs().max() > 0                          # spare hidden units can still learn
    with pytest.raises(ValueError, match="hidden width"):
        MatchingMLP(6, hidden=8).init_threshold(0.2)


def test_threshold_start_per_proposal_keeps_the_proposals_near_the_best():
    mlp = MatchingMLP(5, mixing="per_proposal").init_threshold(offset=0.05, scale=10.0)
    s = torch.tensor([[0.90, 0.88, 0.70, 0.10, 0.50]])
    w = mlp(s)
    assert torch.allclose(w, 0.5 + 10 * (s - 0.90 + 0.05), atol=0.02)
    assert (w > 0.5).tolist() == [[True, True, False, False, False]]
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(mlp(s[:, perm]), w[:, perm], atol=1e-6)      # still permutation-equivariant


def test_co_loss_gives_the_best_proposal_no_gradient_when_it_is_the_least_similar():
    props = torch.zeros(1, 3, 4, 4)
    props[0, 0, :2], props[0, 1, 2:3], props[0, 2, 3:] = 1, 1, 1
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1                                                   # proposal 0 is the best (IoU 1)
    bottom = torch.tensor([[0.1, 0.5, 0.9]], requires_grad=True)       # ... and the least similar
    loss = co_loss(bottom, props, labels)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(50.0, abs=0.5)                  # log(0) clamped at -100, halved: 6x -> 300
    assert bottom.grad[0, 0] == 0                                       # the positive term cannot lift it
    middle = torch.tensor([[0.5, 0.1, 0.9]], requires_grad=True)
    co_loss(middle, props, labels).backward()
    assert middle.grad[0, 0] < 0                                        # elsewhere it pushes the best one up


def test_pos_context_extractor_gives_the_pixel_decoder_level():
    from fss_lab.models.backbones import create_backbone

    class _Cache:
        def __init__(self, x):
            self.x = x

        def get(self, indices, device=None):
            return self.x[list(indices)]

    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    feats = backbone(torch.zeros(1, 3, 64, 64), levels=(*POS_LEVELS, POS_MASK_LEVEL))
    caches = {lv: _Cache(f) for lv, f in feats.items()}
    pos = build_pos(caches, num_queries=5, hidden_dim=8, nhead=2, dim_feedforward=16, dec_layers=3, mask_dim=8)
    x = torch.randn(2, 3, 64, 64)
    out = POSContextExtractor(pos, backbone, "s16")(x)
    f = backbone(x, levels=(*POS_LEVELS, POS_MASK_LEVEL))
    multi, _ = pos.pixel_decoder([f[lv] for lv in POS_LEVELS], f[POS_MASK_LEVEL])
    assert out.shape == (2, 8, 4, 4) and torch.allclose(out, multi[1])
    with pytest.raises(ValueError, match="level"):
        POSContextExtractor(pos, backbone, "s4")


def test_plot_proposals_leaves_out_empty_padding_proposals():
    from fss_lab.viz.attention import plot_proposals
    props = torch.zeros(5, 8, 8)
    props[0, :, :2], props[2, :, 4:] = 1, 1                             # proposals 1, 3, 4 are padding
    coeff = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.7])
    fig = plot_proposals(torch.rand(3, 32, 32), props, coeff, torch.rand(5), max_shown=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("#")]
    assert [t.split()[0] for t in titles] == ["#2", "#0"]
    assert "3 empty" in fig._suptitle.get_text()

