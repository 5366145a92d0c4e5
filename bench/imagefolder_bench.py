"""Your own images: an image folder of PNG files decoded once (then read from its cache), and lenet trained on it
through the in-memory data path of the built-in sets, against the floor (the same model's steps on batches already
made, interleaved step for step with ours, as in the training case). The target: at most 1.10x the floor."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .common import pick, timed
from .training_bench import BATCH, floor_batches, interleaved, train_steps

TARGET = 1.10  # our time per image at most this many times the floor's


def write_folder(root: Path, images: int, size: int = 32, classes: int = 10, seed: int = 0) -> None:
    """`images` RGB PNGs of `size`x`size` (train/), a tenth as many (val/), spread over `classes` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", max(classes, images // 10))):
        for i in range(count):
            folder = root / split / f"class_{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def run(mode: str = "default") -> list[dict]:
    from hparr.data import DataOptions, load_data, make_loader
    from hparr.models import build_model
    from hparr.training import use_channels_last

    images = pick(mode, quick=1000, default=5000, full=20_000)
    max_batches, warmup = pick(mode, quick=(20, 2), default=(120, 3), full=(10**9, 3))
    logging.getLogger("hparr.data").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_folder(root, images)
        options = DataOptions(dataset="imagefolder", data_path=str(root), augmentation=True)
        decode_s, _ = timed(load_data, options)  # decodes every file, writes the cache
        cached_s, data = timed(load_data, options)  # reads the cache
        rows = [{"case": "imagefolder_load", "images": images + len(data.test), "decode_s": decode_s,
                 "cached_s": cached_s, "cached_vs_decode": cached_s / decode_s}]

        model = build_model("lenet", data.num_classes, data.in_channels, data.image_size, seed=0)
        fast = use_channels_last(model, torch.device("cpu"))  # what `hparr train` picks
        model = model.to(memory_format=torch.channels_last) if fast else model
        loader = make_loader(data, "train", BATCH, generator=torch.Generator().manual_seed(0), channels_last=fast)
        held = floor_batches(loader, 8, distinct=8)
        train_steps(model, held, warmup)  # warm-up before timing
        both = interleaved(model, loader, held, max_batches)
        ours_rate, floor_rate = both["images"] / both["ours_s"], both["floor_images"] / both["floor_s"]
        rows.append({"case": "train_lenet_imagefolder", "batches": min(max_batches, len(loader)),
                     "channels_last": fast, "ours_img_s": ours_rate, "floor_img_s": floor_rate,
                     "ratio_vs_floor": floor_rate / ours_rate, "target_ratio": TARGET,
                     "fetch_share": both["fetch_s"] / both["ours_s"]})
    return rows
