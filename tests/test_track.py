"""Tracking the bias during training: `hparr train` writes tracking.csv and bias/* TensorBoard tags whose
values are those of `hparr projections` on the snapshots; resume continues the file; Lightning's callback
writes the same tags; the report draws every tracked epoch."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from hparr import checkpoints as ck
from hparr import projections, report
from hparr.cli import main
from hparr.layers import discover_layers
from hparr.models import build_model
from hparr.trackfile import COLUMNS, read_tracking
from hparr.training import BiasTracker

EPOCHS, PER_EPOCH, EVERY = 3, 11, 4  # digits: 1347 training images in batches of 128 -> 11 steps per epoch
STATS = ("N", "d", "stage", "block", "mean", "std", "mass", "n_negative", "p_sign", "p_ks", "p_value",
         "p_adjusted", "biased", "l2_dist", "l_inf_dist")


def train_argv(models, *extra):
    return ["train", "--arch", "lenet", "--dataset", "digits", "--lr", "0.05", "--seed", "0", "--no-progress",
            "--models-path", str(models), *extra]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """lenet on digits for 3 epochs, snapshots after epochs 2 and 3 only (none after epoch 1), tracked every
    4 steps, with TensorBoard; then `hparr projections` of every snapshot."""
    root = tmp_path_factory.mktemp("tracked")
    assert main(train_argv(root / "models", "--epochs", str(EPOCHS), "--snapshot-every", "2",
                           "--track-every-steps", str(EVERY), "--tb-logdir", str(root / "tb"))) == 0
    run_dir = root / "models" / "digits" / "lenet" / "0"
    analyzed = projections.run_projections(projections.ProjectionSettings(
        arch="lenet", dataset="digits", load_from=[run_dir], init_from=str(run_dir / "lenet_init_0.pt"), seed=0,
        normalize=True, progress=False))
    projections.save(analyzed, root / "results")
    by_epoch = {int(doc["epoch"]): doc for doc in analyzed.documents.values()}
    return {"root": root, "run_dir": run_dir, "tb": root / "tb" / "digits" / "lenet" / "0", "docs": by_epoch,
            "rows": read_tracking(run_dir / "tracking.csv")}


def layer_entries(doc):
    """name -> entry of a projections document, with its stage and block (the document's keys)."""
    return {e["name"]: {**e, "stage": int(stage), "block": int(block)}
            for stage, blocks in doc.items() if stage.isdigit() for block, e in blocks.items()}


def test_rows_cover_every_step_and_layer_once(tracked):
    rows = tracked["rows"]
    assert list(rows.columns) == list(COLUMNS)
    ends = [e * PER_EPOCH for e in range(EPOCHS + 1)]
    steps = sorted(set(ends) | set(range(EVERY, EPOCHS * PER_EPOCH, EVERY)))
    assert sorted(rows["step"].unique()) == steps
    assert not rows.duplicated(["step", "name"]).any()
    names = list(layer_entries(tracked["docs"][0]))
    assert all(list(g["name"]) == names for _, g in rows.groupby("step"))
    epochs = rows.groupby("step")["epoch"].first()
    assert all(epochs[s] == (ends.index(s) if s in ends else pytest.approx(s / PER_EPOCH, rel=1e-15)) for s in steps)


def test_tracked_values_equal_the_projections_of_the_snapshots(tracked):
    rows, docs = tracked["rows"], tracked["docs"]
    assert sorted(docs) == [0, 2, 3]  # epoch 1 has no snapshot: only the tracking saw it
    for epoch, doc in docs.items():
        at = rows[(rows["epoch"] == epoch) & (rows["step"] == epoch * PER_EPOCH)].set_index("name")
        entries = layer_entries(doc)
        assert list(at.index) == list(entries)
        for name, entry in entries.items():
            for stat in STATS:
                assert at.loc[name, stat] == entry[stat], (epoch, name, stat, at.loc[name, stat], entry[stat])
    # and against the tidy projections.csv, read back as the projections command wrote it
    table = pd.read_csv(next((tracked["root"] / "results").rglob("projections.csv")))
    table = table[(table["kind"] != "net") & (table["epoch"] == 2)].drop_duplicates("name").set_index("name")
    at = rows[rows["step"] == 2 * PER_EPOCH].set_index("name")
    for stat in ("mean", "std", "mass", "p_value", "p_adjusted", "l2_dist", "l_inf_dist"):
        assert np.array_equal(at[stat].to_numpy(float), table.loc[at.index, stat].to_numpy(float))


def test_tensorboard_tags_and_values_are_the_snapshot_statistics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["tb"]), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    rows, docs = tracked["rows"], tracked["docs"]
    names = list(layer_entries(docs[0]))
    scalar_tags = {t for t in events.Tags()["scalars"] if t.startswith("bias/")}
    assert scalar_tags == {f"bias/{s}/{n}" for s in ("mass", "mean", "l2_dist") for n in names} | {"bias/biased_layers"}
    assert set(events.Tags()["histograms"]) == {f"bias/projections/{n}" for n in names}
    steps = sorted(rows["step"].unique())
    for tag in scalar_tags:
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == steps, tag
        for e in logged:
            at = rows[rows["step"] == e.step].set_index("name")
            if tag == "bias/biased_layers":
                expected = float(at["biased"].sum())
            else:
                _, stat, name = tag.split("/", 2)
                expected = float(at.loc[name, stat])
                if e.step % PER_EPOCH == 0 and e.step // PER_EPOCH in docs:  # a snapshot of this step
                    assert expected == layer_entries(docs[e.step // PER_EPOCH])[name][stat]
            assert e.value == pytest.approx(expected, rel=1e-6, abs=1e-7), (tag, e.step)
    for name in names:
        logged = events.Histograms(f"bias/projections/{name}")
        assert [h.step for h in logged] == steps
        for h in logged:
            if h.step % PER_EPOCH or h.step // PER_EPOCH not in docs:
                continue
            p = np.asarray(layer_entries(docs[h.step // PER_EPOCH])[name]["projections"])
            v = h.histogram_value
            assert v.num == len(p) and sum(v.bucket) == len(p)
            assert (v.min, v.max, v.sum) == pytest.approx((p.min(), p.max(), p.sum()), rel=1e-9, abs=1e-12)


def test_a_writer_of_one_value_at_a_time_gets_the_same_events(tmp_path):
    """A step goes to a writer with `add_summary` (torch's public FileWriter, the writer of `hparr train`) as one
    event; a torch SummaryWriter, whose public calls take one value each, gets the same tags, values and
    histograms value by value, and so does a writer with only `add_scalar` and `add_histogram` (tensorboardX's,
    several Lightning loggers at once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import FileWriter, SummaryWriter

    class OneByOne:
        def __init__(self, writer):
            self.writer = writer

        def add_scalar(self, *args, **kwargs):
            self.writer.add_scalar(*args, **kwargs)

        def add_histogram(self, *args, **kwargs):
            self.writer.add_histogram(*args, **kwargs)

    model = build_model("lenet", 10, 1, 32, seed=1)
    one = FileWriter(str(tmp_path / "one"))
    with SummaryWriter(str(tmp_path / "summary")) as summary, SummaryWriter(str(tmp_path / "each")) as each:
        BiasTracker(model, writer=one, input_shape=(1, 1, 32, 32)).step(5)
        BiasTracker(model, writer=summary, input_shape=(1, 1, 32, 32)).step(5)
        BiasTracker(model, writer=OneByOne(each), input_shape=(1, 1, 32, 32)).step(5)
    one.close()

    def summaries(folder):
        (path,) = (tmp_path / folder).iterdir()
        return [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]

    assert len(summaries("one")) == 1 and len(summaries("summary")) == len(summaries("each")) > 1
    loaded = {d: EventAccumulator(str(tmp_path / d), size_guidance={"scalars": 0, "histograms": 0}).Reload()
              for d in ("one", "summary", "each")}
    one = loaded["one"]
    for other in (loaded["summary"], loaded["each"]):
        assert one.Tags()["scalars"] and sorted(one.Tags()["scalars"]) == sorted(other.Tags()["scalars"])
        for tag in one.Tags()["scalars"]:
            assert [(e.step, e.value) for e in one.Scalars(tag)] == [(e.step, e.value) for e in other.Scalars(tag)]
        assert len(one.Tags()["histograms"]) == 6
        assert sorted(one.Tags()["histograms"]) == sorted(other.Tags()["histograms"])
        for tag in one.Tags()["histograms"]:
            (a,), (b,) = one.Histograms(tag), other.Histograms(tag)
            assert a.step == b.step == 5 and a.histogram_value == b.histogram_value


def test_resume_after_a_stop_continues_without_duplicate_or_missing_rows(tracked, tmp_path):
    # a run stopped after tracking epoch 3 but before its snapshots were written: resume finds the snapshot
    # of epoch 2, whose rows stay, and computes epoch 3 again
    models = tmp_path / "models"
    shutil.copytree(tracked["root"] / "models", models)
    run_dir = models / "digits" / "lenet" / "0"
    for name in ("lenet_2.tar", "lenet_3.pt"):
        (run_dir / name).unlink()
    assert main(train_argv(models, "--epochs", str(EPOCHS), "--snapshot-every", "2", "--track-every-steps",
                           str(EVERY), "--tb-logdir", "", "--resume-from", "auto")) == 0
    assert (run_dir / "tracking.csv").read_text() == (tracked["run_dir"] / "tracking.csv").read_text()

    # a resumed run whose snapshot has no rows yet (here: the file is gone) tracks the resumed weights
    (run_dir / "tracking.csv").unlink()
    assert main(train_argv(models, "--epochs", "2", "--tb-logdir", "",
                           "--resume-from", str(run_dir / "lenet_1.tar"))) == 0
    rows = read_tracking(run_dir / "tracking.csv")
    expected = tracked["rows"][tracked["rows"]["step"] == 2 * PER_EPOCH]
    pd.testing.assert_frame_equal(rows, expected.reset_index(drop=True))


def test_no_track_writes_no_rows_and_no_tags_and_trains_the_same(tracked, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(train_argv(tmp_path / "models", "--epochs", "1", "--no-track", "--tb-logdir",
                           str(tmp_path / "tb"))) == 0
    run_dir = tmp_path / "models" / "digits" / "lenet" / "0"
    assert not (run_dir / "tracking.csv").exists()
    events = EventAccumulator(str(tmp_path / "tb" / "digits" / "lenet" / "0")).Reload()
    assert "Loss/train" in events.Tags()["scalars"]
    assert not [t for kind in ("scalars", "histograms") for t in events.Tags()[kind] if t.startswith("bias/")]
    # tracking does not change the training: the untracked weights after epoch 1 have the statistics
    # that the tracked run recorded then (an epoch it kept no snapshot of)
    layers, _ = discover_layers(build_model("lenet", 10, 1, 32), (2, 1, 32, 32))
    table = projections.analyze_layers(layers, ck.load_state_dict_file(run_dir / "lenet_1.pt"),  # as the snapshot
                                       init=ck.load_state_dict_file(run_dir / "lenet_init_0.pt")).table
    table = table.set_index("name")
    at = tracked["rows"][tracked["rows"]["step"] == PER_EPOCH].set_index("name")
    for stat in STATS:
        assert np.array_equal(at[stat].to_numpy(float), table.loc[at.index, stat].to_numpy(float)), stat


def test_lightning_callback_writes_the_same_tags_and_values_and_resumes(tracked, tmp_path):
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.data import DataLoader, TensorDataset

    from hparr.integrations.lightning import BiasCallback

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = build_model("lenet", 10, 1, 32, seed=0)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 1, 32, 32, generator=gen), torch.randint(0, 10, (48,), generator=gen))
    module = Classifier()
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)

    def trainer(epochs, logger):
        return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[
                              BiasCallback(csv_path=tmp_path / "tracking.csv", module="net", every_n_steps=2),
                              pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])

    trainer(1, logger).fit(module, DataLoader(data, batch_size=16))

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0}).Reload()
    ours = EventAccumulator(str(tracked["tb"])).Reload()
    bias_tags = {kind: {t for t in ours.Tags()[kind] if t.startswith("bias/")} for kind in ("scalars", "histograms")}
    assert {t for t in events.Tags()["scalars"] if t.startswith("bias/")} == bias_tags["scalars"]
    assert set(events.Tags()["histograms"]) == bias_tags["histograms"]

    expected = projections.layer_stats(module.net, init=init, input_shape=(2, 1, 32, 32)).table.set_index("name")
    rows = read_tracking(tmp_path / "tracking.csv")
    assert list(rows["step"].unique()) == [0, 2, 3] and list(rows["epoch"].unique()) == [0.0, 2 / 3, 1.0]
    final = rows[rows["step"] == 3].set_index("name")
    for stat in STATS:
        assert np.array_equal(final[stat].to_numpy(float), expected.loc[final.index, stat].to_numpy(float)), stat
    for name in final.index:
        for stat in ("mass", "mean", "l2_dist"):
            value = events.Scalars(f"bias/{stat}/{name}")[-1]
            assert value.step == 3 and value.value == pytest.approx(expected.loc[name, stat], rel=1e-6, abs=1e-7)

    # resumed from Lightning's checkpoint: the rows continue, the distances are from the same initialization
    again = Classifier()
    trainer(2, False).fit(again, DataLoader(data, batch_size=16), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    rows = read_tracking(tmp_path / "tracking.csv")
    assert list(rows["step"].unique()) == [0, 2, 3, 4, 6] and not rows.duplicated(["step", "name"]).any()
    expected = projections.layer_stats(again.net, init=init, input_shape=(2, 1, 32, 32)).table.set_index("name")
    final = rows[rows["step"] == 6].set_index("name")
    assert np.array_equal(final["l2_dist"].to_numpy(float), expected.loc[final.index, "l2_dist"].to_numpy(float))


def test_the_report_draws_every_tracked_epoch(tracked, tmp_path):
    results = report.load_run(tracked["root"], exclude=[tracked["root"] / "report"])
    curves = report.tracked_curves(results)
    assert sorted(curves["epoch"][curves["epoch"] % 1 == 0].unique()) == [0, 1, 2, 3]  # epoch 1: no snapshot
    assert any("tracking.csv" in note for note in results.notes)
    written = report.build_report(tracked["root"], tmp_path / "report")
    assert "mass_mean_by_epoch.png" in written
    assert "tracking.csv" in (tmp_path / "report" / "summary.md").read_text()


def test_the_report_of_a_folder_finds_the_tracking_of_its_one_run_below_it(tracked, tmp_path):
    """Snapshots analyzed from a copy (no tracking.csv beside them): `hparr report FOLDER` of a folder that holds
    one run takes the tracking.csv below that folder, as `build_report` of the folder does."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tracked["run_dir"], copy, ignore=shutil.ignore_patterns("tracking.csv", "*.log", "*.lock"))
    root = tmp_path / "root"
    analyzed = projections.run_projections(projections.ProjectionSettings(
        arch="lenet", dataset="digits", load_from=[copy], init_from=str(copy / "lenet_init_0.pt"), seed=0,
        normalize=True, progress=False))
    projections.save(analyzed, root / "results")
    (root / "models").mkdir()
    shutil.copy(tracked["run_dir"] / "tracking.csv", root / "models" / "tracking.csv")
    shutil.rmtree(copy)
    written = report.build_reports(root)
    assert len(written) == 1
    assert "models/tracking.csv" in (root / "report" / "summary.md").read_text()


def test_tracker_in_a_plain_loop_and_its_file(tmp_path):
    model = build_model("lenet", 10, 1, 32, seed=1)
    path = tmp_path / "tracking.csv"
    path.write_text("step,epoch,name,mass,mean,extra\n0,0.0,features.0,0.5,0.0,x\n")  # its rows stay, in our columns
    tracker = BiasTracker(model, csv_path=path, input_shape=(1, 1, 32, 32), histograms=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    for step in (1, 2, 3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        table = tracker.step(step, flush=step == 3).table
        if step == 1:
            assert len(read_tracking(path)) == 1  # queued, not written
            tracker.discard_after(10)  # nothing to drop: the queued rows stay queued
    tracker.sync()
    rows = read_tracking(path)
    assert list(rows.columns) == list(COLUMNS) and list(rows["step"].unique()) == [0, 1, 2, 3]
    assert rows.loc[0, "mass"] == 0.5 and math.isnan(rows.loc[0, "std"]) and rows["epoch"].iloc[1:].isna().all()
    expected = projections.layer_stats(model, init=tracker.init, input_shape=(1, 1, 32, 32)).table
    assert np.array_equal(table["l2_dist"], expected["l2_dist"]) and (table["l2_dist"] > 0).all()
    tracker.discard_after(1)
    tracker.close()
    assert list(read_tracking(path)["step"].unique()) == [0, 1]


def test_a_failed_write_of_the_file_is_raised_by_the_tracker(tmp_path, monkeypatch):
    """tracking.csv is written by a thread of its own: a write that fails there (here a full disk) is raised
    by the tracker's next flush, `sync` or `close`, as the one-line error of any failed write, and the file
    written before is kept."""
    import errno
    import os

    from hparr import files
    from hparr.errors import HparrError

    path = tmp_path / "tracking.csv"
    tracker = BiasTracker(build_model("lenet", 10, 1, 32, seed=1), csv_path=path, input_shape=(1, 1, 32, 32),
                          histograms=False)
    tracker.step(0)
    tracker.sync()
    before = path.read_text()

    def full_disk(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_new_file_beside", full_disk)
    tracker.step(1)  # handed to the thread
    with pytest.raises(HparrError, match=f"^no space left on device while writing {path}; the previous files "):
        tracker.sync()
    assert path.read_text() == before
    monkeypatch.undo()
    tracker.step(2)
    tracker.sync()  # the failure was told once; the next write holds every row
    assert list(read_tracking(path)["step"].unique()) == [0, 1, 2]
    monkeypatch.setattr(files, "_new_file_beside", full_disk)
    tracker.step(3)
    with pytest.raises(HparrError, match="no space left on device"):
        tracker.close()
    assert list(read_tracking(path)["step"].unique()) == [0, 1, 2]


def test_trackfile_reads_without_torch(tracked):
    code = ("import sys; from hparr.trackfile import read_tracking; "
            f"rows = read_tracking({str(tracked['run_dir'] / 'tracking.csv')!r}); "
            "assert len(rows) and 'torch' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
