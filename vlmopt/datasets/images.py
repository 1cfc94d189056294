"""Decode, normalise and encode images once, so every later stage sees the same compact RGB picture.

Datasets in the wild hold CMYK JPEGs, 16-bit PNGs, palettes with transparency, animated GIFs,
phone photos whose pixels are stored sideways with an EXIF rotation, and files that are not
images at all. A VLM processor handles none of this consistently, so it is settled here:

* ``open_image`` reads a path, a URL (``https://``, ``s3://`` … through fsspec, the file layer
  ``datasets`` itself reads with) or bytes and fully decodes it, turning every failure into a
  ``BadImage`` with a short ``reason`` (``missing``, ``unreachable``, ``empty``, ``not_an_image``,
  ``corrupt``, ``truncated``, ``too_large``) that the loader counts as a skip instead of crashing;
* ``normalize_image`` applies the EXIF orientation, keeps the first frame of an animation,
  converts any mode to RGB (alpha flattened on white, 16-bit scaled to 8-bit) and downscales so
  the longer side is at most ``max_side``;
* ``to_dspy_image`` encodes the result as a JPEG (or PNG) data URI inside a ``dspy.Image``.

Example::

    img = load_image("photo.jpg", max_side=768)      # RGB, EXIF applied, <= 768 px
    example_image = to_dspy_image(img)               # dspy.Image with a data URI
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dspy
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmopt._dspy_compat import custom_type_parts

ImageSource = str | Path | bytes

# The modes whose transparency must be flattened rather than dropped.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class BadImage(ValueError):
    """An image that cannot be used; ``reason`` is a short code the loader counts skips by."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


def open_image(source: ImageSource, *, max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
    """Read and fully decode an image (first frame), or raise ``BadImage`` naming why not.

    ``max_pixels`` is the decompression-bomb guard (default, and at most, PIL's
    ``Image.MAX_IMAGE_PIXELS``): a larger image is refused from its header, before its pixels are
    decoded. ``max_side`` lets a JPEG decode at a reduced scale (never below ``max_side``), which
    saves memory on photos.

    Between PIL's limit and twice it, ``Image.open`` only warns (``DecompressionBombWarning``); the
    explicit check refuses the image all the same, and the warning is left to the process's filters
    (an error under ``-W error``, refused alike). Not ``warnings.catch_warnings()`` here: it swaps
    the process-global filter list, which is not thread-safe, and DSPy decodes on worker threads.
    """
    data = _read_bytes(source)
    name = str(source) if not isinstance(source, bytes) else "<bytes>"
    limits = [limit for limit in (max_pixels, Image.MAX_IMAGE_PIXELS) if limit is not None]
    limit = min(limits) if limits else None
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if limit is not None and width * height > limit:
            raise BadImage("too_large", f"{name} is {width}x{height} = {width * height} pixels, over the {limit} limit")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if max_side is not None and img.format == "JPEG":
            img.draft(None, _fit(img.size, max_side))
        img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too_large", f"{name}: {exc}") from None
    except UnidentifiedImageError:
        if _looks_like_text(data):
            raise BadImage("not_an_image", f"{name} holds text, not an image: {data[:40]!r}") from None
        raise BadImage("corrupt", f"{name} is not in any image format PIL knows (corrupt bytes?)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise BadImage(reason, f"{name} could not be decoded: {exc}") from None
    return img


def normalize_image(img: Image.Image, max_side: int) -> Image.Image:
    """Upright RGB image whose longer side is at most ``max_side`` (aspect ratio kept)."""
    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
    if max(img.size) > max_side:
        img = img.resize(_fit(img.size, max_side), Image.Resampling.LANCZOS)
    return img


def load_image(source: ImageSource, *, max_side: int, max_pixels: int | None = None) -> Image.Image:
    """``open_image`` then ``normalize_image``: the one call the dataset loader makes per item."""
    return normalize_image(open_image(source, max_pixels=max_pixels, max_side=max_side), max_side)


JPEG_QUALITY = 90
"""Quality of the one re-encoding every image gets (artifacts record it for apps that replay)."""


def to_dspy_image(img: Image.Image, *, fmt: str = "JPEG", quality: int = JPEG_QUALITY) -> dspy.Image:
    """Encode as a data URI ourselves: ``dspy.Image(pil)`` would re-save at PIL's defaults."""
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buffer, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        img.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    return dspy.Image(f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}")


def dspy_image_to_pil(image: dspy.Image) -> Image.Image:
    """Decode the data URI of a ``dspy.Image`` (for checks, thumbnails and local backends)."""
    _, _, payload = image.url.partition("base64,")
    if not payload:
        raise ValueError(f"dspy.Image holds no inline data: {image.url[:60]!r}")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def serialized_image_url(value: str) -> str | None:
    """The URL inside a ``dspy.Image`` as DSPy serialises it (``program.save``, decision requests), else None.

    DSPy 3.4 writes a custom type as its content parts between reserved markers; an image is one
    ``image_url`` part.
    """
    parts = custom_type_parts(value)
    return parts[0]["image_url"]["url"] if parts else None


def downscale_dspy_image(image: dspy.Image, max_side: int) -> dspy.Image:
    """The same image with its longer side at most ``max_side`` (demo images cost context)."""
    img = dspy_image_to_pil(image)
    if max(img.size) <= max_side:
        return image
    return to_dspy_image(normalize_image(img.convert("RGB"), max_side))


def thumbnail_uri(image: dspy.Image, side: int = 96) -> str:
    """A small JPEG data URI of an image, so run records and reports need no image files."""
    thumb = dspy_image_to_pil(image).convert("RGB")
    thumb.thumbnail((side, side))
    return to_dspy_image(thumb, quality=80).url


URL_READ_TIMEOUT_S = 60.0
"""How long one image download may take before it is an ``unreachable`` failure."""


def is_url(source: ImageSource) -> bool:
    """A ``scheme://`` string (``https://``, ``s3://``, ``gs://`` …), read through fsspec."""
    return isinstance(source, str) and "://" in source and not source.startswith("file://")


def _read_url(url: str) -> bytes:
    import fsspec

    options = {"client_kwargs": {"timeout": _http_timeout()}} if url.startswith(("http://", "https://")) else {}
    try:
        with fsspec.open(url, "rb", **options) as f:
            return f.read()
    except FileNotFoundError as exc:
        cause = exc.__cause__  # fsspec's HTTP layer reports a refused connection as a missing file too
        if not isinstance(cause, _connection_errors()):
            raise BadImage("missing", f"{url} does not exist") from None
        raise BadImage("unreachable", f"{url} could not be read ({type(cause).__name__}: {cause})") from None
    except Exception as exc:  # noqa: BLE001 - every transport's errors (HTTP, S3, DNS ...) mean the same here
        raise BadImage("unreachable", f"{url} could not be read ({type(exc).__name__}: {exc})") from None


def _connection_errors() -> tuple[type[Exception], ...]:
    try:
        import aiohttp
    except ImportError:
        return (OSError,)
    return (OSError, aiohttp.ClientConnectionError)


def _http_timeout():
    import aiohttp

    return aiohttp.ClientTimeout(total=URL_READ_TIMEOUT_S)


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif is_url(source):
        data = _read_url(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise BadImage("missing", f"{path} does not exist")
        data = path.read_bytes()
    if not data:
        raise BadImage("empty", f"{source if not isinstance(source, bytes) else '<bytes>'} is empty (0 bytes)")
    return data


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = max_side / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_to_eight(img)
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _sixteen_to_eight(img: Image.Image) -> Image.Image:
    """PIL's own conversion clips 16-bit values at 255 (a white image); scale them instead."""
    values = np.asarray(img, dtype=np.int64)
    if img.mode != "I" or values.max(initial=0) > 255:
        values = np.clip(values, 0, 65535) >> 8
    return Image.fromarray(values.astype(np.uint8))
