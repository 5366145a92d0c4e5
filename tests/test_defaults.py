"""One source per default: every flag that sets an option of a settings dataclass (or of `hparr reproduce`'s
recipe) defaults to that option's default, and its help shows it. The commands' flags are enumerated through the
parsers' own list (`ArgumentParser.arguments`); the expected values come from the dataclasses, not from the CLI."""
import pytest

from hparr.cli import build_parser
from hparr.cli._args import ArgumentParser, default_of
from hparr.data import DataOptions
from hparr.defaults import REPRODUCE_RECIPE
from hparr.pipeline import ReproduceSettings, reproduce_recipe
from hparr.projections import ProjectionSettings
from hparr.reinit import ReinitSettings
from hparr.results import parse_eval_splits
from hparr.study import SlurmOptions, StudySettings, parse_floats, parse_ints
from hparr.survey import SurveySettings
from hparr.training import TrainSettings

from conftest import command_parser, help_entries

TRAIN = (TrainSettings, DataOptions)
# the settings each command's flags set, the first that has an option of the flag's name wins (a command's
# preset before the dataclasses it fills)
SETTINGS = {
    "train": TRAIN,
    "reproduce": (ReproduceSettings, REPRODUCE_RECIPE, *TRAIN),
    "study": (StudySettings, SlurmOptions, ReproduceSettings, REPRODUCE_RECIPE, *TRAIN),
    "reinit": (ReinitSettings, DataOptions),
    "projections": (ProjectionSettings,),
    "survey": (SurveySettings,),
}
# flags whose option has another name or form: dest -> (settings, option, the parsed value as the option's)
OTHER_FORM = {
    "eval_split": (ReproduceSettings, "eval_splits", lambda v: tuple(parse_eval_splits(v))),
    "time": (SlurmOptions, "time_min", lambda v: v),
    "setup": (SlurmOptions, "setup", tuple),  # a repeatable flag: argparse appends to a list
    "probe_data": (ProjectionSettings, "probe_data", lambda v: v or None),  # a switch for the data options
}
STUDY_GRID = {  # the study's axes, comma lists: dest -> (settings, option, the parsed value as the option's)
    "arch": (REPRODUCE_RECIPE, "arch", lambda v: v),
    "dataset": (REPRODUCE_RECIPE, "dataset", lambda v: v),
    "seeds": (REPRODUCE_RECIPE, "seed", lambda v: parse_ints("--seeds", v)[0]),
    "noise": (StudySettings, "noises", lambda v: tuple(parse_floats("--noise", v))),
    "subsample_classes": (StudySettings, "subsample_classes", lambda v: tuple(parse_ints("--subsample-classes", v))),
    "train_size": (StudySettings, "train_sizes", lambda v: (None,) if v is None else tuple(parse_ints("", v))),
}
# flags that deliberately do not take the option's default, and why (docs/train.md, docs/projections.md)
DIFFERENT = {
    ("train", "dataset"): "without --dataset the datasets are listed, as the original code did",
    ("reinit", "dataset"): "without --dataset the datasets are listed, as the original code did",
    ("study", "seed"): "refused in a study: its seeds are --seeds",
}
# flags whose help shows what the command does with them instead of a default
SHOWN_OTHERWISE = {"models_path", "tb_logdir", "resume_from"}


def has_default(settings, name: str) -> bool:
    try:
        default_of(settings, name)
    except (TypeError, KeyError):
        return False
    return True


def expected(command: str, dest: str):
    """(settings, option, how the parsed value reads as the option) of a flag, or None: it sets no option."""
    if command == "study" and dest in STUDY_GRID:
        return STUDY_GRID[dest]
    if dest in OTHER_FORM:
        settings, option, read = OTHER_FORM[dest]
        return (settings, option, read) if settings in SETTINGS[command] else None
    return next(((s, dest, lambda v: v) for s in SETTINGS[command] if has_default(s, dest)), None)


def shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_each_flag_defaults_to_its_settings_option_and_its_help_shows_it(command, monkeypatch):
    parser = command_parser(command)
    parsed = vars(build_parser(command).parse_args([command]))
    monkeypatch.setenv("COLUMNS", "400")  # each flag's help on one line
    entries = help_entries(parser)
    compared = 0
    for action in parser.arguments:
        dest = action.dest
        source = expected(command, dest)
        if not action.option_strings or source is None or (command, dest) in DIFFERENT:
            continue
        settings, option, read = source
        compared += 1
        assert read(parsed[dest]) == default_of(settings, option), f"hparr {command} {action.option_strings[0]}"
        if dest not in STUDY_GRID and dest not in OTHER_FORM:  # the rest are written through the registry
            assert parser.settings[dest] == (settings, option), f"hparr {command} {action.option_strings[0]}"
        value = parsed[dest]  # shown unless unset, a switch or a repeatable flag's list
        if not (value is None or isinstance(value, (bool, list)) or dest in SHOWN_OTHERWISE):
            entry = entries[action.option_strings[0]]
            assert f"[{shown(value)}" in entry, entry
    assert compared >= 5


@pytest.mark.parametrize("command, dest", sorted(DIFFERENT))
def test_the_flags_that_differ_from_their_option_differ_as_documented(command, dest):
    settings, option, _ = expected(command, dest)
    assert vars(build_parser(command).parse_args([command]))[dest] != default_of(settings, option)


def test_a_hardcoded_default_is_caught():
    """A flag given another default than its option's fails the test above: its parsed value is compared with the
    dataclass, not with what the CLI wrote."""
    parser = command_parser("train")
    parser.set_defaults(lr=0.01)  # as if cli/_train.py wrote default=0.01
    assert parser.parse_args([]).lr != default_of(*expected("train", "lr")[:2])
    with pytest.raises(TypeError, match="either given or taken"):
        ArgumentParser().add_argument("--lr", type=float, default=0.01, setting=TrainSettings)


def test_the_reproduce_recipe_is_one_preset_for_the_library_and_the_command(capsys):
    library = ReproduceSettings()
    assert library.train == reproduce_recipe() and library.out == "runs/reproduce"
    assert (library.train.arch, library.train.data.dataset, library.train.epochs, library.train.lr,
            library.train.seed, library.train.snapshot_every, library.train.snapshot_all_until) == (
        "lenet", "digits", 30, 0.01, 0, 5, 10)
    # every other option is TrainSettings' own: hparr train differs from the recipe in the recipe's values alone
    plain = TrainSettings(arch="lenet")
    assert [k for k in vars(plain) if getattr(plain, k) != getattr(library.train, k)] == [
        k for k in ("epochs", "lr", "seed", "snapshot_every", "snapshot_all_until") if k in REPRODUCE_RECIPE]
    assert reproduce_recipe(lr=0.02, noise=0.5).lr == 0.02 and reproduce_recipe(noise=0.5).data.noise == 0.5
    args = build_parser("reproduce").parse_args(["reproduce"])
    assert {k: getattr(args, k) for k in REPRODUCE_RECIPE} == dict(REPRODUCE_RECIPE)
    with pytest.raises(SystemExit):
        build_parser("reproduce").parse_args(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the recipe --arch lenet --dataset digits --epochs 30 --lr 0.01 --seed 0" in text


def test_eval_processes_is_auto_in_the_library_and_on_the_command_line():
    assert default_of(ReinitSettings, "eval_processes") == "auto"
    assert build_parser("reinit").parse_args(["reinit"]).eval_processes == "auto"
