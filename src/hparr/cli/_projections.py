"""`hparr projections`: the paper's compute_projections.py, for one model or many snapshots at once."""
from __future__ import annotations

import sys

from ..layout import PROJECTIONS_LOG
from ._args import ArgumentParser, dataset_name
from ._train import add_arch_argument, add_state_dict_prefix_argument, require_arch_and_dataset

DESCRIPTION = (
    "Per-layer statistics of the conv filters' orientation relative to the identity line (projections, "
    "mean, mass, std, distances from initialization) and a test of bias against the random-initialization "
    "null. Writes one JSON per snapshot to <results>/<dataset>[_<K>][/train_<N>][/noise_<pct>|/pixel_shuffle]/<arch>"
    "[/<seed>]/<snapshot name>.json (the condition of the run, as its snapshots record it) and a "
    "tidy table of every snapshot x layer (projections.csv) beside them. Without --load-from it analyzes the "
    "random initialization of --arch with --seed (init_<arch>.json, epoch 0), or with --pretrained "
    "torchvision's ImageNet weights (pretrained_<arch>.json, epoch -1).")


def add_arguments(p: ArgumentParser) -> None:
    """The flags of `hparr projections`, their defaults those of `ProjectionSettings`."""
    from ..projections import ProjectionSettings  # start-up time: the library imports torch (the defaults are its)

    settings = ProjectionSettings
    add_arch_argument(p)
    p.add_argument("--dataset", type=dataset_name, default=None,
                   help="dataset the model was trained on (sets classes, channels, image size; any case); "
                        "run without it to list the datasets (not needed without --arch, or with --num-classes, "
                        "--in-channels and --input-size)")
    p.add_argument("--data-path", type=str, setting=settings,
                   help="folder holding the dataset files (for --probe-data), or with --dataset imagefolder the "
                        "image folder, whose classes, channels and size the model has [%(default)s]")
    p.add_argument("--dataset-args", type=str, setting=settings, metavar="K=V,...",
                   help="with --dataset module.path:factory: its keyword arguments [none]")
    p.add_argument("--subsample-classes", type=int, setting=settings,
                   help="the snapshots come from a run on this many classes (0 = all) [%(default)s]; results go "
                        "to <results>/<dataset>_<K>/")
    p.add_argument("--load-from", nargs="+", action="extend", setting=settings, metavar="PATH",
                   help="checkpoint files (hparr or original snapshots, state_dicts, .safetensors, Lightning "
                        ".ckpt, ONNX models), sharded .safetensors folders, directories or globs (repeatable); "
                        "without it the random "
                        "initialization (or --pretrained weights) is analyzed")
    p.add_argument("--init-from", type=str, setting=settings, metavar="FILE",
                   help="snapshot at initialization: adds l2_dist and l_inf_dist per layer")
    p.add_argument("--pretrained", action="store_true", setting=settings,
                   help="analyze the ImageNet weights of --arch from the local torch hub (or Hugging Face) cache")
    p.add_argument("--weights", type=str, setting=settings, metavar="FILE",
                   help="file of pretrained weights to analyze, any checkpoint format (implies --pretrained)")
    add_state_dict_prefix_argument(p, settings)
    p.add_argument("--cuda", action="store_true", help="compute on the GPU (falls back to the CPU with a warning)")
    p.add_argument("--normalize", action="store_true", setting=settings,
                   help="cosine projections <w,1>/(||w|| sqrt(d)) instead of the plain sums <w,1>")
    p.add_argument("--with-linear", action="store_true", setting=settings, help="also analyze Linear layers")
    p.add_argument("--include-1x1", action="store_true", setting=settings, help="also analyze 1x1 convolutions")
    p.add_argument("--level", type=float, setting=settings,
                   help="level of the bias test, Holm-corrected over the layers of a network [%(default)g]")
    add_init_scheme_argument(p, "initialization assumed for the layers whose model does not record how it drew "
                                "them (every layer without --arch), which sets the null of their KS test", settings)
    p.add_argument("--results", type=str, default="./results", help="results folder [%(default)s]")
    p.add_argument("--log", type=str, default=PROJECTIONS_LOG,
                   help="log file name; written beside the JSON results (not under ./log as the original) "
                        "[%(default)s]")
    p.add_argument("--seed", type=int, setting=settings,
                   help="seed of the run (results go to <arch>/<seed>/; unset: the seed the snapshots record); "
                        "random initialization uses it (0 if unset)")
    p.add_argument("--parquet", action="store_true", help="also write the table as projections.parquet")
    p.add_argument("--overwrite", action="store_true", setting=settings,
                   help="recompute snapshots whose JSON already exists")
    p.add_argument("--strict", action="store_true", setting=settings,
                   help="refuse a snapshot holding tensors that --arch does not have (by default they are named "
                        "and ignored: only the conv weights are read)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--probe-data", action="store_true",
                   help="run the first 256 test images of --dataset through each model (read from --data-path, "
                        "normalized as the snapshot records, else as --unnormalize says) and record the share of "
                        "negative values in every layer's input (needs --arch, or ONNX files)")
    p.add_argument("--unnormalize", action="store_true",
                   help="--probe-data: no mean/std normalization of the images (pixels in [0, 1])")
    add_model_shape_arguments(p, settings)


def add_init_scheme_argument(p: ArgumentParser, what: str, settings, default: str | None = None) -> None:
    """--init-scheme, of `hparr projections` and `hparr survey`: `what` it is to the command, then the schemes
    and laws it takes; its default is the `init_scheme` of `settings`, shown as `default` where given (a command
    whose unset value means another one's)."""
    p.add_argument("--init-scheme", type=str, setting=settings, metavar="SCHEME",
                   help=f"{what}: pytorch (PyTorch's default, kaiming uniform), kaiming_uniform, xavier_uniform, "
                        "uniform, kaiming_normal, xavier_normal, normal, trunc_normal (cut at +/-2 with std 0.02: "
                        "Gaussian), trunc_normal_tf (cut at 2 sd), or a law: gaussian, uniform, truncnorm(C) "
                        f"[{default or '%(default)s'}]")


def add_model_shape_arguments(p: ArgumentParser, settings) -> None:
    """--num-classes, --in-channels and --input-size: the model's shape where the dataset does not imply it
    (their defaults those of `settings`: None, the dataset's)."""
    p.add_argument("--num-classes", type=int, setting=settings, metavar="N",
                   help="classes of the model's output, instead of the dataset's [the dataset's]")
    p.add_argument("--in-channels", type=int, setting=settings, metavar="C",
                   help="input channels of the model, instead of the dataset's [the dataset's]")
    p.add_argument("--input-size", type=int, setting=settings, metavar="S",
                   help="input height and width of the model, instead of the dataset's [the dataset's]")


def check_model_shape(args) -> None:
    """--num-classes, --in-channels and --input-size of a parsed command line: at least 1."""
    from ..projections import check_model_shape  # start-up time: the commands import the library when they run

    check_model_shape(args.num_classes, args.in_channels, args.input_size)


def settings_from_args(args):
    """The settings of a parsed `hparr projections` command line (validated by `ProjectionSettings.validate`;
    the device is chosen once they are valid)."""
    from ..data import canonical_dataset_args  # start-up time, as above
    from ..errors import UsageError
    from ..projections import ProjectionSettings  # start-up time, as above

    probe = None
    if args.probe_data:
        from ..data import DataOptions  # start-up time, as above

        if args.dataset is None:
            raise UsageError("--probe-data needs --dataset: the data whose test images are run through the models")
        probe = DataOptions(dataset=args.dataset, data_path=args.data_path, unnormalize=args.unnormalize,
                            subsample_classes=args.subsample_classes, input_size=args.input_size,
                            dataset_args=canonical_dataset_args(args.dataset_args))
    return ProjectionSettings(
        arch=args.arch, dataset=args.dataset, load_from=args.load_from, init_from=args.init_from, seed=args.seed,
        subsample_classes=args.subsample_classes, normalize=args.normalize, with_linear=args.with_linear,
        include_1x1=args.include_1x1, level=args.level, pretrained=args.pretrained, weights=args.weights,
        state_dict_prefix=args.state_dict_prefix, overwrite=args.overwrite, strict=args.strict,
        progress=not args.no_progress,
        num_classes=args.num_classes, in_channels=args.in_channels, input_size=args.input_size, probe_data=probe,
        data_path=args.data_path, dataset_args=canonical_dataset_args(args.dataset_args),
        init_scheme=args.init_scheme)


def final_headline(documents: dict[str, dict]) -> str:
    """The bias count of the final snapshot among `documents` ({file name: projections document}): the one of
    the latest epoch (of two of one epoch, the later file in order), or the last file where none records an
    epoch. A count is always of one snapshot's layers."""
    from ..results import epoch_of  # start-up time: the commands import the library when they run

    names = list(documents)
    dated = [(epoch_of(documents[name]), i) for i, name in enumerate(names) if epoch_of(documents[name]) is not None]
    name = names[max(dated)[1]] if dated else names[-1]
    doc, epoch = documents[name], epoch_of(documents[name])
    net = doc["net"]
    which = name.removesuffix(".json") + (f", epoch {epoch}" if epoch is not None else ", no epoch recorded")
    correction = doc.get("correction")
    adjusted = "Holm-adjusted p-values" if correction == "holm" else f"p-values corrected by {correction}"
    return (f"{'final: ' if len(names) > 1 else ''}{net['n_biased']} of {net['n_layers']} layers biased at level "
            f"{doc['level']:g} ({adjusted}), in {which}")


def run(args) -> int:
    from .. import projections  # start-up time, as above
    from ..training import select_device  # start-up time, as above

    check_model_shape(args)
    own_shape = None not in (args.num_classes, args.in_channels, args.input_size)
    checkpoint_only = args.arch is None and bool(args.load_from)
    if not checkpoint_only and not (args.dataset is None and own_shape and args.arch is not None):
        require_arch_and_dataset(args)
    settings = settings_from_args(args)
    settings.validate()
    settings.device = select_device(
        args.cuda, warn=lambda message: print(f"hparr projections: warning: {message}", file=sys.stderr))
    result = projections.run_projections(settings, args.results)
    out_dir = projections.save(result, args.results, parquet=args.parquet, log_name=args.log)
    for name, why in result.replaced.items():
        print(f"hparr projections: recomputed {out_dir / name}: {why}", file=sys.stderr)
    if result.adopted:
        print(f"hparr projections: kept {len(result.adopted)} result(s) of these snapshots from "
              f"{next(iter(result.adopted.values())).parent} (an earlier version's folder), copied to {out_dir}",
              file=sys.stderr)
    n, computed = len(result.documents), len(result.computed)
    replaced = f" ({len(result.replaced)} replaced: inputs or settings changed)" if result.replaced else ""
    print(f"{n} snapshot(s): {computed} computed{replaced}, {n - computed} kept; results in {out_dir}")
    print(final_headline(result.documents))
    if checkpoint_only:
        orders = {d.get("file_order") for d in result.documents.values()}
        order = "in the order of their names (natural sort: the file keeps no order)" if orders == {"natural"} else \
            "in the network's order, as the file stores them (ONNX: its graph's)" if orders == {"insertion"} else \
            "in each file's order (the network's where the file keeps it, else by name)"
        print(f"checkpoint only: every conv weight of the file(s), {order}; stage and block unknown")
    return 0
