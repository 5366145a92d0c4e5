"""Benchmark of `hparr projections` over many vgg11 snapshots, against the naive way.

`run()` writes vgg11 (10 classes) snapshots in the original code's formats (`vgg11_init_0.pt`, then
`vgg11_<e>.tar` dicts, then a final `vgg11_<E>.pt`) whose conv weights drift from one to the next,
times the command over all of them, and times the naive way (build the model, load the snapshot with
load_state_dict, compute) on a few, so both give snapshots per second.

To keep disk use moderate, the classifier's two big weight matrices (25088x4096 and 4096x4096, ~490 MB)
are saved as broadcast views of a single value: every file is still a complete state_dict of the right
shapes (~37 MB). A second case writes `full_size` snapshots with every tensor stored in full (~530 MB
each), as training writes them. The files are read back from a warm page cache. Everything is deleted
at the end.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hparr import checkpoints, files, layout
from hparr.cli import main as hparr_main
from hparr.models import build_model
from hparr.projections import layer_stats

from .common import pick, timed

ARCH = "vgg11"


def write_snapshots(directory: Path, n: int, full_size: bool = False, seed: int = 0) -> list[Path]:
    """`n` snapshots of vgg11 in the original formats; the conv weights drift towards the positive orthant."""
    state = build_model(ARCH, num_classes=10, seed=seed).state_dict()
    conv = [k for k, v in state.items() if k.startswith("features.") and v.dim() == 4]
    if not full_size:
        for k, v in state.items():
            if k.startswith("classifier.") and v.numel() > 1_000_000:
                state[k] = torch.zeros(1, dtype=v.dtype).expand(v.shape)
    gen = torch.Generator().manual_seed(seed + 1)
    drift = {k: state[k].std() * (torch.randn(state[k].shape, generator=gen) + 1.0) for k in conv}
    epochs = max(n - 2, 0)
    paths = []
    for i in range(n):
        t = i / max(n - 1, 1)
        snap = dict(state)
        snap.update({k: state[k] + 0.5 * t * drift[k] for k in conv})
        if i == 0:
            path, payload = directory / layout.init_name(ARCH), snap
        elif i == n - 1:
            path, payload = directory / layout.final_name(ARCH, epochs), snap
        else:
            e = i - 1
            path = directory / layout.epoch_name(ARCH, e)
            payload = {"epoch": e, "top1_acc": 10.0 + e, "top5_acc": 50.0 + e, "model_state_dict": snap,
                       "optimizer_state_dict": {"state": {}, "param_groups": [
                           {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "params": list(range(len(snap)))}]},
                       "scheduler_state_dict": {}}
        files.save_torch(payload, path)
        paths.append(path)
    return paths


def _command(snapshots: Path, results: Path) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(None):
        rc = hparr_main(["projections", "--arch", ARCH, "--dataset", "cifar10", "--normalize", "--no-progress",
                         "--load-from", str(snapshots), "--results", str(results)])
    if rc != 0:
        raise RuntimeError(f"hparr projections failed with exit code {rc}")
    return time.perf_counter() - start


def _naive(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        model = build_model(ARCH, num_classes=10)
        checkpoints.load_model_weights(model, path)
        layer_stats(model, normalize=True)
    return time.perf_counter() - start


def _case(name: str, count: int, seconds: float, **extra) -> dict:
    return {"case": name, "snapshots": count, "seconds": round(seconds, 3),
            "snapshots_per_s": round(count / seconds, 2), **extra}


def run(mode: str = "default", workdir: str | None = None) -> list[dict]:
    """The command on compact and full-size snapshots against the naive way, then one resnet50 file."""
    n, full_size, baseline, repeats = pick(mode, quick=(10, 1, 2, 1), default=(30, 2, 3, 3), full=(100, 3, 5, 7))
    return (snapshots_case(n, workdir, full_size, baseline) + safetensors_case(workdir, repeats=repeats)
            + hash_case(workdir, repeats=repeats) + onnx_case(workdir, repeats=repeats))


def snapshots_case(n: int = 100, workdir: str | None = None, full_size: int = 3, baseline: int = 5) -> list[dict]:
    """Time the command on `n` compact and `full_size` full-size snapshots, and the naive way on a few."""
    root = Path(tempfile.mkdtemp(prefix="hparr-bench-projections-", dir=workdir))
    out = []
    try:
        for label, count, full in (("", n, False), ("_fullsize", full_size, True)):
            if count <= 0:
                continue
            snaps = files.ensure_dir(root / f"snapshots{label}")
            paths = write_snapshots(snaps, count, full_size=full)
            mb = round(sum(p.stat().st_size for p in paths) / count / 2**20, 1)
            fast = _command(snaps, root / f"results{label}")
            few = paths[:min(baseline, count)]
            slow = _naive(few)
            ratio = round((count / fast) / (len(few) / slow), 1)
            out.append(_case(f"projections_{ARCH}{label}", count, fast, file_mb=mb, speedup_vs_naive=ratio))
            out.append(_case(f"projections_{ARCH}{label}_naive", len(few), slow, file_mb=mb))
            shutil.rmtree(snaps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


if __name__ == "__main__":
    import sys

    for row in run(sys.argv[1] if len(sys.argv) > 1 else "default"):
        print(row)


# --- one ResNet-50-size .safetensors file: only the analyzed tensors are read ----------------------

def _evict(path: Path) -> None:
    """Drop `path` from the page cache (its own pages only), so that the next read comes from disk."""
    import os

    with open(path, "rb") as f:
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def safetensors_case(workdir: str | None = None, arch: str = "resnet50", num_classes: int = 1000,
                     input_size: int = 224, repeats: int = 7) -> list[dict]:
    """Reading one checkpoint for `hparr projections`: a .safetensors file, memory-mapped, of which only the
    analyzed conv weights are read (after the header's shapes are checked against the model), against
    `torch.load` of the same weights saved with torch.save, read whole (both then sum the analyzed weights,
    so that every byte of them is read). Also the whole per-file analysis
    (`SnapshotAnalyzer.analyze_file`) against torch.load followed by the same statistics. Best of `repeats`;
    "cold": the file is first dropped from the page cache (its own pages, with posix_fadvise)."""
    from safetensors.torch import save_file

    from hparr import projections

    root = Path(tempfile.mkdtemp(prefix="hparr-bench-safetensors-", dir=workdir))
    try:
        state = build_model(arch, num_classes=num_classes, input_size=input_size, seed=0).state_dict()
        st, pt = root / f"{arch}_1.safetensors", root / f"{arch}_1.pt"
        save_file({k: v.contiguous() for k, v in state.items()}, str(st))
        torch.save(state, pt)
        del state
        config = checkpoints.ModelConfig(arch, num_classes, 3, input_size)
        analyzer = projections.SnapshotAnalyzer(config, projections.AnalysisOptions(normalize=True))
        setup, (layers, _, reference) = timed(analyzer.plan, config)
        keys = [layer.weight_key for layer in layers]
        last = []

        def read_ours():
            ckpt = checkpoints.read_checkpoint(st)
            checkpoints.check_state(reference, checkpoints.shapes_of(ckpt.state), str(st))
            last[:] = [ckpt.state]
            return [float(ckpt.state[k].sum()) for k in keys]  # touches every byte of the analyzed weights

        def read_whole():
            whole = torch.load(pt, map_location="cpu", weights_only=True)
            return [float(whole[k].sum()) for k in keys]

        def analyze_whole():
            return projections.analyze_layers(layers, torch.load(pt, map_location="cpu", weights_only=True),
                                              normalize=True)

        cases = {"read": (read_ours, st), "torch_load": (read_whole, pt),
                 "analyze": (lambda: analyzer.analyze_file(st), st), "torch_load_analyze": (analyze_whole, pt)}
        times: dict[str, list[float]] = {f"{name}_{t}": [] for name in cases for t in ("cold", "warm")}
        for _ in range(repeats):
            for name, (fn, path) in cases.items():
                _evict(path)
                times[f"{name}_cold"].append(timed(fn)[0])
                times[f"{name}_warm"].append(timed(fn)[0])
        best = {k: min(v) for k, v in times.items()}
        state = last[0]
        read_bytes = sum(state[k].numel() * state[k].element_size() for k in sorted(state.read))
        mb = 2**20
        row = {"case": f"projections_{arch}_safetensors", "file_mb": round(st.stat().st_size / mb, 1),
               "read_mb": round(read_bytes / mb, 1), "tensors_read": len(state.read), "tensors": len(state)}
        row.update({f"{k}_s": round(v, 4) for k, v in best.items()})
        for t in ("cold", "warm"):
            row[f"read_speedup_{t}"] = round(best[f"torch_load_{t}"] / best[f"read_{t}"], 2)
            row[f"analyze_speedup_{t}"] = round(best[f"torch_load_analyze_{t}"] / best[f"analyze_{t}"], 2)
        row["plan_s"] = round(setup, 3)
        return [row]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the cost of recording what a result was computed from ------------------------------------------

def hash_case(workdir: str | None = None, arch: str = "resnet50", num_classes: int = 1000, input_size: int = 224,
              repeats: int = 7) -> list[dict]:
    """The content hash a projection result records of its checkpoint (`checkpoints.tensors_digest` of the
    analyzed tensors, every conv and Linear weight here) against the whole per-file analysis that includes it
    (`SnapshotAnalyzer.analyze_file`), on a torch.save file of `arch` (resnet50: 100 MB). Best of `repeats`,
    warm page cache; `hash_share` is the hash over the analysis without it."""
    from hparr import projections

    root = Path(tempfile.mkdtemp(prefix="hparr-bench-hash-", dir=workdir))
    try:
        path = root / f"{arch}_1.pt"
        torch.save(build_model(arch, num_classes=num_classes, input_size=input_size, seed=0).state_dict(), path)
        config = checkpoints.ModelConfig(arch, num_classes, 3, input_size)
        analyzer = projections.SnapshotAnalyzer(config, projections.AnalysisOptions(with_linear=True,
                                                                                     include_1x1=True))
        doc = analyzer.analyze_file(path)
        keys = doc["checkpoint"]["keys"]
        analyze, digest = [], []
        for _ in range(repeats):
            analyze.append(timed(analyzer.analyze_file, path)[0])
            state = checkpoints.read_checkpoint(path).state
            weights = {k: state[k] for k in keys}
            digest.append(timed(checkpoints.tensors_digest, weights, keys)[0])
        hashed = sum(weights[k].numel() * weights[k].element_size() for k in keys)
        a, h = min(analyze), min(digest)
        return [{"case": f"projections_{arch}_hash", "file_mb": round(path.stat().st_size / 2**20, 1),
                 "hashed_mb": round(hashed / 2**20, 1), "algorithm": doc["checkpoint"]["hash"].split(":")[0],
                 "analyze_s": round(a, 4), "hash_s": round(h, 4), "hash_share": round(h / (a - h), 4)}]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- one 12 MB ONNX file: its conv weights read from the graph's initializers, nothing converted -----------

def onnx_case(workdir: str | None = None, arch: str = "mobilenet_v2", num_classes: int = 700,
              repeats: int = 7) -> list[dict]:
    """`hparr projections --load-from FILE.onnx` (no --arch: the graph's conv nodes, their weights read from the
    initializers) on a 12 MB file this case exports itself: torchvision's mobilenet_v2 with 700 classes, exported
    by torch's TorchScript exporter in eval mode (its BatchNorms folded into the convs: 52 convs, 34 of them 1x1,
    17 depthwise, 18 analyzed). Timed in the running process (warm: the onnx package imported, best of
    `repeats`) against the same command on the same weights saved as a torch state_dict (checkpoint-only,
    `ratio_vs_torch_pt`), and once as a fresh `python -m hparr` process (`cold_process_s`: Python, torch and onnx
    imported, the file read, the results written). Target: under 1 s on 2 cores."""
    import os
    import subprocess
    import sys
    import warnings

    root = Path(tempfile.mkdtemp(prefix="hparr-bench-onnx-", dir=workdir))
    try:
        model = build_model(arch, num_classes=num_classes, input_size=224, seed=0).eval()
        path = root / f"{arch}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17)
        import onnx

        from hparr.checkpoints.onnx_file import read_onnx

        graph = read_onnx(path)
        # the same tensors as a torch state_dict, each conv's weight and bias named after its node
        names = {}
        for node in graph.nodes:
            if node.op_type == "Conv":
                names.update(zip(node.inputs[1:], (f"{node.name}.weight", f"{node.name}.bias")))
        folded = {names.get(t.name, t.name): torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
                  for t in onnx.load(str(path)).graph.initializer}
        pt = root / f"{arch}.pt"
        torch.save(folded, pt)

        def command(source: Path, results: Path) -> float:
            start = time.perf_counter()
            with contextlib.redirect_stdout(None):
                rc = hparr_main(["projections", "--load-from", str(source), "--results", str(results), "--overwrite",
                                 "--no-progress"])
            if rc != 0:
                raise RuntimeError(f"hparr projections failed with exit code {rc}")
            return time.perf_counter() - start

        warm = min(command(path, root / "results_onnx") for _ in range(repeats))
        torch_pt = min(command(pt, root / "results_pt") for _ in range(repeats))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hparr", "projections", "--load-from", str(path), "--results",
                        str(root / "results_cold"), "--no-progress"], check=True, capture_output=True,
                       env=dict(os.environ))
        cold = time.perf_counter() - start
        convs = sum(1 for n in graph.nodes if n.op_type == "Conv")
        return [{"case": "projections_onnx_12mb", "file_mb": round(path.stat().st_size / 2**20, 1), "convs": convs,
                 "nodes": len(graph.nodes), "seconds": round(warm, 4), "torch_pt_s": round(torch_pt, 4),
                 "ratio_vs_torch_pt": round(warm / torch_pt, 2), "cold_process_s": round(cold, 3),
                 "target_s": 1.0}]
    finally:
        shutil.rmtree(root, ignore_errors=True)
