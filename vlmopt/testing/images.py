"""Synthetic labelled image sets and a corpus of awkward images, for offline tests and demos.

``make_image_dataset`` draws one coloured shape per image (the class is the shape), seeded so the
same call writes the same bytes, and writes the same items in every form the loader reads: an
image folder, CSV / JSONL / Parquet manifests with paths relative to them, and a
``save_to_disk`` directory with a ClassLabel column. ``make_bad_images`` writes one file for each
kind of image that has broken loaders before (see ``BAD_IMAGE_REASONS`` for the ones that must be
skipped and ``CONVERTIBLE_KINDS`` for the ones that must come out as RGB).

Example::

    data = make_image_dataset(tmp_path, n_per_class=4)
    data.folder          # tmp_path/folder/<class>/<class>_000.png ...
    data.manifest_csv    # tmp_path/manifest.csv with columns image, label
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from vlmopt.demo.shapes import SHAPES

_COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 20), (150, 60, 190), (20, 170, 180)]


@dataclass(frozen=True)
class SyntheticDataset:
    """Where ``make_image_dataset`` wrote each form of the same labelled items."""

    root: Path
    classes: tuple[str, ...]
    items: tuple[tuple[str, str], ...]  # (path relative to root, class name), in writing order
    folder: Path
    manifest_csv: Path
    manifest_jsonl: Path
    manifest_parquet: Path
    saved: Path

    def count(self, label: str) -> int:
        return sum(1 for _, lab in self.items if lab == label)


def draw_shape(shape: str, *, size: int, rng: random.Random) -> Image.Image:
    """One RGB image with ``shape`` in a random colour, place and size on a light background."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; synthetic classes are drawn from {sorted(SHAPES)}")
    background = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    side = rng.uniform(0.45, 0.75) * size
    x0, y0 = rng.uniform(0, size - side), rng.uniform(0, size - side)
    SHAPES[shape](ImageDraw.Draw(img), (x0, y0, x0 + side, y0 + side), rng.choice(_COLOURS))
    return img


def make_image_dataset(
    out_dir: str | Path,
    *,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    n_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
) -> SyntheticDataset:
    """Write ``n_per_class`` PNGs per shape class as a folder, three manifests and a saved dataset."""
    root = Path(out_dir)
    folder = root / "folder"
    items: list[tuple[str, str]] = []
    encoded: list[bytes] = []
    for label in classes:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = draw_shape(label, size=size, rng=random.Random(f"{seed}:{label}:{i}"))
            buffer = io.BytesIO()
            img.save(buffer, format="PNG")
            rel = f"folder/{label}/{label}_{i:03d}.png"
            (root / rel).write_bytes(buffer.getvalue())
            items.append((rel, label))
            encoded.append(buffer.getvalue())

    table = datasets.Dataset.from_dict({"image": [p for p, _ in items], "label": [lab for _, lab in items]})
    table.to_csv(root / "manifest.csv", index=False)
    table.to_json(root / "manifest.jsonl", lines=True)
    table.to_parquet(root / "manifest.parquet")

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    saved = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": Path(p).name} for (p, _), data in zip(items, encoded, strict=True)],
            "label": [lab for _, lab in items],
        },
        features=features,
    )
    saved.save_to_disk(str(root / "saved"))
    return SyntheticDataset(
        root=root,
        classes=tuple(classes),
        items=tuple(items),
        folder=folder,
        manifest_csv=root / "manifest.csv",
        manifest_jsonl=root / "manifest.jsonl",
        manifest_parquet=root / "manifest.parquet",
        saved=root / "saved",
    )


# Kinds that must be skipped, with the reason code the loader reports for each.
BAD_IMAGE_REASONS: dict[str, str] = {
    "corrupt": "corrupt",
    "empty": "empty",
    "truncated_png": "truncated",
    "truncated_jpeg": "truncated",
    "wrong_extension": "not_an_image",
    "huge": "too_large",
    "missing": "missing",
}
# Kinds that must load, as RGB of the size in CONVERTIBLE_SIZES (width, height after EXIF).
CONVERTIBLE_SIZES: dict[str, tuple[int, int]] = {
    "cmyk_jpeg": (48, 32),
    "png16": (48, 32),
    "palette_alpha": (48, 32),
    "animated_gif": (48, 32),
    "grayscale": (48, 32),
    "grayscale_alpha": (48, 32),
    "rgba": (48, 32),
    "exif_rotated": (32, 48),
}
CONVERTIBLE_KINDS = tuple(CONVERTIBLE_SIZES)
# Pixel count of the "huge" image: pass a smaller ``max_pixels`` to trip the guard cheaply.
HUGE_PIXELS = 1200 * 1200


def make_bad_images(out_dir: str | Path) -> dict[str, Path]:
    """Write one file per awkward kind (see module docstring); "missing" names a path never written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w, h = 48, 32
    paths: dict[str, Path] = {}

    def save(kind: str, name: str, img: Image.Image, **kwargs) -> None:
        paths[kind] = out / name
        img.save(paths[kind], **kwargs)

    def write(kind: str, name: str, data: bytes) -> None:
        paths[kind] = out / name
        paths[kind].write_bytes(data)

    # Red left half, blue right half: a conversion that loses colour or orientation shows.
    base = Image.new("RGB", (w, h), (0, 0, 255))
    base.paste((255, 0, 0), (0, 0, w // 2, h))

    write("corrupt", "corrupt.png", bytes(random.Random(0).randrange(128, 256) for _ in range(256)))
    write("empty", "empty.jpg", b"")
    for kind, fmt, name in (("truncated_png", "PNG", "truncated.png"), ("truncated_jpeg", "JPEG", "truncated.jpg")):
        buffer = io.BytesIO()
        base.save(buffer, format=fmt)
        write(kind, name, buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write("wrong_extension", "notes.jpg", b"these are my notes, not a picture\n")
    save("huge", "huge.png", Image.new("L", (1200, 1200), 128))
    paths["missing"] = out / "missing.jpg"

    save("cmyk_jpeg", "cmyk.jpg", base.convert("CMYK"), quality=95)
    gradient = Image.linear_gradient("L").resize((w, h)).point(lambda v: v * 257, mode="I")
    save("png16", "sixteen.png", gradient.convert("I;16"))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    save("palette_alpha", "palette_alpha.png", palette, transparency=0)
    frames = [base, Image.new("RGB", (w, h), (0, 255, 0)), Image.new("RGB", (w, h), (0, 0, 0))]
    save("animated_gif", "animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    save("grayscale", "gray.png", base.convert("L"))
    # The top quarter is fully transparent: it must come out white, not black.
    gray_alpha = base.convert("LA")
    gray_alpha.paste((0, 0), (0, 0, w, h // 4))
    save("grayscale_alpha", "gray_alpha.png", gray_alpha)
    rgba = base.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, w, h // 4))
    save("rgba", "rgba.png", rgba)
    # Stored landscape; EXIF orientation 6 means "rotate 90 degrees clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated", "rotated.jpg", base, exif=exif, quality=95)
    return paths
