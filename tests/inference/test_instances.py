"""Labelled objects from class maps: components, watershed at necks, linking sections."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import instance_labels, label_objects, link_sections


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_cc_numbers_each_class_apart_and_leaves_boundary_zero():
    classes = np.zeros((20, 30), np.int32)
    classes[2:8, 2:8] = 1
    classes[2:8, 8:14] = 2  # touches the class-1 square: still another object
    classes[12:18, 2:8] = 1
    objects = instance_labels(classes)
    assert objects.dtype == np.uint32
    assert set(np.unique(objects)) == {0, 1, 2, 3}
    assert (objects[classes == 0] == 0).all()
    assert len(np.unique(objects[2:8, 2:8])) == 1
    assert objects[3, 3] != objects[3, 10] and objects[3, 3] != objects[14, 3]


def test_cc_is_four_connected():
    classes = np.eye(5, dtype=np.int32)  # a diagonal: no two pixels share an edge
    assert instance_labels(classes).max() == 5


def test_watershed_cuts_two_cells_joined_by_a_membrane_gap():
    """Two discs joined by a 3 px neck (a gap in the predicted membrane): cc sees one
    object, watershed two, each holding one disc."""
    shape = (60, 100)
    cells = disc(shape, (30, 25), 18) | disc(shape, (30, 75), 18)
    cells[29:32, 25:75] = True
    classes = cells.astype(np.int32)
    assert instance_labels(classes, "cc").max() == 1
    objects = instance_labels(classes, "watershed", seed_height=2.0)
    assert objects.max() == 2
    assert objects[30, 25] != objects[30, 75]
    assert (objects > 0).sum() == cells.sum()  # every cell pixel keeps an object


def test_watershed_keeps_cells_too_small_to_seed_and_drops_fragments():
    classes = np.zeros((40, 40), np.int32)
    classes[5:7, 5:30] = 1  # a thin cell: its distance map never rises 2 px
    classes[20:35, 20:35] = 1
    objects = instance_labels(classes, "watershed", seed_height=2.0, min_size=16)
    assert objects.max() == 2  # the thin cell is its own seed, not lost
    isolated = np.zeros((40, 40), np.int32)
    isolated[2:4, 2:4] = 1  # 4 px alone: below min_size, with no neighbour to join
    assert instance_labels(isolated, "watershed", min_size=16).max() == 0


def test_label_objects_follows_the_config():
    classes = np.zeros((60, 100), np.int32)
    classes[disc((60, 100), (30, 25), 18) | disc((60, 100), (30, 75), 18)] = 1
    classes[29:32, 25:75] = 1
    assert label_objects(classes, InstanceConfig()).max() == 1  # default: cc
    watershed = InstanceConfig(instances="watershed", seed_height=4.0)
    assert label_objects(classes, watershed).max() == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: instance_labels(np.zeros((2, 2, 2), int)), "(H, W)"),
        (lambda: instance_labels(np.zeros((2, 2))), "integer class indices"),
        (lambda: instance_labels(np.zeros((2, 2), int), "flood"), "one of"),
        (lambda: link_sections(np.zeros((2, 2), int)), "(N, H, W)"),
        (lambda: link_sections(-np.ones((2, 2, 2), int)), "non-negative"),
        (lambda: link_sections(np.zeros((2, 2, 2), int), 0.0), "min_overlap"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def synthetic_stack(seed=0, sections=12, shape=(128, 128), count=14):
    """Known 3D objects: cylinders drifting slowly across sections, some starting or
    ending inside the stack, separated by at least 4 px of background."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((sections, *shape), np.int32)
    placed = 0
    while placed < count:
        radius = rng.integers(6, 11)
        start = rng.integers(0, sections // 2)
        stop = rng.integers(start + 2, sections + 1)
        centre = rng.uniform(radius + 2, np.array(shape) - radius - 2 - stop)
        drift = rng.uniform(-0.8, 0.8, 2)
        body = np.zeros_like(truth, bool)
        for z in range(start, stop):
            body[z] = disc(shape, centre + drift * (z - start), radius)
        grown = ndi.binary_dilation(body, np.ones((1, 9, 9), bool))
        if (truth[grown] > 0).any():
            continue
        placed += 1
        truth[body] = placed
    return truth


def test_linking_recovers_every_known_3d_object():
    truth = synthetic_stack()
    per_section = np.stack([instance_labels((section > 0).astype(np.int32)) for section in truth])
    assert per_section.max() < truth.max() * truth.shape[0]  # numbered per section
    linked = link_sections(per_section, min_overlap=0.5)
    # Object-level accuracy: a one-to-one map between true and linked objects.
    pairs = {(int(t), int(p)) for t, p in zip(truth.ravel(), linked.ravel(), strict=True)}
    assert len(pairs) == truth.max() + 1
    assert len({t for t, _ in pairs}) == len({p for _, p in pairs}) == truth.max() + 1
    assert (linked[truth == 0] == 0).all()
    assert linked.dtype == np.uint32 and set(np.unique(linked)) == set(range(truth.max() + 1))


def test_linking_needs_the_overlap_fraction():
    sections = np.zeros((2, 10, 10), np.int32)
    sections[0, 0:4, 0:4] = 1  # 16 px
    sections[1, 2:6, 2:6] = 1  # shares 4 px: a quarter of either
    assert link_sections(sections, min_overlap=0.25).max() == 1
    assert link_sections(sections, min_overlap=0.3).max() == 2


def test_linking_follows_branches_and_empty_sections():
    sections = np.zeros((3, 10, 10), np.int32)
    sections[0, 2:8, 2:8] = 1
    sections[1, 2:5, 2:8], sections[1, 5:8, 2:8] = 1, 2  # the object branches in two
    linked = link_sections(sections, 0.5)
    assert linked.max() == 1 and (linked[2] == 0).all()
