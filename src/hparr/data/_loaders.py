"""Loaders yielding normalized float32 batches: `TensorLoader` over an in-memory split (shuffling, augmentation
and normalization as tensor ops), `ResidentLoader` with the same batches from a split held on the device, and
for ImageNet a DataLoader with a seeded `EpochSampler`, wrapped by `DeviceLoader`; `make_loader` picks one."""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import HparrError, UsageError
from ._catalog import CROP_PADDING, DEFAULT_SEED, augmentation_rule
from ._imagenet import imagenet_transform
from ._load import Data, ImageSet


def rank_indices(order: torch.Tensor, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """This rank's share of `order`.

    pad (training): like DistributedSampler, repeat the head of `order` up to a multiple of
    world_size and take every world_size-th index from `rank`, so every rank gets the same count.
    Otherwise (evaluation): disjoint contiguous slices that cover every sample exactly once.
    """
    if world_size == 1:
        return order
    n = len(order)
    if not pad:
        return torch.tensor_split(order, world_size)[rank]
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil((total - n) / n) if n else 0
        order = torch.cat([order, order.repeat(reps)[: total - n]]) if n else order
    return order[rank:total:world_size]


def _check_rank(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}")


def _default_generator() -> torch.Generator:
    return torch.Generator().manual_seed(DEFAULT_SEED)


class TensorLoader:
    """Batches from an ImageSet held in memory: shuffling, augmentation and normalization as tensor ops,
    no per-sample PIL work, no worker processes.

    augment: None, "crop" (random crop with zero padding 4, as torchvision RandomCrop(size, padding=4)),
    "flip" (horizontal, p=0.5) or "crop+flip". When `train`, each epoch draws a new permutation and the
    augmentation from `generator` (default: a generator seeded 0); with world_size > 1 every rank must
    pass a generator with the same seed.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, train: bool, augment: str | None,
                 mean: Sequence[float], std: Sequence[float], generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, drop_last: bool = False):
        _check_rank(batch_size, rank, world_size)
        parts = set() if not augment else set(augment.split("+"))
        if not parts <= {"crop", "flip"}:
            raise UsageError(f"unknown augmentation {augment!r}; use 'crop', 'flip' or 'crop+flip'")
        self.dataset = data
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.crop, self.flip = "crop" in parts, "flip" in parts
        self.generator = generator if generator is not None else _default_generator()
        self.device = torch.device(device)
        self.rank, self.world_size = int(rank), int(world_size)
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.labels = data.labels.to(self.device)
        self._augmenting = self.train and (self.crop or self.flip)
        # moved to `device` once; a cropping loader keeps the set zero-padded once instead of per batch
        self._pad = CROP_PADDING if self._augmenting and self.crop else 0
        self._source = self._padded_source(data.images)
        self._image_hw = tuple(data.images.shape[2:])
        c = data.images.shape[1]
        mean_t = torch.as_tensor(mean, dtype=torch.float64).expand(c)
        std_t = torch.as_tensor(std, dtype=torch.float64).expand(c)
        # (x / 255 - mean) / std as one multiply-add
        self._scale = (1.0 / (255.0 * std_t)).float().view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).float().view(1, c, 1, 1).to(self.device)

    def _padded_source(self, images: torch.Tensor) -> torch.Tensor | None:
        images = images.to(self.device)
        return F.pad(images, (self._pad,) * 4) if self._pad else images

    def _num_samples(self) -> int:
        n = len(self.dataset)
        if self.world_size == 1:
            return n
        if self.train:
            return math.ceil(n / self.world_size)
        return len(torch.tensor_split(torch.arange(n), self.world_size)[self.rank])

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        return rank_indices(order, self.rank, self.world_size, pad=self.train)

    def _augmented(self, idx: torch.Tensor) -> torch.Tensor:
        """Random crops (offsets into the padded set) and flips (reversed column order) as one gather."""
        b, c = len(idx), self._source.shape[1]
        (h, w), (hp, wp), p = self._image_hw, self._source.shape[2:], self._pad
        dev = self._source.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if self.crop:
            offsets = torch.randint(0, 2 * p + 1, (2, b), generator=self.generator).to(dev)
            rows, cols = rows + offsets[0, :, None], cols + offsets[1, :, None]
        if self.flip:
            flipped = (torch.rand(b, generator=self.generator) < 0.5).to(dev)
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        x = self._source.index_select(0, idx).view(b, c, hp * wp)
        return torch.gather(x, 2, index).view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self._augmented(idx) if self._augmenting else self._source.index_select(0, idx)
            x = torch.addcmul(self._shift, x.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)


_RESIDENT_CHUNK = 4096  # images normalized per step when a split is placed on a device
_resident: WeakIdKeyDictionary = WeakIdKeyDictionary()  # uint8 images -> {(device, pad, table): pixels}


def resident_pixels(images: torch.Tensor, pad: int, table: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A split's uint8 images (N, C, H, W) on `device`, zero-padded by `pad` and normalized there:
    float32 (N, H + 2 pad, W + 2 pad, C), channels last.

    `table` (C, 256) holds the normalized value of each of the 256 values of each channel. Looking the
    pixels up in it, instead of computing (x / 255 - mean) / std on the device (which may round
    differently, e.g. with fused multiply-adds), gives exactly the table's values on every device.
    Made once per split, device, padding and table, and kept as long as `images` lives.
    """
    device = torch.device(device)
    key = (str(device), int(pad), table.numpy().tobytes())
    held = _resident.setdefault(images, {})
    if key not in held:
        n, c, h, w = images.shape
        out = torch.empty((n, h + 2 * pad, w + 2 * pad, c), dtype=torch.float32, device=device)
        values = table.to(device).reshape(-1)
        channel = torch.arange(c, dtype=torch.int32, device=device) * 256
        for start in range(0, n, _RESIDENT_CHUNK):
            block = images[start:start + _RESIDENT_CHUNK].to(device)
            if pad:
                block = F.pad(block, (pad,) * 4)
            index = block.permute(0, 2, 3, 1).int() + channel
            out[start:start + len(block)] = values.index_select(0, index.reshape(-1)).view(index.shape)
        held[key] = out
    return held[key]


class ResidentLoader(TensorLoader):
    """TensorLoader's batches, bit for bit, from a split held on `device` (meant for a GPU; works anywhere).

    The split is placed on the device once, padded for cropping and normalized (`resident_pixels`), with
    TensorLoader's own CPU arithmetic for the normalized values. Each epoch draws its permutation, crop
    offsets and flips from `generator` up front, in the order and amounts TensorLoader draws them, and
    sends them to the device in one copy; each batch is then one gather of pixels and one of labels on the
    device: nothing crosses the bus and nothing waits for the device. The generator ends each epoch in
    TensorLoader's state (an epoch left unfinished has already drawn all of its numbers).
    """

    def __init__(self, data: ImageSet, batch_size: int, **kwargs: Any):
        super().__init__(data, batch_size, **kwargs)
        c, (h, w), p = data.images.shape[1], self._image_hw, self._pad
        # x * scale + shift for each uint8 value, computed on the CPU as TensorLoader computes it
        values = torch.arange(256, dtype=torch.float32).expand(c, 256)
        table = torch.addcmul(self._shift.cpu().view(c, 1), values, self._scale.cpu().view(c, 1))
        self._pixels = resident_pixels(data.images, p, table, self.device)
        # position of each output pixel in a padded image, for a crop at offset (0, 0), unflipped and flipped
        grid = torch.arange(h).view(h, 1) * (w + 2 * p) + torch.arange(w).view(1, w)
        self._grid, self._grid_flipped = grid.to(self.device), grid.flip(1).to(self.device)

    def _padded_source(self, images: torch.Tensor) -> None:
        return None  # the set lives on the device, padded and normalized: see __init__

    def _epoch_plan(self) -> tuple[torch.Tensor, int]:
        """(rows on the device: sample indices, then with augmentation each sample's first padded-pixel
        row and flip flag; number of samples), drawn from the generator as TensorLoader draws them."""
        order = self._order()
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        order = order[:stop]
        plan = [order]
        if self._augmenting:
            (h, w), p = self._image_hw, self._pad
            offsets, flips = [], []
            for start in range(0, stop, self.batch_size):
                b = min(self.batch_size, stop - start)
                if self.crop:
                    offsets.append(torch.randint(0, 2 * p + 1, (2, b), generator=self.generator))
                if self.flip:
                    flips.append(torch.rand(b, generator=self.generator) < 0.5)
            first = order * ((h + 2 * p) * (w + 2 * p))
            if offsets:
                dy, dx = torch.cat(offsets, 1)
                first = first + dy * (w + 2 * p) + dx
            plan += [first, torch.cat(flips).long() if flips else torch.zeros_like(order)]
        plan = torch.stack(plan)
        if self.device.type == "cuda":
            plan = plan.pin_memory()
        return plan.to(self.device, non_blocking=True), stop

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan, stop = self._epoch_plan()
        n, (h, w), c = len(self.dataset), self._image_hw, self._pixels.shape[-1]
        images = self._pixels.view(n, h * w * c) if not self._augmenting else None
        rows = self._pixels.view(-1, c)
        flipped = plan[2].bool() if self._augmenting and self.flip else None
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            idx = plan[0, start:end]
            if self._augmenting:
                grid = self._grid if flipped is None else \
                    torch.where(flipped[start:end, None, None], self._grid_flipped, self._grid)
                x = rows.index_select(0, (plan[1, start:end, None, None] + grid).view(-1))
            else:
                x = images.index_select(0, idx)
            x = x.view(end - start, h, w, c).permute(0, 3, 1, 2)  # NCHW shape, channels_last layout
            yield (x if self.channels_last else x.contiguous()), self.labels.index_select(0, idx)


class EpochSampler(torch.utils.data.Sampler):
    """Indices for a FolderSet: a new permutation per epoch from `generator` when training, in order
    otherwise; split across ranks like `rank_indices`. Yields (index, seed) pairs so random
    transforms draw from per-sample seeds taken from the same generator."""

    def __init__(self, n: int, *, train: bool, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        self.n, self.train, self.generator = n, train, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.train:
            return math.ceil(self.n / self.world_size)
        return len(torch.tensor_split(torch.arange(self.n), self.world_size)[self.rank])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.train else torch.arange(self.n)
        mine = rank_indices(order, self.rank, self.world_size, pad=self.train)
        seeds = torch.randint(0, 2**62, (len(mine),), generator=self.generator)
        yield from zip(mine.tolist(), seeds.tolist())


class DeviceLoader:
    """A DataLoader whose batches are moved to `device` (and channels_last) as they are yielded."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: str | torch.device, channels_last: bool):
        self.loader = loader
        self.dataset, self.sampler, self.batch_size = loader.dataset, loader.sampler, loader.batch_size
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def make_loader(data: Data, split: str, batch_size: int, *, train: bool | None = None,
                generator: torch.Generator | None = None, device: str | torch.device = "cpu", workers: int = 1,
                rank: int = 0, world_size: int = 1, channels_last: bool = False, resident: bool | None = None):
    """A loader over data.<split> ('train', 'val' or 'test') yielding normalized float32 batches on `device`.

    `train` (default: split == 'train') shuffles each epoch and applies the dataset's augmentation
    when options.augmentation. In-memory datasets give a TensorLoader, or with `resident` (default: when
    `device` is not the CPU) a ResidentLoader, which yields the same batches from the split held on
    `device`; imagenet a DataLoader with `workers` worker processes, wrapped to move batches to `device`.
    """
    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    dataset = getattr(data, split)
    if dataset is None and split == "val":
        raise UsageError("there is no validation split: pass a split fraction (--split) to carve one")
    if dataset is None:
        raise HparrError(f"the {split} split was not read: load_data(..., splits=...) must name it")
    train = (split == "train") if train is None else bool(train)
    augment = data.options.augmentation and train
    generator = generator if generator is not None else _default_generator()
    if isinstance(dataset, ImageSet):
        on_device = torch.device(device).type != "cpu" if resident is None else bool(resident)
        cls = ResidentLoader if on_device else TensorLoader
        rule = augmentation_rule(data.options.dataset) if augment else None
        return cls(dataset, batch_size, train=train, augment=rule,
                   mean=data.mean, std=data.std, generator=generator, device=device, rank=rank,
                   world_size=world_size, channels_last=channels_last)
    _check_rank(batch_size, rank, world_size)
    if augment != dataset.random_transform:
        dataset = dataset.with_transform(imagenet_transform(augment, data.mean, data.std,
                                                            not data.options.unnormalize), augment)
    sampler = EpochSampler(len(dataset), train=train, generator=generator, rank=rank, world_size=world_size)
    # DataLoader draws its worker base seed from this generator instead of the global RNG
    loader_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), sampler=sampler,
                                         num_workers=max(0, int(workers)),
                                         pin_memory=torch.device(device).type == "cuda",
                                         persistent_workers=False, generator=loader_gen)
    return DeviceLoader(loader, device, channels_last)
