"""fss_lab.segment on users' own images: input kinds (paths / arrays / PIL), EXIF, aspect ratios, bad masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fss_lab
from fss_lab.own_images import SegmentInputError, auto_image_size, load_image, load_mask, save_segmentations

SIZE = (64, 64)  # network input: tiny, so each call is fast


def scene(h: int, w: int, box: tuple[int, int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey-noise photo with a saturated red square at ``box`` = (y0, y1, x0, x1) and its mask."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = (230, 30, 30)
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return img, mask


@pytest.fixture(scope="module")
def support():
    return scene(60, 80, (15, 45, 20, 60))


def test_segments_the_support_class_at_each_query_size(support) -> None:
    img, mask = support
    # a tall and a wide query: the prediction must be un-padded and resized back, not stretched
    queries = [scene(120, 60, (10, 60, 5, 45), 1), scene(60, 150, (10, 50, 95, 140), 2)]
    out = fss_lab.segment(img, mask, [q for q, _ in queries], image_size=(128, 128), device="cpu", overlays=True)
    assert [o.mask.shape for o in out] == [(120, 60), (60, 150)]
    for o, (q, truth) in zip(out, queries):
        assert o.probability.dtype == np.float32 and 0 <= o.probability.min() <= o.probability.max() <= 1
        assert o.overlay.shape == (*q.shape[:2], 3) and o.overlay.dtype == np.uint8
        assert o.iou(truth) > 0.5, o.iou(truth)
    assert out[0].mask[35, 25] and not out[0].mask[100, 30]  # box centre in, far end out
    assert out[1].mask[30, 117] and not out[1].mask[30, 20]


def test_paths_pil_and_arrays_give_the_same_masks(tmp_path: Path, support) -> None:
    img, mask = support
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask * 255).save(tmp_path / "s_mask.png")
    query, _ = scene(60, 80, (5, 35, 30, 70), 3)
    Image.fromarray(query).save(tmp_path / "q.png")
    a = fss_lab.segment(img, mask.astype(bool), query, image_size=SIZE, device="cpu")[0]
    b = fss_lab.segment(str(tmp_path / "s.png"), tmp_path / "s_mask.png", [tmp_path / "q.png"], image_size=SIZE,
                        device="cpu")[0]
    c = fss_lab.segment(Image.open(tmp_path / "s.png"), Image.fromarray(mask * 255), Image.fromarray(query),
                        image_size=SIZE, device="cpu")[0]
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.mask, c.mask)
    assert b.name == "q" and a.name == "query0"


def test_exif_orientation_is_applied_to_paths_and_pil_images(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :10] = 255
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    pil.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (30, 20, 3)
    assert load_image(Image.open(tmp_path / "r.jpg")).shape == (30, 20, 3)


def test_class_id_masks_and_drawings(support) -> None:
    ids = np.zeros((10, 10), np.uint8)
    ids[2:5, 2:5], ids[6:9, 6:9], ids[0, 0] = 3, 7, 255
    m = load_mask(ids, class_id=7)
    assert m[7, 7] == 1 and m[3, 3] == 0 and m[0, 0] == 255
    with pytest.raises(SegmentInputError, match=r"values \[0, 3, 7, 255\].*class_id"):
        load_mask(ids)
    drawing = np.zeros((10, 10, 3), np.uint8)
    drawing[2:6, 2:6] = (255, 0, 0)
    assert load_mask(drawing).sum() == 16
    photo = np.random.default_rng(0).integers(40, 200, (10, 10, 3), dtype=np.uint8)
    with pytest.raises(SegmentInputError, match="looks like a photo"):
        load_mask(photo)


def test_bad_inputs_are_explained(support, tmp_path: Path) -> None:
    img, mask = support
    with pytest.raises(SegmentInputError, match="no foreground pixel"):
        fss_lab.segment(img, np.zeros_like(mask), img, image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match=r"support mask 0 is 30x40 .*its image is 60x80"):
        fss_lab.segment(img, mask[::2, ::2], img, image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match="2 support images but 1 support masks"):
        fss_lab.segment([img, img], [mask], img, image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match="file not found"):
        fss_lab.segment(img, mask, tmp_path / "missing.jpg", image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match=r"trained base model; pass model="):
        fss_lab.segment(img, mask, img, method="diam", image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match="unknown method"):
        fss_lab.segment(img, mask, img, method="protoype", image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0))


def test_auto_size_follows_the_aspect_ratio() -> None:
    assert auto_image_size([(512, 512)]) == (320, 320)
    assert auto_image_size([(300, 451), (300, 450)]) == (208, 320)
    assert auto_image_size([(800, 400)]) == (320, 160)


def test_repri_and_save(tmp_path: Path, support) -> None:
    img, mask = support
    query, truth = scene(60, 80, (20, 55, 10, 45), 4)
    out = fss_lab.segment(img, mask, query, method="repri", method_kwargs={"adapt_iter": 10},
                          image_size=(128, 128), device="cpu", overlays=True)
    assert out[0].iou(truth) > 0.5, out[0].iou(truth)
    paths = save_segmentations(out + out, tmp_path)
    assert [p.name for p in paths] == ["query0_mask.png", "query0_overlay.png", "query0_1_mask.png",
                                       "query0_1_overlay.png"]
    assert set(np.unique(np.asarray(Image.open(paths[0])))) <= {0, 255}


def test_a_folder_of_square_photos_gets_a_square_input(tmp_path: Path) -> None:
    from fss_lab.data.folder import FolderDataset
    from fss_lab.own_images import dataset_image_size

    for i in range(3):
        img, mask = scene(100, 100, (10, 60, 10, 60), i)
        Image.fromarray(img).save(tmp_path / f"sq{i}.jpg")
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask * 255).save(tmp_path / "masks" / f"sq{i}.png")
    ds = FolderDataset(tmp_path, "val", {"class_names": ["red"]})
    assert dataset_image_size(ds) == (320, 320)


# ---- methods that need a trained model ------------------------------------------------------------------------


def tiny_pspnet(num_base: int = 2):
    """An untrained PSPNet (random backbone, 8-channel bottleneck, ``1 + num_base`` outputs): a stand-in for a
    trained base model, fast to build; what it predicts is not the point, the plumbing is."""
    import torch

    from fss_lab.models.pspnet import PSPNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PSPNet("efficientnet_lite0", 1 + num_base, weights=None, bottleneck_dim=8).eval()


def test_methods_that_need_a_trained_model_say_what_is_missing(support, tmp_path: Path) -> None:
    from fss_lab.methods.diam import DIaM
    from fss_lab.methods.pfenet import PFENetMetaLearner

    img, mask = support
    kw = dict(image_size=SIZE, device="cpu")
    with pytest.raises(SegmentInputError, match=r"'bcm' reads the \['bottleneck'\] features .* pass model="):
        fss_lab.segment(img, mask, img, method="bcm", **kw)
    with pytest.raises(SegmentInputError, match=r"'diam' handles GFSS tasks only: it needs the base classes of a trained model; pass model="):
        fss_lab.segment(img, mask, img, method=DIaM(tiny_pspnet()), **kw)  # an instance, but no model for features
    with pytest.raises(SegmentInputError, match=r"'pfenet-meta' is a network meta-trained.*train_episodic"):
        fss_lab.segment(img, mask, img, method="pfenet-meta", **kw)
    with pytest.raises(SegmentInputError, match=r"'mmformer' has no trained network"):
        fss_lab.segment(img, mask, img, method=fss_lab.methods.create_method("mmformer"), **kw)
    with pytest.raises(SegmentInputError, match=r"'pfenet-meta' has no trained network"):
        fss_lab.segment(img, mask, img, method=PFENetMetaLearner(), **kw)
    with pytest.raises(SegmentInputError, match="checkpoint not found"):
        fss_lab.segment(img, mask, img, method="diam", model=tmp_path / "none.pt", **kw)
    with pytest.raises(SegmentInputError, match="not both"):
        fss_lab.segment(img, mask, img, method="diam", model=tiny_pspnet(), backbone="efficientnet_lite0", **kw)
    with pytest.raises(SegmentInputError, match="expected a trained PSPNet"):
        fss_lab.segment(img, mask, img, method="diam", model=object(), **kw)
    with pytest.raises(SegmentInputError, match="already a DIaM instance"):
        fss_lab.segment(img, mask, img, method=DIaM(tiny_pspnet()), model=tiny_pspnet(), method_kwargs={"lr": 1}, **kw)


def test_diam_on_a_checkpoint_path_equals_diam_built_on_the_model(support, tmp_path: Path) -> None:
    from fss_lab.engine.checkpoint import load_pspnet, save_checkpoint
    from fss_lab.methods.diam import DIaM

    img, mask = support
    query, _ = scene(50, 90, (5, 35, 30, 70), 3)
    path = save_checkpoint(tmp_path / "base.pt", model=tiny_pspnet(), iteration=0)
    by_name = fss_lab.segment(img, mask, [query, img], method="diam", method_kwargs={"iterations": 3}, model=path,
                              image_size=SIZE, device="cpu")
    model = load_pspnet(path)
    by_instance = fss_lab.segment(img, mask, [query, img], method=DIaM(model, iterations=3), model=model,
                                  image_size=SIZE, device="cpu")
    assert [o.mask.shape for o in by_name] == [(50, 90), (60, 80)]
    for a, b in zip(by_name, by_instance):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
        assert 0 <= a.probability.min() <= a.probability.max() <= 1


def test_a_gfss_method_runs_with_the_models_base_classes_and_bottleneck(support) -> None:
    """A spy GFSS method: the task has the model's B base classes, the support's class as novel id B + 1, the
    model's bottleneck features; the mask is where the novel class wins over background *and* base classes."""
    from typing import ClassVar

    import torch

    from fss_lab.methods import Method

    seen = {}

    class Spy(Method):
        name: ClassVar[str] = "spy"
        label_spaces: ClassVar[tuple[str, ...]] = ("gfss",)
        feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)

        def fit(self, task):
            seen.update(space=task.label_space, labels=set(torch.unique(task.support_labels).tolist()),
                        channels=task.support("bottleneck").shape[1], levels=task.levels)
            return self

        def predict(self, task):
            q, (h, w) = task.num_queries, task.size
            logits = torch.zeros(q, 1 + task.label_space.num_base + 1, h, w)
            logits[:, -1, :, : w // 2] = 2.0  # novel wins on the left half ...
            logits[:, 1, :, : w // 4] = 3.0  # ... except the left quarter, where base class 1 wins
            return logits

    img, mask = support
    out = fss_lab.segment(img, mask, img, method=Spy(), model=tiny_pspnet(num_base=4), image_size=SIZE, device="cpu")
    assert seen["space"].num_base == 4 and seen["space"].num_novel == 1
    assert seen["labels"] <= {0, 5, 255} and 5 in seen["labels"]
    assert seen["channels"] == 8 and seen["levels"] == ("bottleneck",)
    m = out[0].mask  # 60x80 photo padded to 64x64 (long side 64): columns < 16 are base, 16..31 novel (x 80/64)
    assert not m[:, :18].any() and m[:, 22:38].all() and not m[:, 42:].any()
    assert out[0].probability[:, 30].min() > 0.5 > out[0].probability[:, 60].max()


#: notebook 07's clicks on Chelsea: (row, col) adds the coarse SLIC superpixel there
CAT_CLICKS = [(23, 50), (18, 111), (36, 160), (26, 211), (36, 304), (19, 364), (77, 303), (61, 88), (78, 232),
              (74, 131), (98, 65), (133, 324), (109, 352), (125, 145), (129, 142), (157, 59), (140, 49), (175, 182),
              (175, 85), (219, 297), (207, 84), (211, 42), (220, 118), (246, 335), (233, 186), (264, 72), (276, 263),
              (276, 291), (273, 100), (286, 344), (283, 174), (200, 240), (180, 225), (250, 10), (240, 250)]


def test_multi_level_training_free_methods_get_their_levels() -> None:
    """PFENet's prior (layer 3 + layer 4 of the backbone) and MM-Former's heuristic matching (three levels + SLIC
    proposals) run by name: segment() computes each level they declare."""
    import skimage.data

    from fss_lab.viz.mask_drawing import mask_from_superpixels

    cat = skimage.data.chelsea()  # the support mask of notebook 07 (its CAT_CLICKS); the query: the mirrored photo
    mask = mask_from_superpixels(cat, CAT_CLICKS)
    query, truth = cat[:, ::-1].copy(), mask[:, ::-1]
    prior = fss_lab.segment(cat, mask, query, method="pfenet-prior", device="cpu")[0]
    assert prior.iou(truth) > 0.8, prior.iou(truth)  # 0.87 measured
    matching = fss_lab.segment(cat, mask, query, method="mmformer-heuristic", device="cpu")[0]
    # one SLIC proposal (of 100) is chosen: a part of the cat, inside it
    assert 0 < matching.mask.sum() and (matching.mask & truth).sum() / matching.mask.sum() > 0.8
    assert matching.probability.max() > 0.99  # its [1 - M, M] probabilities are kept, not softmaxed again


@pytest.mark.filterwarnings("ignore:fold 0. classes dropped from the episodes")  # a 12-image toy training split
def test_a_meta_trained_pfenet_learner_segments(support) -> None:
    """A PFENet meta-learner after (two steps of) episodic training on synthetic base classes runs through
    segment() on the backbone it was trained with; before training it is refused (above)."""
    import torch

    from fss_lab.data import PairTransform, TransformedItems, create_dataset
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.methods.pfenet import PFENetMetaLearner
    from fss_lab.models.backbones import create_backbone
    from fss_lab.models.features import FeatureCache, FeatureExtractor

    torch.manual_seed(0)
    bb = create_backbone("efficientnet_lite0", weights=None)
    train = create_dataset("synthetic", split="train", image_size=64, n_images=12)
    pre = bb.preprocessing
    items = TransformedItems(train, PairTransform((64, 64), "resize", tuple(pre.mean), tuple(pre.std)))
    caches = {lv: FeatureCache(FeatureExtractor(bb, (lv,), device="cpu"), items.image) for lv in ("s16", "s32")}
    learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=bb)
    train_episodic(learner, EpisodicConfig(iterations=2, batch_episodes=2, min_area=16, device="cpu"), fold=0,
                   train_items=items, train_features=caches, progress=False)
    img, mask = support
    query, _ = scene(50, 90, (5, 35, 30, 70), 3)
    out = fss_lab.segment(img, mask, [query, img], method=learner, backbone=bb, image_size=SIZE, device="cpu")
    assert [o.mask.shape for o in out] == [(50, 90), (60, 80)]
    assert all(0 <= o.probability.min() <= o.probability.max() <= 1 for o in out)
    assert learner.inputs is not None  # segment() fitted the learner on the support set


def _save_exif_rotated(array: np.ndarray, path: Path) -> None:
    """Save ``array`` as a phone does: pixels stored rotated 90 degrees, EXIF orientation 6 ("rotate 90 clockwise
    to display"), so viewers (and load_image) show ``array`` again."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(array, k=1)))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)


def test_exif_rotated_photos_and_masks_are_segmented_as_displayed(tmp_path: Path, support) -> None:
    img, mask = support  # 60x80 as displayed
    query, truth = scene(70, 50, (30, 65, 5, 40), 5)  # a portrait query as displayed
    _save_exif_rotated(img, tmp_path / "s.png")
    _save_exif_rotated(mask * 255, tmp_path / "s_mask.png")  # a mask saved by the same phone app
    _save_exif_rotated(query, tmp_path / "q.png")
    assert Image.open(tmp_path / "q.png").size == (70, 50)  # stored landscape (W x H), displayed portrait
    from_files = fss_lab.segment(tmp_path / "s.png", tmp_path / "s_mask.png", tmp_path / "q.png",
                                 image_size=(128, 128), device="cpu")[0]
    assert from_files.mask.shape == (70, 50) and from_files.image.shape == (70, 50, 3)
    assert from_files.iou(truth) > 0.5, from_files.iou(truth)
    np.testing.assert_array_equal(from_files.image, query)
    # the mask as an upright array with the EXIF-rotated photo file: sizes agree after the orientation is applied
    mixed = fss_lab.segment(tmp_path / "s.png", mask, query, image_size=(128, 128), device="cpu")[0]
    np.testing.assert_array_equal(mixed.mask, from_files.mask)


def test_more_bad_masks_are_explained(support) -> None:
    img, mask = support
    with pytest.raises(SegmentInputError, match=r"float mask must hold only 0 and 1.*mask > 0.5"):
        load_mask(mask * 0.7)
    with pytest.raises(SegmentInputError, match=r"expected a mask \[H, W\], got shape \(1, 60, 80\)"):
        load_mask(mask[None])  # [1, H, W], e.g. a channel-first tensor
    tiny = np.zeros_like(mask)
    tiny[31, 41] = 1  # one pixel: gone after resizing the 60x80 photo to a 16x16 input
    with pytest.raises(SegmentInputError, match=r"support mask\(s\) \[0\]: the foreground vanishes at the 16x16 input"):
        fss_lab.segment(img, tiny, img, image_size=(16, 16), device="cpu")
    with pytest.raises(SegmentInputError, match="class_id 9 does not occur"):
        load_mask(mask * 3, class_id=9)
