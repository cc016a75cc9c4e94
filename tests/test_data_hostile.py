"""A hostile pass over files and folders a user really has (docs/reliability.md lists each case, what
happens and why): every case ends in the right pixels / labels or a one-line error naming the fix.

Each case is a function ``case(tmp_path)`` that builds tiny files and asserts; they run as
``test_hostile[name]``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ebmlens.data import CIFAR10_CLASSES, as_image_data, imagenet_wnids, load_data, require_labels

CIFAR = SimpleNamespace(class_names=CIFAR10_CLASSES, num_classes=10)
RNG = np.random.default_rng(0)
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _one(root, img: Image.Image, name="cat/0.png", **save):
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    img.save(p, **save)
    return p


def _read(root):
    """The decoded pixels of a one-class folder, mapped to CIFAR-10."""
    return load_data(f"folder:{root}", classes=CIFAR10_CLASSES)


def _rgb(h=6, w=5):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _fails(match, fn, *a, **kw):
    with pytest.raises(ValueError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)  # one line
    return e


# ------------------------------------------------------------------ image files
@case
def png_alpha_is_composited_on_black(tmp):
    rgba = np.dstack([_rgb(), np.array([[0, 128, 255, 255, 255]] * 6, np.uint8)])
    _one(tmp, Image.fromarray(rgba, "RGBA"))
    want = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    assert np.array_equal(_read(tmp).images[0], want) and _read(tmp).images[0, :, 0].max() == 0


@case
def png_opaque_alpha_equals_rgb(tmp):
    rgb = _rgb()
    _one(tmp, Image.fromarray(np.dstack([rgb, np.full((6, 5), 255, np.uint8)]), "RGBA"))
    assert np.array_equal(_read(tmp).images[0], rgb)


@case
def png_16bit_grayscale_scaled_by_65535(tmp):
    a = np.array([[0, 257, 65535, 32768]] * 3, np.uint16)
    _one(tmp, Image.fromarray(a))
    assert _read(tmp).images[0, 0, :, 0].tolist() == [0, 1, 255, 128] and _read(tmp).image_shape == (3, 4, 3)


@case
def jpeg_grayscale_becomes_three_equal_channels(tmp):
    _one(tmp, Image.fromarray(_rgb()[..., 0]), "cat/0.jpg", quality=100)
    x = _read(tmp).images[0]
    assert x.shape == (6, 5, 3) and (x[..., 0] == x[..., 2]).all()


@case
def jpeg_cmyk_converted_to_rgb(tmp):
    _one(tmp, Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "cat/0.jpg", quality=100)  # pure red in CMYK
    x = _read(tmp).images[0].astype(int)
    assert x.shape == (4, 4, 3) and x[..., 0].min() > 240 and x[..., 1:].max() < 15


@case
def jpeg_exif_orientation_is_honoured(tmp):
    im = Image.fromarray(np.zeros((4, 8, 3), np.uint8))  # stored 8 wide, 4 tall
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    _one(tmp, im, "cat/0.jpg", exif=exif.tobytes())
    assert _read(tmp).image_shape == (8, 4, 3)  # shown 4 wide, 8 tall


@case
def png_palette_gives_its_colours(tmp):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (10, 200, 30)
    _one(tmp, Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4))
    assert _read(tmp).images[0, 0, 0].tolist() == [10, 200, 30]


@case
def png_palette_transparency_is_composited(tmp):
    im = Image.fromarray(np.full((2, 2, 3), 200, np.uint8)).convert("P")
    im.info["transparency"] = im.getpixel((0, 0))
    _one(tmp, im, transparency=im.getpixel((0, 0)))
    assert _read(tmp).images.max() == 0


@case
def png_gray_alpha_is_composited(tmp):
    la = np.dstack([np.full((2, 2), 200, np.uint8), np.array([[0, 255], [255, 255]], np.uint8)])
    _one(tmp, Image.fromarray(la, "LA"))
    assert _read(tmp).images[0, :, :, 1].tolist() == [[0, 200], [200, 200]]


@case
def uppercase_extensions_are_images(tmp):
    _one(tmp, Image.fromarray(_rgb()), "cat/A.PNG")
    _one(tmp, Image.fromarray(_rgb()), "cat/B.JPG")
    assert len(_read(tmp)) == 2


@case
def non_image_with_image_extension_is_named(tmp):
    (tmp / "cat").mkdir()
    (tmp / "cat" / "notes.jpg").write_text("hello")
    _fails(r"cannot decode image .*notes\.jpg .*remove or replace that file", _read, tmp)


@case
def truncated_jpeg_is_named(tmp):
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp / "cat").mkdir()
    (tmp / "cat" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _fails(r"cannot decode image .*cut\.jpg .*truncated", _read, tmp)


@case
def decompression_bomb_is_refused_with_the_fix(tmp, monkeypatch=None):
    _one(tmp, Image.fromarray(np.zeros((40, 40, 3), np.uint8)))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # a "huge" image: more than 2x the limit
    try:
        _fails(r"0\.png.*resize it, or raise PIL\.Image\.MAX_IMAGE_PIXELS", _read, tmp)
    finally:
        Image.MAX_IMAGE_PIXELS = old


@case
def tiny_one_pixel_images_read(tmp):
    _one(tmp, Image.fromarray(np.full((1, 1, 3), 9, np.uint8)))
    assert _read(tmp).images.tolist() == [[[[9, 9, 9]]]]


@case
def mixed_sizes_are_refused_with_the_fix(tmp):
    _one(tmp, Image.fromarray(_rgb(32, 32)), "cat/a.png")
    _one(tmp, Image.fromarray(_rgb(1, 1)), "cat/b.png")
    _fails("different sizes .*resize them to one size first", _read, tmp)


@case
def float_tiff_goes_through_the_pixel_contract(tmp):
    _one(tmp, Image.fromarray(np.full((2, 2), 0.5, np.float32), "F"), "cat/0.tif")
    assert _read(tmp).images[0, 0, 0].tolist() == [128, 128, 128]
    _one(tmp, Image.fromarray(np.full((2, 2), 200.0, np.float32), "F"), "cat/0.tif")
    _fails(r"0\.tif: float images must be in \[0, 1\].*x / 255", _read, tmp)


# ------------------------------------------------------------------ folders
@case
def symlink_to_file_is_followed(tmp):
    src = _one(tmp / "elsewhere", Image.fromarray(_rgb()), "x.png")
    (tmp / "set" / "cat").mkdir(parents=True)
    os.symlink(src, tmp / "set" / "cat" / "x.png")
    assert len(_read(tmp / "set")) == 1


@case
def symlink_to_class_folder_is_followed(tmp):
    _one(tmp / "elsewhere", Image.fromarray(_rgb()), "dog/x.png")
    (tmp / "set").mkdir()
    os.symlink(tmp / "elsewhere" / "dog", tmp / "set" / "dog")
    assert _read(tmp / "set").labels.tolist() == [5]


@case
def dangling_symlink_is_named(tmp):
    (tmp / "cat").mkdir()
    os.symlink(tmp / "gone.png", tmp / "cat" / "x.png")
    _fails(r"x\.png is a broken symbolic link .*remove it or fix its target", _read, tmp)


@case
def class_folders_with_spaces_and_case_match(tmp):
    from ebmlens.data import CIFAR100_CLASSES

    _one(tmp, Image.fromarray(_rgb()), "Pickup Truck/0.png")
    _one(tmp, Image.fromarray(_rgb()), "MAPLE-TREE/0.png")
    d = load_data(f"folder:{tmp}", classes=CIFAR100_CLASSES)
    assert sorted(d.labels.tolist()) == sorted([CIFAR100_CLASSES.index("pickup_truck"),
                                                CIFAR100_CLASSES.index("maple_tree")])


@case
def hidden_files_and_os_junk_are_skipped(tmp):
    _one(tmp, Image.fromarray(_rgb()))
    (tmp / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp / "cat" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS AppleDouble: an image extension, not an image
    _one(tmp, Image.fromarray(_rgb()), ".ipynb_checkpoints/0.png")
    d = _read(tmp)
    assert len(d) == 1 and d.labels.tolist() == [3]


@case
def hidden_members_of_tar_archives_are_skipped(tmp):
    import tarfile

    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    with tarfile.open(tmp / "a.tar", "w") as tar:
        for name, data in (("test/cat/0.png", buf.getvalue()), ("test/cat/._0.png", b"\0\5\26\7"),
                           ("test/.hidden/1.png", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert load_data(f"cifar10:{tmp / 'a.tar'}@test").labels.tolist() == [3]
    assert require_labels(load_data(f"folder:{tmp / 'a.tar'}"), "x", CIFAR).labels.tolist() == [3]


@case
def empty_class_folders_are_skipped(tmp):
    _one(tmp, Image.fromarray(_rgb()))
    (tmp / "dog").mkdir()
    assert _read(tmp).labels.tolist() == [3]


@case
def images_beside_class_folders_are_refused(tmp):
    _one(tmp, Image.fromarray(_rgb()))
    _one(tmp, Image.fromarray(_rgb()), "stray.png")
    _fails(r"class folders and also 1 image\(s\) outside them \(stray\.png.*move them", _read, tmp)


@case
def flat_folder_is_unlabeled(tmp):
    _one(tmp, Image.fromarray(_rgb()), "a.png")
    d = load_data(f"folder:{tmp}")
    assert not d.labeled and len(d) == 1
    _fails("accuracy needs class labels", require_labels, d, "accuracy", CIFAR)


@case
def unknown_folder_names_list_close_matches(tmp):
    _one(tmp, Image.fromarray(_rgb()), "automobiles/0.png")
    _fails(r"'automobiles' \(close: automobile.*--class-map", _read, tmp)


@case
def class_map_json_that_is_not_an_object_is_refused(tmp):
    _one(tmp, Image.fromarray(_rgb()), "kitty/0.png")
    (tmp / "m.json").write_text(json.dumps(["cat"]))
    _fails(r"must be a JSON object", load_data, f"folder:{tmp}?class_map={tmp / 'm.json'}", classes=CIFAR10_CLASSES)


@case
def class_map_to_a_missing_class_is_refused(tmp):
    _one(tmp, Image.fromarray(_rgb()), "kitty/0.png")
    _fails(r"sends folder 'kitty' to 'kat'.*close: cat", load_data, f"folder:{tmp}", classes=CIFAR10_CLASSES,
           class_map={"kitty": "kat"})


@case
def class_map_indices_without_a_model(tmp):
    _one(tmp, Image.fromarray(_rgb()), "kitty/0.png")
    _one(tmp, Image.fromarray(_rgb()), "dog/0.png")
    d = require_labels(load_data(f"folder:{tmp}", class_map={"kitty": 3, "dog": 5}), "class_stats")
    assert d.labels.tolist() == [5, 3]  # folders sorted: dog, kitty


@case
def imagenet_wnid_folders_map_through_the_table(tmp):
    names = [f"class{i}" for i in range(1000)]
    wn = imagenet_wnids()
    _one(tmp, Image.fromarray(_rgb()), f"{wn[281]}/0.png")
    assert load_data(f"folder:{tmp}", classes=names).labels.tolist() == [281]


# ------------------------------------------------------------------ npz arrays
def _npz(tmp, name="a.npz", **arrays):
    np.savez(tmp / name, **arrays)
    return f"npz:{tmp / name}"


U8 = RNG.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)


@case
def npz_extra_keys_are_ignored(tmp):
    d = load_data(_npz(tmp, images=U8, labels=[0, 1, 2], logits=np.zeros((3, 10)), meta=np.array("x")))
    assert np.array_equal(d.images, U8) and d.labels.tolist() == [0, 1, 2]


@case
def npz_nchw_uint8_is_transposed(tmp):
    assert np.array_equal(load_data(_npz(tmp, images=U8.transpose(0, 3, 1, 2), labels=[0, 1, 2])).images, U8)


@case
def npz_ambiguous_layout_asks_for_layout_option(tmp):
    x = RNG.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    spec = _npz(tmp, images=x, labels=[0, 1])
    _fails(r"could be \(N, H, W, C\) or \(N, C, H, W\); add \?layout=nhwc", load_data, spec)
    assert np.array_equal(load_data(spec + "?layout=nhwc").images, x)
    assert np.array_equal(load_data(spec + "?layout=nchw").images, x.transpose(0, 2, 3, 1))


@case
def npz_one_channel_and_grayscale(tmp):
    assert load_data(_npz(tmp, images=U8[..., :1], labels=[0, 1, 2])).image_shape == (4, 5, 1)
    assert load_data(_npz(tmp, "g.npz", images=U8[..., 0], labels=[0, 1, 2])).image_shape == (4, 5, 1)


@case
def npz_rgba_asks_to_drop_alpha(tmp):
    x = RNG.integers(0, 256, (2, 8, 8, 4), dtype=np.uint8)
    _fails(r"drop the alpha channel \(x\[\.\.\., :3\]\)", load_data, _npz(tmp, images=x, labels=[0, 1]))


@case
def npz_float_labels_whole_numbers_accepted(tmp):
    assert load_data(_npz(tmp, images=U8, labels=np.array([0.0, 2.0, 1.0]))).labels.tolist() == [0, 2, 1]
    _fails(r"labels are floats that are not whole numbers \(e\.g\. 1\.5\)", load_data,
           _npz(tmp, "b.npz", images=U8, labels=np.array([0.0, 1.5, 1.0])))


@case
def npz_labels_column_vector_accepted(tmp):
    assert load_data(_npz(tmp, images=U8, labels=np.array([[1], [0], [1]]))).labels.tolist() == [1, 0, 1]


@case
def npz_labels_wrong_length(tmp):
    _fails(r"\(2,\) labels for 3 images", load_data, _npz(tmp, images=U8, labels=[0, 1]))


@case
def npz_negative_labels(tmp):
    _fails(r"labels hold -1 .*\?unlabeled", load_data, _npz(tmp, images=U8, labels=[0, -1, 1]))


@case
def npz_labels_beyond_class_names(tmp):
    _fails(r"labels go up to 5 but class_names has 2 names", load_data,
           _npz(tmp, images=U8, labels=[0, 5, 1], class_names=np.array(["a", "b"])))


@case
def npz_object_arrays_are_never_unpickled(tmp):
    np.savez(tmp / "o.npz", images=np.array([U8[0], None], dtype=object), labels=[0, 1])
    _fails(r"object \(pickled\) arrays, which are never loaded", load_data, f"npz:{tmp / 'o.npz'}")


@case
def npz_float16_and_float64_read(tmp):
    x = U8.transpose(0, 3, 1, 2) / 255.0
    for dt in (np.float16, np.float64):
        d = load_data(_npz(tmp, f"{dt.__name__}.npz", images=x.astype(dt), labels=[0, 1, 2]))
        assert np.abs(d.images.astype(int) - U8).max() <= 1


@case
def npz_uint16_and_int64_refused_with_the_fix(tmp):
    _fails(r"uint16, which is not read .*x / 65535", load_data,
           _npz(tmp, images=U8.astype(np.uint16) * 257, labels=[0, 1, 2]))
    _fails(r"int64, which is not read .*x\.astype\(np\.uint8\)", load_data,
           _npz(tmp, "i.npz", images=U8.astype(np.int64), labels=[0, 1, 2]))
    _fails(r"bool, which is not read", load_data, _npz(tmp, "b.npz", images=U8 > 100, labels=[0, 1, 2]))


@case
def npz_float_0_255_names_x_over_255(tmp):
    _fails(r"a\.npz: float images must be in \[0, 1\] but hold values in \[.*\]; if they are 0-255 values use x / 255",
           load_data, _npz(tmp, images=U8.astype(np.float32), labels=[0, 1, 2]))


@case
def npz_infinity_refused(tmp):
    x = U8 / 255.0
    x[1, 0, 0, 0] = np.inf
    _fails(r"1 pixel value\(s\) are NaN or infinite", load_data, _npz(tmp, images=x, labels=[0, 1, 2]))


@case
def npz_small_negative_overshoot_clamped_with_warning(tmp, caplog=None):
    x = U8 / 255.0
    x[0, 0, 0, 0] = -0.0004
    d = load_data(_npz(tmp, images=x, labels=[0, 1, 2]))
    assert d.images[0, 0, 0, 0] == 0 and np.array_equal(d.images[1:], U8[1:])


@case
def not_an_npz_is_named(tmp):
    (tmp / "junk.npz").write_bytes(b"PK\3\4 not really a zip")
    _fails(r"junk\.npz is not a readable \.npz .*np\.savez", load_data, f"npz:{tmp / 'junk.npz'}")


@case
def unknown_spec_option_lists_the_options(tmp):
    _fails(r"unknown option 'unlabelled'.*\?unlabeled", load_data,
           _npz(tmp, images=U8, labels=[0, 1, 2]) + "?unlabelled")


@case
def labels_beyond_the_models_classes_refused_by_consumer(tmp):
    d = load_data(_npz(tmp, images=U8, labels=[0, 12, 1]))
    _fails(r"labels in \[0, 12\] but the model has 10 classes", require_labels, d, "calibration", CIFAR)


@case
def tensor_without_labels_refused_where_labels_needed(tmp):
    d = as_image_data(np.zeros((2, 3, 4, 4), np.float32), "x")
    _fails("train needs class labels", require_labels, d, "train")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile(name, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "in"
    root.mkdir()
    with caplog.at_level(logging.WARNING, logger="ebmlens.data"):
        CASES[name](root)
    if name == "npz_small_negative_overshoot_clamped_with_warning":
        assert "clamped" in caplog.text


def test_hostile_pass_has_at_least_30_cases():
    assert len(CASES) >= 30
