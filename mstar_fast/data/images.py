"""One way to turn an image field into pixels, for every stage (rollout, PRM, SFT data, evaluation).

:func:`load_image` takes a path, encoded bytes or a PIL image and returns an 8-bit **RGB** PIL image that
shows what a person viewing the file sees:

* **transparency** (``RGBA``, ``LA``, ``PA``, ``P`` or ``L`` / ``RGB`` with a ``transparency`` key) is
  composited onto **white**: math diagrams are often black strokes on a transparent background, which a
  plain ``convert("RGB")`` turns all black;
* the **EXIF orientation** tag (all eight values) is applied (phone photos are stored sideways);
* **16-bit grayscale** (``I;16*``, and ``I`` holding values above 255) is scaled to 8 bits
  (``v * 255 / 65535``), not clipped: clipping collapses a 16-bit image to two levels;
* **float** images (``F``) in ``[0, 1]`` are scaled by 255, others are clipped to ``[0, 255]``;
* ``CMYK``, ``YCbCr``, palette (``P``), grayscale (``L``, ``1``) convert with Pillow's converters;
* a multi-frame file (GIF, TIFF) gives its first frame.

Errors are :class:`ImageError` (a ``ValueError``) naming the image: unreadable or truncated data, an
unsupported mode, and **decompression bombs**: an image whose header declares more than ``max_pixels``
pixels (default :data:`MAX_PIXELS`) is refused before any pixel is decoded.

:func:`check_image` decodes a file fully without converting it (JPEG at reduced scale, which still reads
all the data), so that a truncated image is found when the dataset is loaded, not at step 900.

Pillow is imported on first use, so importing this module needs no Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["load_image", "check_image", "ImageError", "MAX_PIXELS", "ImageSource"]

#: Largest accepted image, in pixels (width * height): 16384 x 16384. A larger header is refused as a
#: decompression bomb (a small file that would decode to gigabytes).
MAX_PIXELS = 16384 * 16384

ImageSource = Union[str, os.PathLike, bytes, bytearray, "PILImage"]

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# EXIF orientation tag value (tag 0x0112) -> the PIL.Image.Transpose name that displays the image upright.
_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}


class ImageError(ValueError):
    """An image that cannot be used: unreadable, truncated, too large, or of an unsupported mode."""


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    fn = getattr(source, "filename", None)
    return str(fn) if fn else f"<{type(source).__name__}>"


def _open(source: Any, max_pixels: int | None) -> tuple[PILImage, bool]:
    """Open ``source`` lazily (header only) and check its size; returns (image, opened_here)."""
    from PIL import Image

    name = _name(source)
    if isinstance(source, Image.Image):
        im, opened = source, False
    elif isinstance(source, (bytes, bytearray)):
        fp: Any = io.BytesIO(bytes(source))
        im, opened = None, True
    elif isinstance(source, (str, os.PathLike)):
        fp = Path(source)
        im, opened = None, True
    else:
        raise ImageError(f"image {name}: expected a path, bytes or a PIL image, got {type(source).__name__}")
    if im is None:
        try:
            with warnings.catch_warnings():
                # Pillow's own bomb guard warns at 89M pixels and raises at twice that; ours is explicit.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fp)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image {name}: refused as a decompression bomb ({exc})") from None
        except FileNotFoundError:
            raise ImageError(f"image {name}: file not found") from None
        except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError from plugins, ...
            raise ImageError(f"image {name}: not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = im.size
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if w * h > limit:
        if opened:
            im.close()
        raise ImageError(f"image {name}: {w}x{h} = {w * h} pixels is more than the limit of {limit} "
                         "(refused as a possible decompression bomb; pass max_pixels= to allow it)")
    return im, opened


def _decode(im: PILImage, name: str) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Exception as exc:  # "image file is truncated", broken data stream, ...
        raise ImageError(f"image {name}: cannot be decoded, truncated or corrupt ({type(exc).__name__}: {exc})") \
            from None


def check_image(source: ImageSource, max_pixels: int | None = None) -> tuple[int, int]:
    """Decode ``source`` fully to prove it is whole; returns its (width, height).

    JPEGs decode at 1/8 scale (Pillow's ``draft``), which still reads every byte, so a truncated file is
    caught at a fraction of the cost.

    Raises:
        ImageError: unreadable, truncated, or larger than ``max_pixels`` (default :data:`MAX_PIXELS`).
    """
    name = _name(source)
    im, opened = _open(source, max_pixels)
    try:
        size = im.size
        if opened and im.format == "JPEG":
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        _decode(im, name)
        return size
    finally:
        if opened:
            im.close()


def _to_rgb(im: PILImage, name: str) -> PILImage:
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    rgba_palette = mode == "P" and getattr(im.palette, "mode", "") == "RGBA"
    if mode in _TRANSPARENT_MODES or "transparency" in im.info or rgba_palette:
        # "transparency" marks a palette index or a grey / RGB colour as transparent (PNG tRNS).
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im, dtype=np.int64) if mode == "I" else np.asarray(im).astype(np.int64)
        if mode == "I" and a.size and int(a.max()) <= 255 and int(a.min()) >= 0:
            g = a.astype(np.uint8)  # 32-bit container holding 8-bit values
        else:
            # 16-bit samples: full range 0..65535 -> 0..255, rounded (v * 255 / 65535 == v / 257).
            g = ((np.clip(a, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0  # a normalised float image
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    try:
        return im.convert("RGB")
    except Exception as exc:  # e.g. LAB, which Pillow cannot convert directly
        raise ImageError(f"image {name}: mode {mode!r} cannot be converted to RGB ({exc})") from None


def load_image(source: ImageSource, max_pixels: int | None = None) -> PILImage:
    """An 8-bit RGB PIL image of ``source`` (a file path, encoded bytes, or a PIL image).

    See the module docstring for what "faithful" means per mode (transparency on white, EXIF orientation,
    16-bit scaling). A PIL image passed in is not modified; the result is a new image unless the input
    is already a plain RGB image without an EXIF rotation, which is returned as is.

    Args:
        source: path (``str`` / ``PathLike``), encoded image bytes, or a ``PIL.Image.Image``.
        max_pixels: refuse images with more pixels than this (default :data:`MAX_PIXELS`).

    Returns:
        A ``PIL.Image.Image`` in mode ``"RGB"`` (uint8 per channel), fully decoded (no open file).

    Raises:
        ImageError: (a ``ValueError``) the source is not an image, is truncated or corrupt, is too large,
            has an unsupported mode, or is of an unsupported type.
    """
    from PIL import Image

    name = _name(source)
    im, opened = _open(source, max_pixels)
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        _decode(im, name)
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:  # a malformed EXIF block: keep the stored orientation rather than lose the image
            orientation = 1
        # Convert first, turn second: the turn then works on plain RGB whatever the mode (I;16, F, P).
        out = _to_rgb(im, name)
        method = _ORIENTATION.get(orientation)
        if method is not None:
            out = out.transpose(Image.Transpose[method])
        if out is im and opened:
            out = im.copy()  # detach from the file about to be closed
        return out
    finally:
        if opened:
            im.close()
