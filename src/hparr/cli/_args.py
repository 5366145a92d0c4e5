"""The rules every command's flags share: a malformed value is one line naming the flag (exit 2), and a value
among fixed choices is read whatever its case.

A flag that sets an option of a settings dataclass takes its default from that dataclass's field
(`ArgumentParser.add_argument(..., setting=...)`, `default_of`), and its help shows it with argparse's
`%(default)s`: a default is written once, in the library.

This module imports neither torch nor the library at start-up: the lists of names (datasets, architectures)
are imported when a value is read, and the settings dataclasses when a command's flags are added."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable, Mapping

from ..errors import UsageError


class CommandLineError(UsageError):
    """A command line that argparse cannot read (a malformed value, an unknown flag, a missing argument):
    `prog` is the command it was given to ("hparr train")."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


def number(value: str) -> float:
    """`type=` of a flag that takes a number (what `type=float` gives, with the error in one plain line)."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def integer(value: str) -> int:
    """`type=` of a flag that takes a whole number (what `type=int` gives, with the error in one plain line)."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def default_of(settings: Any, name: str) -> Any:
    """The default of the option `name` of `settings`: a settings dataclass (its field's default, or what its
    default factory makes) or a preset mapping ({option: value}, such as `defaults.REPRODUCE_RECIPE`). An option
    without a default is an error: a flag cannot take its default from it."""
    if isinstance(settings, Mapping):
        return settings[name]
    for f in dataclasses.fields(settings):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{settings.__name__}.{name} has no default")
    raise TypeError(f"{settings.__name__} has no option {name!r}")


class ArgumentParser(argparse.ArgumentParser):
    """The parser of `hparr` and of each of its commands (argparse gives its subcommands the class of their
    parent). A command line it cannot read raises `CommandLineError`, which `hparr.cli.main` prints as one line,
    `hparr train: error: --lr: 'abc' is not a number`, with exit code 2 (argparse would print the whole usage
    text first). Every flag declared with `type=float` or `type=int` reads its value with `number` or `integer`
    (argparse's type registry), so that the message says what the value should be.

    `arguments` lists every argument added, in order, its argument groups' included (argparse keeps its own list
    private); `settings` maps the dest of each flag whose default comes from a settings dataclass or preset to it
    (`add_argument(..., setting=...)`)."""

    def __init__(self, *args, **kwargs):
        self.arguments: list[argparse.Action] = []  # before argparse's __init__, which adds --help
        self.settings: dict[str, tuple[Any, str]] = {}
        super().__init__(*args, **kwargs)
        self.register("type", float, number)
        self.register("type", int, integer)

    def add_argument(self, *args, setting: Any = None, **kwargs) -> argparse.Action:
        """argparse's `add_argument`; with `setting`, a settings dataclass or preset (or a pair of one and its
        option's name, where the name is not the flag's dest), the flag's default is that option's default."""
        return self._declare(super().add_argument, args, kwargs, setting)

    def add_argument_group(self, *args, **kwargs):
        """argparse's `add_argument_group`, whose flags are listed in `arguments` and take `setting` too."""
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *a, setting=None, **k: self._declare(add, a, k, setting)
        return group

    def _declare(self, add: Callable[..., argparse.Action], args: tuple, kwargs: dict,
                 setting: Any) -> argparse.Action:
        if setting is not None and "default" in kwargs:
            raise TypeError(f"{args[0]}: a default is either given or taken from its setting, not both")
        action = add(*args, **kwargs)
        self.arguments.append(action)
        if setting is not None:
            self.set_setting(action.dest, setting)
        return action

    def set_setting(self, dest: str, setting: Any) -> None:
        """The default of the flag of `dest` from `setting` (a settings dataclass or preset, or one and its
        option's name), recorded in `settings`."""
        source, name = setting if isinstance(setting, tuple) else (setting, dest)
        self.set_defaults(**{dest: default_of(source, name)})
        self.settings[dest] = (source, name)

    def error(self, message: str):
        raise CommandLineError(self.prog, message.removeprefix("argument "))


def choice(names: Iterable[str] | Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """`type=` of a flag with fixed choices: a value that is one of `names` but for its case is read as that
    name ("Adam" -> "adam", "MNIST" -> "mnist"); any other value is kept as it was given, for the flag's
    `choices` or the settings' validation to refuse (or, where the flag also takes free values such as
    `module.path:factory`, to use as it is). `names` may be a function that returns them, called when a value
    is read (a list whose module is slow to import)."""

    def canonical(value: str) -> str:
        known = names() if callable(names) else names
        folded = value.casefold()
        return next((name for name in known if name.casefold() == folded), value)

    return canonical


def choices_list(names: Iterable[str]) -> Callable[[str], str]:
    """`type=` of a flag that takes a comma list of fixed choices ("TEST,Train" -> "test,train"); each item
    as `choice` reads it."""
    one = choice(tuple(names))

    def canonical(value: str) -> str:
        return ",".join(one(item.strip()) if item.strip() else item for item in value.split(","))

    return canonical


def dataset_name(value: str) -> str:
    """`type=` of --dataset: a known dataset's name whatever its case; any other value as it was given."""
    from ..data import DATASETS  # start-up time: the data package imports torch

    return choice(DATASETS)(value)


def arch_name(value: str) -> str:
    """`type=` of --arch: a built-in architecture's or a torchvision classifier's name whatever its case
    ("LeNet" -> "lenet", "ResNet18" -> "resnet18"); any other value (timm:NAME, module.path:factory) as given."""
    from ..models import ARCHS, supported_archs  # start-up time, as above

    found = choice(ARCHS)(value)
    if found != value or ":" in value or value == value.lower():
        return found
    return choice(supported_archs())(value)  # torchvision's names (importing torchvision: about a second)
