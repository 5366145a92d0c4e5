"""One loader for every checkpoint format: the same weights give the same state, statistics and reinit results."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hparr import checkpoints as ck
from hparr import files, projections
from hparr.cli import main
from hparr.errors import HparrError, UsageError
from hparr.models import build_model
from hparr.results import SNAPSHOT_FORMAT
from hparr.training import write_snapshot


def lightning_checkpoint(path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A .ckpt of a LightningModule holding `model` as `self.model`, after one training step, written by
    Lightning itself when it is installed (else in its documented layout). Returns the weights it holds."""
    try:
        import lightning as L
    except ImportError:
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        torch.save({"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.2.0", "state_dict": state,
                    "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
        return model.state_dict()

    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.model = net

        def training_step(self, batch, index):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 32, 32, generator=gen), torch.arange(4))
    module = Module(model)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    with torch.random.fork_rng(devices=[]):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_sharded(folder, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """A Hugging Face style folder: model-0000i-of-0000n.safetensors plus model.safetensors.index.json."""
    folder.mkdir(parents=True)
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / ck.SHARD_INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def same_weights(tmp_path_factory):
    """One lenet's weights (1 channel, 10 classes) in every format, named <format>_5.<ext>."""
    root = tmp_path_factory.mktemp("formats")
    weights = lightning_checkpoint(root / "lightning_5.ckpt", build_model("lenet", 10, 1, seed=3))
    d = root / "files"
    d.mkdir()
    (root / "lightning_5.ckpt").rename(d / "lightning_5.ckpt")
    write_snapshot(d / "hparr_5.pt", {"format": SNAPSHOT_FORMAT, "arch": "lenet", "epochs_completed": 5,
                                        "model_state_dict": weights})
    torch.save(weights, d / "bare_5.pt")
    torch.save(weights, d / "legacy_5.pt", _use_new_zipfile_serialization=False)
    torch.save({f"module.{k}": v for k, v in weights.items()}, d / "ddp_5.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in weights.items()}, d / "compiled_5.pt")
    torch.save({f"net.{k}": v for k, v in weights.items()}, d / "prefixed_5.pt")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(d / "st_5.safetensors"))
    torch.save(weights, d / "renamed_5.safetensors")  # a zip file whatever its name says
    write_sharded(root / "sharded_5", weights)
    return root, weights


def test_every_format_gives_the_same_state(same_weights):
    root, weights = same_weights
    paths = sorted((root / "files").iterdir()) + [root / "sharded_5"]
    formats = {p.name: ck.checkpoint_format(p) for p in paths}
    assert formats["st_5.safetensors"] == "safetensors" and formats["renamed_5.safetensors"] == "torch-zip"
    assert formats["legacy_5.pt"] == "torch-pickle" and formats["sharded_5"] == "sharded-safetensors"
    model = build_model("lenet", 10, 1)
    for path in paths:
        state = ck.load_state(path, reference=model)
        assert set(state) == set(weights), path.name
        for k, v in weights.items():
            assert torch.equal(state[k], v), (path.name, k)
    # the prefix given by hand, and the keys as stored without a reference
    assert set(ck.load_state(root / "files" / "prefixed_5.pt", prefix="net.")) == set(weights)
    assert next(iter(ck.load_state(root / "files" / "lightning_5.ckpt"))).startswith("model.")
    assert set(ck.load_state(root / "files" / "ddp_5.pt")) == set(weights)  # wrappers always go
    with pytest.raises(HparrError, match="no key starts with --state-dict-prefix 'head.'"):
        ck.load_state(root / "files" / "prefixed_5.pt", prefix="head.")


def test_safetensors_are_read_lazily(same_weights):
    root, weights = same_weights
    state = ck.load_state(root / "sharded_5")
    assert isinstance(state, ck.LazyState) and state.read == set()
    ck.check_state({k: tuple(v.shape) for k, v in weights.items()}, ck.shapes_of(state), "x")
    assert state.read == set()  # shapes come from the headers
    assert torch.equal(state["features.0.weight"], weights["features.0.weight"])
    assert state.read == {"features.0.weight"}


def test_projections_read_only_the_analyzed_tensors(same_weights, monkeypatch):
    root, _ = same_weights
    opened = []
    real = ck.read_checkpoint

    def spy(path, mmap=True, checkpoint=None):
        opened.append(real(path, mmap, checkpoint))
        return opened[-1]

    monkeypatch.setattr(ck, "read_checkpoint", spy)
    analyzer = projections.SnapshotAnalyzer(ck.ModelConfig("lenet", 10, 1, 32), projections.AnalysisOptions())
    doc = analyzer.analyze_file(root / "files" / "st_5.safetensors")
    convs = {f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12)}
    assert opened[0].state.read == convs
    assert doc["checkpoint_format"] == "safetensors" and doc["epoch"] == "5"


def test_every_format_gives_the_same_statistics(same_weights, tmp_path, capsys):
    root, _ = same_weights
    results = tmp_path / "results"
    rc = main(["projections", "--arch", "lenet", "--dataset", "digits", "--normalize", "--no-progress",
               "--results", str(results), "--load-from", str(root / "files"), str(root / "sharded_5")])
    assert rc == 0, capsys.readouterr().err
    docs = {p.stem: json.loads(p.read_text()) for p in (results / "digits" / "lenet").glob("*.json")}
    assert set(docs) == {"lightning_5", "hparr_5", "bare_5", "legacy_5", "ddp_5", "compiled_5", "prefixed_5",
                         "st_5", "renamed_5", "sharded_5"}
    reference = docs["bare_5"]
    for stem, doc in docs.items():
        for stage in ("0", "1", "2"):
            assert doc[stage] == reference[stage], stem
        assert doc["net"] == reference["net"], stem


def test_every_format_gives_the_same_reinit_results(same_weights, tmp_path):
    from hparr import reinit
    from hparr.data import DataOptions

    root, weights = same_weights
    init = tmp_path / "init"
    init.mkdir()
    save_file({k: v.contiguous() for k, v in build_model("lenet", 10, 1, seed=4).state_dict().items()},
              str(init / "lenet_init_0.safetensors"))
    docs = {}
    for name in ("bare_5.pt", "lightning_5.ckpt", "../sharded_5"):
        settings = reinit.ReinitSettings(load_from=str(root / "files" / name), data=DataOptions("digits"),
                                         arch="lenet", inits_from=str(init), rand=True, seed=1, batch_size=100,
                                         max_test_images=200)
        docs[name] = reinit.run_reinit(settings).document
    first = docs["bare_5.pt"]
    assert first["init_from_epoch"].keys() == {"0", "rand"}
    for name, doc in docs.items():
        assert doc["correct_top1"] == first["correct_top1"] and doc["top1_test"] == first["top1_test"], name


def evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files.write_bytes(path, pickle.dumps({"weight": Evil()}, protocol=2))


def test_malformed_files_each_get_one_clear_error(tmp_path):
    marker = tmp_path / "pwned"
    evil_pickle(tmp_path / "evil.safetensors", marker)
    with pytest.raises(HparrError, match="refused to load"):
        ck.load_state(tmp_path / "evil.safetensors")
    assert not marker.exists()

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(64)}, str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(HparrError, match="truncated or corrupt safetensors file .*cut.safetensors"):
        ck.load_state(tmp_path / "cut.safetensors")

    cases = {"notes.pt": (b"these are my notes\n", "found text starting with 'these are my notes'"),
             "empty.pt": (b"", "found an empty file"),
             "weights.h5": (b"\x89HDF\r\n\x1a\n" + bytes(100), "found an HDF5 file"),
             "blob.bin": (bytes(range(200, 256)) * 3, "found 168 bytes starting with c8 c9")}
    for name, (content, phrase) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(HparrError, match="not a checkpoint hparr can read") as err:
            ck.load_state(tmp_path / name)
        assert phrase in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HparrError, match="found a folder without model.safetensors.index.json"):
        ck.load_state(tmp_path)

    shards = tmp_path / "shards"
    write_sharded(shards, {"a": torch.zeros(2), "b": torch.ones(2), "c": torch.ones(3)}, shards=3)
    (shards / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(HparrError, match="1 shard.* missing: model-00002-of-00003.safetensors"):
        ck.load_state(shards)
    (shards / ck.SHARD_INDEX).write_text("{not json")
    with pytest.raises(HparrError, match="malformed shard index"):
        ck.load_state(shards)


def test_ambiguous_prefix_asks_for_the_flag(tmp_path):
    weights = build_model("lenet", 10, 1).state_dict()
    both = {**{f"model.{k}": v for k, v in weights.items()}, **{f"ema.{k}": v for k, v in weights.items()}}
    torch.save({"state_dict": both}, tmp_path / "two.ckpt")
    with pytest.raises(UsageError, match="several prefixes .*ema., model.*--state-dict-prefix"):
        ck.load_state(tmp_path / "two.ckpt", reference=weights)
    assert set(ck.load_state(tmp_path / "two.ckpt", prefix="ema.", reference=weights)) == set(weights)


def test_find_snapshots_lists_every_format(same_weights, tmp_path):
    from hparr.reinit import read_inits_list

    root, _ = same_weights
    listing = tmp_path / "inits.txt"
    listing.write_text(f"{root / 'sharded_5'}\n{root / 'files' / 'st_5.safetensors'}\n")
    assert read_inits_list(listing) == [root / "sharded_5", root / "files" / "st_5.safetensors"]
    assert read_inits_list(root / "files" / "lightning_5.ckpt") == [root / "files" / "lightning_5.ckpt"]
    found = ck.find_snapshots(root / "files")
    assert {p.name for p in found} >= {"lightning_5.ckpt", "st_5.safetensors", "legacy_5.pt"}
    assert ck.find_snapshots(root / "sharded_5") == [root / "sharded_5"]
    assert ck.epoch_from_filename_or_raise("st_5.safetensors") == 5
    assert ck.epoch_from_filename_or_raise(root / "sharded_5") == 5
    assert ck.snapshot_epoch_or_none({}, "model.safetensors") is None
