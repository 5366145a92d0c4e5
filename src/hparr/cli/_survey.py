"""`hparr survey`: the layers of many networks, and the mechanism's prediction tested across them."""
from __future__ import annotations

from ..layout import SUMMARY_NAME
from ._args import ArgumentParser

DESCRIPTION = (
    "One row per network and layer across any mix of hparr runs and studies (their result files), checkpoints "
    "and ONNX files, and the published networks of a --networks file; then the prediction of the paper's "
    "mechanism tested on them: a trained layer is biased where its input is non-negative (after a ReLU, or raw "
    "[0, 1] pixels), and much less where its input has both signs. Writes survey.csv, networks.csv, by_kind.csv, "
    "verdicts.json, summary.md and survey.png (with control.png where hparr runs differ only in pixel "
    "normalization) to --out. See docs/survey.md.")


def add_arguments(p: ArgumentParser) -> None:
    """The flags of `hparr survey`, their defaults those of `SurveySettings`."""
    from ..null import DEFAULT_SCHEME  # start-up time: the library imports numpy and torch (the defaults are its)
    from ..survey import SurveySettings  # start-up time, as above
    from ._projections import add_init_scheme_argument

    settings = SurveySettings
    p.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR",
                   help="an hparr run or study folder, a checkpoint or ONNX file, or a folder of such files")
    p.add_argument("--networks", type=str, setting=settings, metavar="FILE",
                   help="a networks file: published networks, where their weight files are below --data, what "
                        "their input is and what feeds each layer (docs/survey.md)")
    p.add_argument("--data", type=str, setting=settings, metavar="DIR",
                   help="the folder of the --networks files [%(default)s]")
    p.add_argument("--out", type=str, setting=settings, metavar="DIR", help="output folder [%(default)s]")
    p.add_argument("--include-1x1", action="store_true", setting=settings,
                   help="also analyze 1x1 convolutions of files")
    p.add_argument("--with-linear", action="store_true", setting=settings, help="also analyze Linear layers of files")
    p.add_argument("--level", type=float, setting=settings,
                   help="level of the tests (and of the bias tests of the files analyzed here) [%(default)g]")
    add_init_scheme_argument(p, "initialization assumed for the layers of checkpoints and ONNX files that do not "
                                "record theirs, which sets the null of their bias test (a networks file's entry may "
                                "name its own), as hparr projections --init-scheme", settings,
                             default=f"{DEFAULT_SCHEME}, hparr projections' default")
    p.add_argument("--seed", type=int, setting=settings,
                   help="seed of a Monte-Carlo permutation test (used when the exact one is too large) "
                        "[%(default)s]")


def _g(value: float, spec: str = ".3g") -> str:
    """A number as printed, "n/a" where there is none (a group without layers)."""
    return "n/a" if value is None or value != value else format(value, spec)


def run(args) -> int:
    from .. import survey  # start-up time: the commands import the library when they run

    settings = survey.SurveySettings(inputs=list(args.inputs), networks=args.networks, data=args.data,
                                     out=args.out, include_1x1=args.include_1x1, with_linear=args.with_linear,
                                     level=args.level, seed=args.seed, init_scheme=args.init_scheme)
    result = survey.run_survey(settings)
    written = survey.save(result)
    c = result.comparison
    s, m = c["across_layers"]["share_biased"], c["across_layers"]["deviation"]
    w, reading = c["within_networks"]["deviation"], c["reading"]
    print(f"{c['networks']} networks, {c['layers']} layers: {c['layers_nonneg']} with a non-negative input, "
          f"{c['layers_signed']} with an input of both signs, {c['layers_unknown']} unknown")
    print(f"biased: {s['k1']} of {s['n1']} against {s['k2']} of {s['n2']}: "
          f"{reading['across_layers_share_biased']['boschloo']} (Boschloo p = {_g(s['p_boschloo'])})")
    print(f"mean |mass - 1/2|: {_g(m['mean1'], '.3f')} against {_g(m['mean2'], '.3f')}: "
          f"{reading['across_layers_deviation']['permutation']} (permutation p = {_g(m['p_permutation'])}); "
          f"within {w['n']} networks, paired: {reading['within_networks_deviation']['sign']} "
          f"(sign test p = {_g(w['p_sign'])})")
    print(f"survey in {written[SUMMARY_NAME].parent}")
    return 0
