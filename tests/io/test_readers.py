"""Reading image/mask folders and TIFF stacks, and the errors bad input raises."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_keras.io.readers import load_dataset, read_image, read_mask
from unet_keras.io.sample import DataError, Sample

RNG = np.random.default_rng(0)


def write(path: Path, array: np.ndarray) -> Path:
    """Writes an array as PNG (Pillow) or TIFF (tifffile, one page per leading index)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(array).save(path)
    else:
        colour = array.ndim >= 3 and array.shape[-1] in (3, 4)
        tifffile.imwrite(path, array, photometric="rgb" if colour else "minisblack")
    return path


def random_image(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """Returns random pixels covering the dtype's whole range."""
    return RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def binary_mask(shape: tuple[int, int] = (6, 8)) -> np.ndarray:
    """Returns a random {0, 255} uint8 mask."""
    return (RNG.random(shape) > 0.5).astype(np.uint8) * 255


@pytest.mark.parametrize(
    ("suffix", "dtype", "shape"),
    [
        (".png", np.uint8, (6, 8)),
        (".png", np.uint16, (6, 8)),
        (".png", np.uint8, (6, 8, 3)),
        (".tif", np.uint8, (6, 8)),
        (".tif", np.uint16, (6, 8)),
        (".tif", np.uint16, (6, 8, 3)),
        (".tiff", np.float32, (6, 8)),
    ],
)
def test_read_image_keeps_values_and_dtype_as_hwc(tmp_path, suffix, dtype, shape):
    array = random_image(shape, dtype) if dtype != np.float32 else RNG.random(shape, dtype)
    image = read_image(write(tmp_path / f"a{suffix}", array))
    assert image.dtype == dtype
    assert image.shape == (6, 8, 1 if len(shape) == 2 else 3)
    np.testing.assert_array_equal(image.reshape(shape), array)


def test_load_dataset_pairs_folder_by_stem_across_formats(tmp_path):
    images = [random_image((6, 8), np.uint16) for _ in range(3)]
    masks = [binary_mask() for _ in range(3)]
    for stem, image, mask in zip(["10", "2", "1"], images, masks, strict=True):
        write(tmp_path / "images" / f"{stem}.tif", image)
        write(tmp_path / "masks" / f"{stem}.png", mask)
    samples = load_dataset(tmp_path, require_masks=True)
    assert [s.name for s in samples] == ["1.tif", "2.tif", "10.tif"]  # natural order
    for sample, image, mask in zip(samples, images[::-1], masks[::-1], strict=True):
        assert sample.image.shape == (6, 8, 1) and sample.image.dtype == np.uint16
        np.testing.assert_array_equal(sample.image[..., 0], image)
        np.testing.assert_array_equal(sample.mask, mask)


def test_load_dataset_takes_separate_folders_and_ignores_hidden_and_other_files(tmp_path):
    write(tmp_path / "imgs" / "a.png", random_image((6, 8, 3)))
    write(tmp_path / "imgs" / ".a.png", random_image((6, 8)))  # e.g. macOS metadata
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    write(tmp_path / "labels" / "a.tiff", binary_mask())
    samples = load_dataset(tmp_path / "imgs", tmp_path / "labels")
    assert [s.name for s in samples] == ["a.png"]
    assert samples[0].image.shape == (6, 8, 3) and samples[0].mask.shape == (6, 8)


def test_load_dataset_without_masks_gives_unlabelled_samples(tmp_path):
    write(tmp_path / "test" / "images" / "00.png", random_image((6, 8)))
    write(tmp_path / "flat" / "00.png", random_image((6, 8)))
    for path in (tmp_path / "test", tmp_path / "flat"):
        samples = load_dataset(path)
        assert len(samples) == 1 and samples[0].mask is None
    with pytest.raises(DataError, match="no masks found"):
        load_dataset(tmp_path / "test", require_masks=True)


def test_opaque_alpha_is_dropped_but_varying_alpha_is_an_error(tmp_path):
    rgba = random_image((6, 8, 4))
    rgba[..., 3] = 255
    np.testing.assert_array_equal(read_image(write(tmp_path / "a.png", rgba)), rgba[..., :3])
    np.testing.assert_array_equal(read_image(write(tmp_path / "a.tif", rgba)), rgba[..., :3])
    rgba[0, 0, 3] = 0
    with pytest.raises(DataError, match=r"b\.png: the alpha channel varies"):
        read_image(write(tmp_path / "b.png", rgba))


def test_read_mask_accepts_grey_rgb_palette_and_bilevel(tmp_path):
    mask = binary_mask()
    rgb = np.repeat(mask[..., None], 3, axis=-1)
    np.testing.assert_array_equal(read_mask(write(tmp_path / "rgb.png", rgb)), mask)
    palette = Image.fromarray(mask // 255).convert("P")  # indices 0/1, as VOC masks store them
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), mask // 255)
    Image.fromarray(mask > 0).save(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bilevel.png"), mask)


def test_colour_mask_is_an_error(tmp_path):
    rgb = random_image((6, 8, 3))
    with pytest.raises(DataError, match=r"c\.png: a colour mask with 3 differing channels"):
        read_mask(write(tmp_path / "c.png", rgb))


def test_16_bit_colour_png_is_an_error_not_a_silent_8_bit_read(tmp_path):
    array = random_image((4, 5, 3), np.uint16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)  # 16-bit truecolour
    (tmp_path / "rgb16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(DataError, match="16-bit colour PNG"):
        read_image(tmp_path / "rgb16.png")


def test_isbi_style_stack_with_labels_found_beside_it(tmp_path):
    volume = random_image((5, 6, 8))
    labels = np.stack([binary_mask() for _ in range(5)])
    write(tmp_path / "train-volume.tif", volume)
    write(tmp_path / "train-labels.tif", labels)
    samples = load_dataset(tmp_path / "train-volume.tif", require_masks=True)
    assert [s.name for s in samples] == [f"train-volume.tif[0{i}]" for i in range(5)]
    np.testing.assert_array_equal(np.stack([s.image[..., 0] for s in samples]), volume)
    np.testing.assert_array_equal(np.stack([s.mask for s in samples]), labels)


def test_stack_with_explicit_labels_rgb_pages_or_no_labels(tmp_path):
    volume = random_image((3, 6, 8, 3), np.uint16)
    write(tmp_path / "vol.tif", volume)
    write(tmp_path / "lab.tif", np.stack([binary_mask() for _ in range(3)]))
    samples = load_dataset(tmp_path / "vol.tif", tmp_path / "lab.tif")
    assert samples[2].name == "vol.tif[02]" and samples[2].mask.shape == (6, 8)
    np.testing.assert_array_equal(samples[2].image, volume[2])
    write(tmp_path / "test-volume.tif", volume)
    assert all(s.mask is None for s in load_dataset(tmp_path / "test-volume.tif"))


def test_single_image_file_loads_as_one_sample(tmp_path):
    image = write(tmp_path / "one.png", random_image((6, 8)))
    mask = write(tmp_path / "one_mask.tif", binary_mask())
    [sample] = load_dataset(image, mask)
    assert sample.name == "one.png" and sample.mask.shape == (6, 8)


def test_read_image_on_a_stack_points_to_load_dataset(tmp_path):
    path = write(tmp_path / "s.tif", random_image((3, 6, 8)))
    with pytest.raises(DataError, match=r"stack of 3 pages.*load_dataset"):
        read_image(path)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        load_dataset(tmp_path / "nowhere")
    write(tmp_path / "images" / "a.png", random_image((6, 8)))
    with pytest.raises(DataError, match=r"missing: no such folder"):
        load_dataset(tmp_path / "images", tmp_path / "missing")
    write(tmp_path / "v.tif", random_image((2, 6, 8)))
    with pytest.raises(DataError, match=r"l\.tif: no such file"):
        load_dataset(tmp_path / "v.tif", tmp_path / "l.tif")


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"images: no image files"):
        load_dataset(tmp_path)


def test_unpaired_files_are_listed_on_both_sides(tmp_path):
    for stem in ("a", "b"):
        write(tmp_path / "images" / f"{stem}.png", random_image((6, 8)))
    for stem in ("b", "c"):
        write(tmp_path / "masks" / f"{stem}.png", binary_mask())
    with pytest.raises(DataError, match=r"images without a mask: a\.png; masks without an "):
        load_dataset(tmp_path)


def test_two_files_with_one_stem_are_an_error(tmp_path):
    write(tmp_path / "images" / "a.png", random_image((6, 8)))
    write(tmp_path / "images" / "a.tif", random_image((6, 8)))
    with pytest.raises(DataError, match="share the stem 'a'"):
        load_dataset(tmp_path)


def test_image_and_mask_of_different_sizes_name_both(tmp_path):
    write(tmp_path / "images" / "a.png", random_image((6, 8)))
    write(tmp_path / "masks" / "a.png", binary_mask((6, 9)))
    with pytest.raises(DataError, match=r"images/a\.png is 6 x 8 but its mask .*masks/a\.png"):
        load_dataset(tmp_path)


def test_stack_page_counts_and_sizes_must_match(tmp_path):
    write(tmp_path / "v.tif", random_image((3, 6, 8)))
    write(tmp_path / "two.tif", np.stack([binary_mask() for _ in range(2)]))
    write(tmp_path / "big.tif", np.stack([binary_mask((7, 8)) for _ in range(3)]))
    with pytest.raises(DataError, match=r"v\.tif holds 3 pages but .*two\.tif holds 2"):
        load_dataset(tmp_path / "v.tif", tmp_path / "two.tif")
    with pytest.raises(DataError, match=r"is 6 x 8 but its mask .*big\.tif is 7 x 8"):
        load_dataset(tmp_path / "v.tif", tmp_path / "big.tif")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_truncated_file_is_named(tmp_path, suffix):
    path = write(tmp_path / f"images/a{suffix}", random_image((64, 64)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"a\{suffix}: cannot read it .*truncated or corrupt"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (random_image((6, 8, 3)), "3-channel uint8 but .*a.png is 1-channel uint8"),
        (random_image((6, 8), np.uint16), "1-channel uint16 but .*a.png is 1-channel uint8"),
    ],
)
def test_mixed_channels_or_dtypes_are_an_error(tmp_path, second, message):
    write(tmp_path / "a.png", random_image((6, 8)))
    write(tmp_path / "b.png", second)
    with pytest.raises(DataError, match=rf"b\.png is {message}"):
        load_dataset(tmp_path)


def test_sample_checks_its_shapes():
    with pytest.raises(DataError, match="sample x: image must be"):
        Sample("x", np.zeros((4, 4)))
    with pytest.raises(DataError, match="sample y: mask must be"):
        Sample("y", np.zeros((4, 4, 1)), np.zeros((4, 5)))


def test_palette_image_reads_as_its_colours(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:3] = (200, 30, 90)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(
        tmp_path / "p.png"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), rgb)


def test_every_problem_of_a_data_set_is_named_at_once(tmp_path):
    write(tmp_path / "images" / "a.png", random_image((6, 8)))
    write(tmp_path / "masks" / "a.png", binary_mask())
    write(tmp_path / "images" / "lonely.png", random_image((6, 8)))
    write(tmp_path / "images" / "cut.png", random_image((6, 8)))
    write(tmp_path / "masks" / "cut.png", binary_mask())
    (tmp_path / "images" / "cut.png").write_bytes(
        (tmp_path / "images" / "cut.png").read_bytes()[:40]
    )
    write(tmp_path / "images" / "odd.png", random_image((6, 8)))
    write(tmp_path / "masks" / "odd.png", binary_mask((5, 8)))
    with pytest.raises(DataError) as raised:
        load_dataset(tmp_path, require_masks=True)
    message = str(raised.value)
    assert message.startswith("the data set has 3 problems:")
    assert "lonely.png" in message and "cut.png: cannot read it" in message
    assert "odd.png" in message and "5 x 8" in message


def test_a_tiff_that_claims_gigapixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.tif"
    # A small compressed TIFF whose header then claims 30000 x 30000 pixels.
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(30000)
        tif.pages[0].tags["ImageLength"].overwrite(30000)
    assert path.stat().st_size < 1024
    with pytest.raises(DataError, match=r"bomb\.tif: pages of 30000 x 30000 pixels, more than"):
        read_image(path)
