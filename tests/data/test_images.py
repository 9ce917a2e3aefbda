"""load_image: every image kind is built here with Pillow and must come out as faithful 8-bit RGB."""

import io

import numpy as np
import pytest
from PIL import Image

from mstar_fast.data import ImageError, check_image, load_image
from mstar_fast.data.images import MAX_PIXELS


def _encode(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _px(im, xy=(0, 0)):
    return im.getpixel(xy)


def _check_rgb(im):
    assert isinstance(im, Image.Image) and im.mode == "RGB"


@pytest.mark.parametrize("how", ["path", "bytes", "pil"])
def test_rgb_passes_through_from_every_source(tmp_path, how):
    src = Image.new("RGB", (4, 3), (10, 20, 30))
    data = _encode(src)
    (tmp_path / "a.png").write_bytes(data)
    arg = {"path": str(tmp_path / "a.png"), "bytes": data, "pil": Image.open(io.BytesIO(data))}[how]
    out = load_image(arg)
    _check_rgb(out)
    assert out.size == (4, 3) and _px(out) == (10, 20, 30)


def test_path_like_and_file_is_closed(tmp_path):
    (tmp_path / "a.png").write_bytes(_encode(Image.new("RGB", (2, 2), (1, 2, 3))))
    out = load_image(tmp_path / "a.png")
    (tmp_path / "a.png").unlink()  # the result holds no file handle and no lazy decode
    assert _px(out) == (1, 2, 3)


def test_transparent_rgba_composited_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black: the common diagram background
    im.putpixel((1, 1), (0, 0, 0, 255))            # an opaque black stroke
    im.putpixel((2, 2), (255, 0, 0, 128))          # half-transparent red
    out = load_image(_encode(im))
    _check_rgb(out)
    assert _px(out) == (255, 255, 255)
    assert _px(out, (1, 1)) == (0, 0, 0)
    r, g, b = _px(out, (2, 2))
    assert r == 255 and 125 <= g <= 129 and g == b


def test_transparent_la_composited_on_white():
    im = Image.new("LA", (3, 3), (0, 0))
    im.putpixel((1, 1), (50, 255))
    out = load_image(_encode(im))
    assert _px(out) == (255, 255, 255) and _px(out, (1, 1)) == (50, 50, 50)


def test_palette_with_transparent_index_composited_on_white():
    im = Image.new("P", (3, 3), 0)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0] * (254 * 3))
    im.putpixel((1, 1), 1)
    data = _encode(im, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_image(data)
    assert _px(out) == (255, 255, 255) and _px(out, (1, 1)) == (200, 10, 10)


def test_palette_without_transparency_converts_faithfully():
    im = Image.new("P", (2, 1), 0)
    im.putpalette([12, 34, 56, 200, 100, 0] + [0] * (254 * 3))
    im.putpixel((1, 0), 1)
    out = load_image(_encode(im))
    assert _px(out) == (12, 34, 56) and _px(out, (1, 0)) == (200, 100, 0)


def test_grayscale_with_transparent_value():
    im = Image.new("L", (2, 1), 0)
    im.putpixel((1, 0), 90)
    out = load_image(_encode(im, transparency=0))
    assert _px(out) == (255, 255, 255) and _px(out, (1, 0)) == (90, 90, 90)


def test_exif_orientation_applied():
    im = Image.new("RGB", (32, 16), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 8, 8))  # red block top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (16, 32)  # portrait once rotated
    r, g, b = _px(out, (12, 3))  # the block is now top-right
    assert r > 200 and b < 60
    r, g, b = _px(out, (3, 3))
    assert b > 200 and r < 60
    assert Image.open(io.BytesIO(data)).size == (32, 16)  # the raw file is landscape


def test_16bit_grayscale_scaled_not_clipped():
    ramp = (np.arange(16, dtype=np.uint16) * 4369).reshape(4, 4)  # 0, 4369, ..., 65535
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    data = _encode(im)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert len(np.unique(out[..., 0])) == 16  # 16 levels kept (clipping would give 2)
    np.testing.assert_array_equal(out[..., 0].ravel(), np.arange(16) * 17)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_int_and_float_modes():
    a = np.array([[0, 1000], [30000, 65535]], dtype=np.int32)
    out = np.asarray(load_image(Image.fromarray(a, "I")))[..., 0]
    np.testing.assert_array_equal(out, [[0, 4], [117, 255]])
    small = np.array([[0, 7], [128, 255]], dtype=np.int32)  # 8-bit values in an I container: kept
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(small, "I")))[..., 0], small)
    f = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(f, "F")))[..., 0], [[0, 128], [255, 64]])
    f2 = np.array([[-5.0, 12.4], [300.0, float("nan")]], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(f2, "F")))[..., 0], [[0, 12], [255, 0]])


def test_cmyk_jpeg_and_tiff_convert():
    im = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    for fmt in ("TIFF", "JPEG"):
        out = load_image(_encode(im, fmt))
        r, g, b = _px(out)
        assert r > 240 and g < 20 and b < 20, (fmt, (r, g, b))
    white = load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))
    assert _px(white) == (255, 255, 255)


def test_grayscale_and_bilevel_and_ycbcr():
    assert _px(load_image(_encode(Image.new("L", (2, 2), 77)))) == (77, 77, 77)
    assert _px(load_image(_encode(Image.new("1", (2, 2), 1)))) == (255, 255, 255)
    ycc = Image.new("RGB", (2, 2), (0, 128, 0)).convert("YCbCr")
    r, g, b = _px(load_image(ycc))
    assert g > 120 and r < 10 and b < 10


def test_multi_frame_gif_gives_first_frame():
    frames = [Image.new("RGB", (2, 2), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, g, b = _px(load_image(buf.getvalue()))
    assert r > 240 and g < 20


def test_input_pil_image_is_not_modified():
    im = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    out = load_image(im)
    assert im.mode == "RGBA" and _px(im) == (0, 0, 0, 0) and _px(out) == (255, 255, 255)


def test_truncated_image_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    cut = data[: len(data) // 2]
    (tmp_path / "cut.png").write_bytes(cut)
    with pytest.raises(ImageError, match=r"cut\.png.*truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        check_image(cut)
    jpg = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        check_image(jpg[: len(jpg) // 2])
    assert check_image(jpg) == (64, 64) and check_image(data) == (64, 64)


def test_not_an_image_and_missing_and_bad_type(tmp_path):
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"hello")
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="expected a path, bytes or a PIL image"):
        load_image(12)  # type: ignore[arg-type]
    assert issubclass(ImageError, ValueError)


def test_decompression_bomb_refused():
    # A 1-bit PNG of 20000 x 20000 is a few kB on disk and 1.2 GB as RGB.
    data = _encode(Image.new("1", (20000, 20000), 0), optimize=True)
    assert len(data) < 200_000 and 20000 * 20000 > MAX_PIXELS
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data)
    with pytest.raises(ImageError, match="decompression bomb"):
        check_image(data)
    small = _encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="more than the limit of 5000"):
        load_image(small, max_pixels=5000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)


def test_model_inputs_load_through_load_image(tmp_path):
    from mstar_fast.models import load_images

    im = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    im.putpixel((1, 1), (0, 0, 0, 255))
    (tmp_path / "t.png").write_bytes(_encode(im))
    out = load_images([str(tmp_path / "t.png"), _encode(im), im])
    assert all(o.mode == "RGB" and _px(o) == (255, 255, 255) and _px(o, (1, 1)) == (0, 0, 0) for o in out)


def test_no_other_module_decodes_images_itself():
    # One loader for every stage: only data/images.py decodes pixels (readers.py opens embedded bytes
    # lazily for load_image; synthetic data *draws* images).
    import re
    from pathlib import Path

    import mstar_fast

    pkg = Path(mstar_fast.__file__).parent
    offenders = []
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(pkg).as_posix()
        if rel == "data/images.py" or "synthetic" in rel:
            continue
        src = f.read_text(encoding="utf-8")
        for m in re.finditer(r"Image\.open\(|\.convert\(\s*[\"']RGB[\"']\s*\)", src):
            line = src[: m.start()].count("\n") + 1
            if rel == "data/readers.py" and "lazy" in src.splitlines()[line - 1]:
                continue
            offenders.append(f"{rel}:{line}")
    assert offenders == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_reference(orientation):
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8))  # 5 x 3, asymmetric
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(im, "PNG", exif=exif.tobytes())
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = load_image(data)
    assert out.size == ref.size and out.tobytes() == ref.tobytes()
    assert out.size == ((5, 3) if orientation <= 4 else (3, 5))


def test_transparent_palette_with_exif_rotation_still_on_white():
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 10, 200, 10] + [0] * (254 * 3))
    im.putpixel((0, 0), 1)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_encode(im, "PNG", transparency=0, exif=exif.tobytes()))
    assert out.size == (2, 4)
    assert _px(out, (1, 0)) == (10, 200, 10)  # the mark moved top-right
    assert _px(out, (0, 3)) == (255, 255, 255)  # transparent index composited on white
