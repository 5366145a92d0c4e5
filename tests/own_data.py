"""Data of a user's own, for the tests: image folders of PNG files written here (`write_image_folder`, and the bad
ones of `write_bad_folders`), and dataset factories for `--dataset own_data:shapes` (imported from the current
directory or PYTHONPATH, as hparr imports any `module.path:factory`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("circle", "cross", "square")


def class_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 (size, size, 3) image of class `label`: a bright patch in a place of its own on noise."""
    image = rng.integers(0, 90, (size, size, 3))
    half = size // 2
    top, left = [(0, 0), (half, half), (0, half)][label % 3]
    image[top:top + half, left:left + half] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(root: str | Path, train_per_class: int = 10, val_per_class: int = 4, size: int = 12,
                       gray_every: int = 3, seed: int = 0, eval_folder: str = "val") -> Path:
    """DIR/train/<class>/<i>.png and DIR/<eval_folder>/<class>/<i>.png, three classes; every `gray_every`-th image
    is saved gray (mode L), the others RGB."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), (eval_folder, val_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.fromarray(class_image(label, size, rng))
                if gray_every and i % gray_every == 0:
                    image = image.convert("L")
                image.save(folder / f"{i:03d}.png")
    return root


def write_bad_folders(root: str | Path) -> dict[str, Path]:
    """Image folders with one defect each: {defect: folder}."""
    root = Path(root)
    good = {name: write_image_folder(root / name, train_per_class=2, val_per_class=1, size=8)
            for name in ("no_val", "empty_class", "corrupt", "extra_class")}
    for path in (good["no_val"] / "val").rglob("*"):
        if path.is_file():
            path.unlink()
    for folder in sorted((good["no_val"] / "val").rglob("*"), reverse=True):
        folder.rmdir()
    (good["no_val"] / "val").rmdir()
    for path in (good["empty_class"] / "train" / "cross").iterdir():
        path.rename(path.with_suffix(".txt"))  # files of no image format: the class folder holds no image
    cut = good["corrupt"] / "train" / "square" / "001.png"
    cut.write_bytes(cut.read_bytes()[:60])  # truncated
    extra = good["extra_class"] / "val" / "zebra"
    extra.mkdir()
    Image.new("RGB", (8, 8)).save(extra / "000.png")
    return good


class Images(torch.utils.data.Dataset):
    """Images (N, C, S, S) and int labels, item by item, with the class names as torchvision's datasets give them."""

    def __init__(self, images: torch.Tensor, labels: list[int], classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


def shapes(n_train: int = 30, n_test: int = 15, size: int = 12, gray: bool = True, seed: int = 0,
           normalization: bool = False):
    """Train and test splits of the three classes of `class_image`, as ToTensor gives images (floats in [0, 1],
    multiples of 1/255); with `normalization`, also the mean and std to use (0.5 and 0.25 for every channel)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> Images:
        labels = [int(i % 3) for i in range(n)]
        images = np.stack([class_image(label, size, rng) for label in labels]).transpose(0, 3, 1, 2)
        x = torch.from_numpy(images).float() / 255
        return Images(x[:, :1].clone() if gray else x, labels, list(CLASSES))

    out = {"train": split(n_train), "test": split(n_test)}
    if normalization:
        channels = 1 if gray else 3
        out.update(mean=[0.5] * channels, std=[0.25] * channels)
    return out


def broken(**kwargs):
    """A factory that fails."""
    raise FileNotFoundError("no images in /nowhere/shapes")


def not_pairs(**kwargs):
    """A factory whose items are (array, str), not (tensor, int)."""
    item = (np.zeros((1, 4, 4), dtype=np.uint8), "circle")
    return [item, item], [item]
