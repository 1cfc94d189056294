"""Image normalisation: every awkward kind becomes an upright RGB image or a named, counted skip."""

import base64
import io
from pathlib import Path

import dspy
import pytest
from PIL import Image

from vlmopt.datasets.images import BadImage, dspy_image_to_pil, load_image, open_image, to_dspy_image
from vlmopt.testing.images import (
    BAD_IMAGE_REASONS,
    CONVERTIBLE_SIZES,
    HUGE_PIXELS,
    SHAPES,
    make_image_dataset,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("kind", sorted(BAD_IMAGE_REASONS))
def test_bad_image_kinds_raise_their_named_reason(bad_images: dict[str, Path], kind: str) -> None:
    with pytest.raises(BadImage) as caught:
        load_image(bad_images[kind], max_side=64, max_pixels=HUGE_PIXELS - 1)
    assert caught.value.reason == BAD_IMAGE_REASONS[kind]
    assert str(bad_images[kind]) in str(caught.value)


def test_bad_bytes_are_named_as_bytes() -> None:
    with pytest.raises(BadImage, match="<bytes>") as caught:
        open_image(b"\x89PNG\r\n\x1a\nnot really")
    assert caught.value.reason in {"corrupt", "truncated"}


def test_decompression_guard_is_configurable(bad_images: dict[str, Path]) -> None:
    img = load_image(bad_images["huge"], max_side=100, max_pixels=HUGE_PIXELS)
    assert img.size == (100, 100)


def test_pil_global_guard_still_applies(bad_images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", HUGE_PIXELS // 4)
    with pytest.raises(BadImage) as caught:
        open_image(bad_images["huge"])
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize("kind", sorted(CONVERTIBLE_SIZES))
def test_convertible_kinds_become_rgb_of_the_right_size(bad_images: dict[str, Path], kind: str) -> None:
    img = load_image(bad_images[kind], max_side=64)
    assert img.mode == "RGB"
    assert img.size == CONVERTIBLE_SIZES[kind]


def test_exif_orientation_is_applied(bad_images: dict[str, Path]) -> None:
    # Stored 48x32 with red left / blue right and orientation 6 (rotate 90 clockwise): red on top.
    img = load_image(bad_images["exif_rotated"], max_side=64)
    assert img.size == (32, 48)
    assert near(img.getpixel((16, 4)), RED) and near(img.getpixel((16, 43)), BLUE)


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "animated_gif"])
def test_colours_survive_conversion(bad_images: dict[str, Path], kind: str) -> None:
    img = load_image(bad_images[kind], max_side=64)
    assert near(img.getpixel((4, 16)), RED) and near(img.getpixel((43, 16)), BLUE)


@pytest.mark.parametrize("kind", ["rgba", "grayscale_alpha"])
def test_transparency_is_flattened_on_white(bad_images: dict[str, Path], kind: str) -> None:
    img = load_image(bad_images[kind], max_side=64)
    assert img.getpixel((40, 2)) == WHITE  # transparent top quarter
    assert not near(img.getpixel((40, 20)), WHITE)  # opaque blue (or its grey) below


def test_palette_transparency_is_flattened_on_white(bad_images: dict[str, Path]) -> None:
    img = load_image(bad_images["palette_alpha"], max_side=64)
    colours = {img.getpixel((4, 16)), img.getpixel((43, 16))}
    assert WHITE in colours and len(colours) == 2


def test_sixteen_bit_is_scaled_not_clipped(bad_images: dict[str, Path]) -> None:
    # A vertical 0..65535 gradient: PIL's own conversion would clip nearly all of it to white.
    img = load_image(bad_images["png16"], max_side=64)
    top, middle, bottom = (img.getpixel((24, y))[0] for y in (0, 16, 31))
    assert top < 30 and 90 < middle < 170 and bottom > 220


def test_downscale_keeps_aspect_and_never_upscales(tmp_path: Path) -> None:
    big = tmp_path / "wide.jpg"
    Image.new("RGB", (800, 400), RED).save(big, quality=90)
    assert load_image(big, max_side=100).size == (100, 50)
    assert load_image(big, max_side=2000).size == (800, 400)


def test_to_dspy_image_encodes_a_compact_jpeg_data_uri() -> None:
    img = Image.new("RGB", (40, 30), BLUE)
    encoded = to_dspy_image(img)
    assert isinstance(encoded, dspy.Image)
    assert encoded.url.startswith("data:image/jpeg;base64,")
    decoded = dspy_image_to_pil(encoded)
    assert decoded.size == (40, 30) and near(decoded.getpixel((20, 15)), BLUE, tol=8)


def test_to_dspy_image_png_is_lossless() -> None:
    img = Image.new("RGB", (8, 8), (12, 34, 56))
    img.putpixel((3, 3), (200, 100, 0))
    encoded = to_dspy_image(img, fmt="PNG")
    assert encoded.url.startswith("data:image/png;base64,")
    raw = base64.b64decode(encoded.url.partition("base64,")[2])
    assert Image.open(io.BytesIO(raw)).convert("RGB").tobytes() == img.tobytes()


def test_synthetic_dataset_is_deterministic(tmp_path: Path) -> None:
    first = make_image_dataset(tmp_path / "a", classes=("circle", "ring"), n_per_class=2, size=32, seed=3)
    again = make_image_dataset(tmp_path / "b", classes=("circle", "ring"), n_per_class=2, size=32, seed=3)
    other = make_image_dataset(tmp_path / "c", classes=("circle", "ring"), n_per_class=2, size=32, seed=4)
    rel = [path for path, _ in first.items]
    assert first.items == again.items == other.items
    assert all((first.root / p).read_bytes() == (again.root / p).read_bytes() for p in rel)
    assert any((first.root / p).read_bytes() != (other.root / p).read_bytes() for p in rel)
    assert first.count("ring") == 2 and Image.open(first.root / rel[0]).size == (32, 32)


def test_synthetic_classes_must_be_known_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape 'cat'") as caught:
        make_image_dataset(tmp_path, classes=("cat",), n_per_class=1)
    assert all(shape in str(caught.value) for shape in SHAPES)
