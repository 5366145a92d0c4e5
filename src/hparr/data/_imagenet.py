"""ImageNet, streamed: an ImageFolder tree's images decoded and transformed on access."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import HparrError
from ._corrupt import image_permutation


class FolderSet(torch.utils.data.Dataset):
    """Images listed as (path, label) pairs, decoded and transformed on access.

    An index may be an int or (int, seed): random transforms then draw from a forked RNG seeded
    with `seed`, so the result depends neither on worker processes nor on global RNG state.
    `pixel_seed` shuffles the pixels after the transform, per image, by (pixel_seed, source index).
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, *, random_transform: bool,
                 source_index: Sequence[int], class_names: list[str], pixel_seed: int | None = None):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.random_transform = random_transform
        self.source_index = [int(i) for i in source_index]
        self.classes = list(class_names)
        self.pixel_seed = pixel_seed

    def __len__(self) -> int:
        return len(self.samples)

    def with_transform(self, transform: Callable, random_transform: bool) -> "FolderSet":
        return FolderSet(self.samples, transform, random_transform=random_transform,
                         source_index=self.source_index, class_names=self.classes, pixel_seed=self.pixel_seed)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        from torchvision.datasets.folder import default_loader  # start-up time: torchvision only for ImageNet

        try:
            image = default_loader(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for unreadable files
            raise HparrError(f"cannot read image {path}: {exc}") from None
        if self.random_transform:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(index if seed is None else seed)  # plain int keys: fixed per image
                x = self.transform(image)
        else:
            x = self.transform(image)
        if self.pixel_seed is not None:
            c, h, w = x.shape
            perm = image_permutation(self.pixel_seed, self.source_index[index], h * w)
            x = x.reshape(c, h * w)[:, perm].reshape(c, h, w)
        return x, label


def imagenet_transform(train: bool, mean: Sequence[float], std: Sequence[float], normalize: bool) -> Callable:
    """torchvision transforms: RandomResizedCrop(224)+flip for training, Resize(256)+CenterCrop(224) else."""
    import torchvision.transforms as T  # start-up time: torchvision only for ImageNet

    steps = ([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train
             else [T.Resize(256), T.CenterCrop(224)])
    steps.append(T.ToTensor())
    if normalize:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)

