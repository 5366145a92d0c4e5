"""The training bench's interleaved timing: it alternates our steps with floor steps on one model."""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.training_bench import interleaved


class CountingLoader:
    """A loader of fixed batches that records how many it handed out."""

    def __init__(self, batches):
        self.batches, self.fetched = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.fetched += 1
            yield b


def batches(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def test_interleaved_counts_both_sides_and_stops_at_max_batches():
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    loader = CountingLoader(batches([5, 5, 5, 2], seed=0))
    held = batches([5, 5], seed=1)
    out = interleaved(model, loader, held, max_batches=10)
    assert loader.fetched == 4
    assert out["images"] == 17 and out["floor_images"] == 20  # the floor cycles over full held batches
    assert 0 < out["fetch_s"] < out["ours_s"] and out["floor_s"] > 0
    assert not torch.equal(model.weight, before)  # the steps trained the model

    loader = CountingLoader(batches([5, 5, 5, 2], seed=0))
    out = interleaved(nn.Linear(4, 3), loader, held, max_batches=2)
    assert loader.fetched == 2 and out["images"] == 10 and out["floor_images"] == 10


def test_safetensors_case_reads_only_the_analyzed_tensors(tmp_path):
    from bench.projections_bench import safetensors_case

    (row,) = safetensors_case(str(tmp_path), arch="resnet18", num_classes=10, input_size=32, repeats=1)
    assert row["tensors_read"] == 17 and row["tensors"] == 122  # the 3x3/7x7 conv weights of 122 tensors
    assert 0 < row["read_mb"] < row["file_mb"] and row["read_cold_s"] > 0 and row["torch_load_cold_s"] > 0
    assert row["analyze_warm_s"] > 0 and row["torch_load_analyze_warm_s"] > 0
    assert list(tmp_path.iterdir()) == []  # everything is deleted
