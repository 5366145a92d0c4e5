"""The rules every command's flags share: choices read whatever their case, and help texts that say what a flag
does in that command. (A malformed value or an unknown flag is one line, exit 2: rows of docs/errors.md.)"""
import pytest

from hparr import checkpoints as ck
from hparr.cli import build_parser, main


def parsed(command: str, *argv: str):
    return build_parser(command).parse_args([command, *argv])


def test_choices_are_read_whatever_their_case_and_free_values_are_kept_as_given():
    args = parsed("train", "--arch", "LeNet", "--dataset", "MNIST", "--optimizer", "Adam", "--amp", "FP16",
                  "--channels-last", "ON")
    assert (args.arch, args.dataset, args.optimizer, args.amp, args.channels_last) == (
        "lenet", "mnist", "adam", "fp16", "on")
    assert parsed("train", "--arch", "VGG11BN").arch == "vgg11bn"
    assert parsed("train", "--arch", "ResNet18").arch == "resnet18"  # a torchvision classifier's name
    # values that are not one of the choices stay as they were given: a module's factory, a timm name, an unknown
    # optimizer (refused by the settings, naming it)
    args = parsed("train", "--arch", "own_model:Small_CNN", "--dataset", "mypkg.data:Factory", "--optimizer", "RMSprop")
    assert (args.arch, args.dataset, args.optimizer) == ("own_model:Small_CNN", "mypkg.data:Factory", "RMSprop")
    assert parsed("train", "--arch", "timm:ResNet10t").arch == "timm:ResNet10t"
    args = parsed("reinit", "--eval-split", "TRAIN", "--granularity", "Block", "--method", "Plain", "--dataset",
                  "FashionMNIST")
    assert (args.eval_split, args.granularity, args.method, args.dataset) == ("train", "block", "plain", "fashionmnist")
    assert parsed("reproduce", "--eval-split", "TEST,Train").eval_split == "test,train"
    assert parsed("projections", "--dataset", "Cifar10").dataset == "cifar10"
    assert parsed("report", "RUN", "--bias-measure", "Mass_Z").bias_measure == "mass_z"


def test_a_run_given_choices_in_another_case_records_their_names(tmp_path, capsys):
    assert main(["train", "--arch", "LeNet", "--dataset", "DIGITS", "--optimizer", "Adam", "--epochs", "0",
                 "--seed", "0", "--models-path", str(tmp_path), "--tb-logdir", "", "--no-track"]) == 0
    snap = ck.torch_load(tmp_path / "digits" / "lenet" / "0" / "lenet_init_0.pt")
    assert (snap["arch"], snap["dataset"], snap["settings"]["optimizer"]) == ("lenet", "digits", "adam")
    assert "no epoch trained (--epochs 0)" in capsys.readouterr().out


def help_text(capsys, command: str) -> str:
    """`hparr COMMAND --help`, with its line breaks as spaces."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_texts_say_what_each_flag_does_in_its_command(capsys):
    reinit = help_text(capsys, "reinit")
    assert "--dataset DATASET dataset the model was trained on" in reinit and "dataset to train on" not in reinit
    train = help_text(capsys, "train")
    assert "--dataset DATASET dataset to train on" in train
    assert "seed of initialization, data order and dropout (a random one is drawn and recorded if unset)" in train
    assert ("weight_decay of torch.optim.SGD or torch.optim.Adam, an L2 penalty added to the gradient (Adam's is not "
            "AdamW's decoupled decay) [0.0001 with sgd, 0 with adam, as in the paper's code]") in train
    reproduce = help_text(capsys, "reproduce")
    assert "--seed SEED seed of initialization, data order and dropout [0]" in reproduce  # never drawn there
    assert "drawn" not in reproduce
