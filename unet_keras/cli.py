"""The `unet-keras` command: one subcommand per job, its flags made from the job's settings.

Each subcommand is a settings class of its stage (`training.training_settings`, ...) and
a job of
`unet_keras.workflows`: the flags, their help, choices and defaults come from the class's
fields, the job does all the work, and this module only parses and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unet_keras import workflows
from unet_keras.ensemble_settings import EnsembleConfig
from unet_keras.evaluation.evaluation_settings import EvaluateConfig
from unet_keras.exports.export_settings import ExportConfig
from unet_keras.inference.inference_settings import PredictConfig
from unet_keras.io.data_settings import SyntheticConfig
from unet_keras.server.server_settings import UNSUPPORTED_SERVER_FLAGS, ServeConfig
from unet_keras.settings import Settings, choices, field_types, unwrap_optional
from unet_keras.training.training_settings import InspectConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its settings, the job that runs them, and how the result is shown."""

    settings: type[Settings]
    job: Callable[[Any], Any]
    show: Callable[[Any, Any], int]
    help: str


def _show_training(config: TrainConfig, summary: dict[str, Any]) -> int:
    print(json.dumps(summary, indent=2))
    print(f"best model: {Path(summary['run_dir']) / 'best.keras'}")
    return 0


def _show_prediction(config: PredictConfig, report: Any) -> int:
    if hasattr(report, "skipped"):  # a volume's VolumeReport
        print(
            f"predicted {report.predicted} blocks into {config.output} ({report.skipped} "
            f"were done already): {', '.join(path.name for path in report.written)}"
        )
    else:
        print(f"wrote {len(report.written)} files to {config.output}")
    if not report.failed:
        return 0
    print(f"{len(report.failed)} input(s) failed:", file=sys.stderr)
    for name, reason in report.failed:
        print(f"  {name}: {reason}", file=sys.stderr)
    return 1


def _show_evaluation(config: EvaluateConfig, report: dict[str, Any]) -> int:
    keys = ("threshold", "tta", "mean", "best_threshold", "isbi_pixel_error", "challenge")
    shown = {key: report[key] for key in keys if key in report}
    if "challenge" in shown:
        # The challenge's scores at each threshold are for evaluation.json, not the terminal.
        shown["challenge"] = {k: v for k, v in shown["challenge"].items() if k != "sweep"}
    print(json.dumps(shown, indent=2))
    if config.output:
        print(f"per-image scores and figures: {config.output}")
    return 0


def _show_ensemble(config: EnsembleConfig, record: dict[str, Any]) -> int:
    threshold = record["threshold"]
    print(
        f"wrote the ensemble of {record['members']} models to {config.output} (threshold "
        f"{threshold['value']}: {threshold['chosen_by']})"
    )
    return 0


def _show_export(config: ExportConfig, version: Path) -> int:
    if config.format != "savedmodel":
        kind = {"bioimageio": "a BioImage.IO model package", "onnx": "an ONNX model"}
        print(f"exported {config.model} as {kind[config.format]}:")
        print(version)
        return 0
    print(f"exported {config.model} for TensorFlow Serving; version directory:")
    print(version)
    return 0


def _show_synthetic(config: SyntheticConfig, output: Path) -> int:
    print(f"wrote {config.count} image/mask pairs to {output}/images and {output}/masks")
    return 0


def _show_json(config: Any, result: dict[str, Any]) -> int:
    print(json.dumps(result, indent=2))
    return 0


COMMANDS = {
    "train": Command(
        TrainConfig,
        workflows.train,
        _show_training,
        "train a U-Net, then choose its threshold on the validation images (resumes an "
        "unfinished run)",
    ),
    "predict": Command(
        PredictConfig,
        workflows.predict,
        _show_prediction,
        "segment images of any size (overlap-tile) into masks in the training convention",
    ),
    "evaluate": Command(
        EvaluateConfig,
        workflows.evaluate,
        _show_evaluation,
        "score a model on labelled images: pixel error, IoU, Dice, adapted Rand, VI, and the "
        "ISBI 2012 challenge's V^Rand, V^Info and pixel error",
    ),
    "ensemble": Command(
        EnsembleConfig,
        workflows.ensemble,
        _show_ensemble,
        "join trained models into one model file that averages their probability maps",
    ),
    "export": Command(
        ExportConfig,
        workflows.export,
        _show_export,
        "export a model as a SavedModel version that TensorFlow Serving serves as is",
    ),
    "serve": Command(
        ServeConfig,
        workflows.serve,
        lambda config, status: status,
        "serve exported versions over gRPC like TensorFlow Serving (for tests and local use)",
    ),
    "synthetic": Command(
        SyntheticConfig,
        workflows.synthetic,
        _show_synthetic,
        "write the embedded synthetic EM data set as image/mask folders",
    ),
    "inspect": Command(
        InspectConfig,
        workflows.inspect,
        _show_json,
        "load a data set as training would and report sizes, classes, normalisation",
    ),
}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line setting: where it goes, its field, type and default."""

    dest: str  # "model.depth" for a field of a nested section
    field: dataclasses.Field
    kind: Any
    default: Any

    @property
    def option(self) -> str:
        """The flag's spelling, e.g. "--batch-size"."""
        return "--" + self.field.name.replace("_", "-")


def flags(cls: type[Settings], defaults: Any = None, section: str = "") -> list[Flag]:
    """The settings of `cls` the command line takes, nested sections flattened."""
    found = []
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        default = field.default if defaults is None else getattr(defaults, field.name)
        dest = f"{section}.{field.name}" if section else field.name
        if isinstance(default, Settings):
            found += flags(type(default), default, dest)
        else:
            found.append(Flag(dest, field, field_types(cls)[field.name], default))
    return found


def add_settings_flags(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """Adds a flag per setting of `cls`; flags not given stay out of the parsed result.

    Each flag is spelled with hyphens and, as tensorflow_model_server spells its flags, with
    underscores (--model-base-path, --model_base_path), plus the field's `aliases`.
    """
    for flag in flags(cls):
        options = _argument_options(flag)
        if flag.field.metadata.get("positional"):
            parser.add_argument(flag.dest, **options)
            continue
        options["dest"] = flag.dest
        if flag.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = argparse.SUPPRESS
        spellings = dict.fromkeys(
            [flag.option, f"--{flag.field.name}", *flag.field.metadata.get("aliases", ())]
        )
        parser.add_argument(*spellings, **options)


class BooleanFlag(argparse.Action):
    """A true-or-false setting: --flag, --flag=true or --flag=false (tensorflow_model_server's
    spellings; also 1 and 0), or --no-flag."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        negated = [f"--no-{option[2:]}" for option in option_strings if "_" not in option]
        super().__init__([*option_strings, *negated], dest, nargs="?", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option_string: str | None = None,
    ) -> None:
        """Stores the flag's truth value; any other value is an error that names the flag."""
        if option_string is not None and option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        truth = {"true": True, "1": True, "false": False, "0": False}
        if value is not None and value.lower() not in truth:
            parser.error(f"{option_string}: expected true or false, got {value!r}")
        setattr(namespace, self.dest, True if value is None else truth[value.lower()])


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line: the program, the error, where help is."""

    def error(self, message: str) -> typing.NoReturn:
        """Prints `prog: error: message` and exits with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shown(default: Any) -> str | None:
    """A default as --help and the README show it; None when there is none to show."""
    if default in (dataclasses.MISSING, None):
        return None
    return " ".join(map(str, default)) if isinstance(default, tuple) else str(default)


def _argument_options(flag: Flag) -> dict[str, Any]:
    """argparse options for a flag: type, choices, nargs, help with the default."""
    kind, _ = unwrap_optional(flag.kind)
    help_text = flag.field.metadata["help"]
    if _shown(flag.default) is not None:
        help_text = f"{help_text} (default: {_shown(flag.default)})"
    options: dict[str, Any] = {"help": help_text}
    allowed = choices(kind)
    if allowed is not None:
        return {**options, "choices": allowed}
    if kind is bool:
        return {**options, "action": BooleanFlag, "metavar": "BOOL"}
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        nargs = "+" if items[-1] is Ellipsis else len(items)
        metavar = flag.field.metadata.get("metavar", "N")
        return {**options, "nargs": nargs, "type": items[0], "metavar": metavar}
    return {**options, "type": kind, "metavar": flag.field.name.upper()}


def _settings_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, nested by section ("model.depth" -> {"model": {"depth": ...}})."""
    values: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ("command", "config"):
            continue
        *sections, name = key.split(".")
        target = values
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return values


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it, section by section."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of the parsed command: defaults, then a --config file, then the flags."""
    command = COMMANDS[args.command]
    values = _settings_values(args)
    if getattr(args, "config", None):
        values = _merge(_read_config_file(Path(args.config)), values)
    if command.settings is TrainConfig and values.get("init_from"):
        values = _merge({"model": _network_of(values["init_from"])}, values)
    return command.settings.from_dict(values)


# What --init-from carries over unless given: the network's layers (the data decides its
# channels and classes), so that fine-tuning a model needs no flags that restate it, and
# a model trained with dropout goes on with it whatever today's default.
NETWORK = ("depth", "filters", "padding", "batch_norm", "dropout")


def _network_of(source: str) -> dict[str, Any]:
    """The settings of the network that `--init-from source` names."""
    from unet_keras.saving import read_record

    try:
        model = read_record(source).model
    except (OSError, ValueError) as error:
        raise ValueError(f"--init-from {source}: {error}") from None
    return {name: getattr(model, name) for name in NETWORK}


def _read_config_file(path: Path) -> dict[str, Any]:
    """Reads a JSON or YAML settings file (same names as the flags, with underscores)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except ValueError as error:  # json's and yaml's parse errors both are ValueErrors
        kind = path.suffix[1:].upper() or "JSON"
        raise ValueError(f"--config {path}: not valid {kind}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `unet-keras`, every flag with its default in --help."""
    parser = Parser(
        prog="unet-keras",
        description="U-Net (Ronneberger et al. 2015) for biomedical image segmentation.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        subparser = commands.add_parser(
            name, help=command.help, description=(command.settings.__doc__ or "").strip()
        )
        if name == "train":
            subparser.add_argument(
                "--config", help="JSON or YAML file of settings (flag names, underscored)"
            )
        add_settings_flags(subparser, command.settings)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a tensorflow_model_server flag that serve does not take is
    refused by name, any other unknown argument as argparse refuses it."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = f"{parser.prog} {args.command}"
    for word in unknown:
        name = word.split("=", 1)[0].removeprefix("--")
        if args.command == "serve" and name in UNSUPPORTED_SERVER_FLAGS:
            parser.exit(
                2,
                f"{command}: error: --{name} is a tensorflow_model_server flag that "
                f"unet-keras serve does not support ({UNSUPPORTED_SERVER_FLAGS[name]}) "
                f"(see {command} --help)\n",
            )
    if unknown:
        parser.exit(
            2, f"{command}: error: unrecognized arguments: {' '.join(unknown)} "
            f"(see {command} --help)\n",
        )  # fmt: skip
    return args


def settings_table(cls: type[Settings]) -> str:
    """A Markdown table of the flags of `cls`: flag, default, meaning (README's table)."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for flag in flags(cls):
        option = flag.option
        kind, _ = unwrap_optional(flag.kind)
        if kind is bool:
            option = f"{option}, --no-{option[2:]}"
        meaning = flag.field.metadata["help"]
        allowed = choices(kind)
        if allowed is not None:
            meaning = f"{meaning}; one of {', '.join(map(str, allowed))}"
        default = _shown(flag.default)
        shown = "none" if default is None else f"`{default}`"
        rows.append(f"| `{option}` | {shown} | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `unet-keras`; bad input prints one clear line and returns exit status 2."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = COMMANDS[args.command]
    try:
        config = settings_from(args)
        return command.show(config, command.job(config))
    except ModuleNotFoundError as error:
        # A client-only install (unet-keras[client]) lacks TensorFlow and the rest.
        print(
            f"unet-keras {args.command}: error: {error}; this command needs the full "
            "install: pip install 'unet-keras[full]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError) as error:
        print(f"unet-keras {args.command}: error: {error}", file=sys.stderr)
        return 2


def run(argv: Sequence[str] | None = None) -> typing.NoReturn:
    """The `unet-keras` program: `main`, then the process ends with its exit status.

    The objects left are frozen first, so that the interpreter's last garbage collection
    skips them: over TensorFlow's objects it took 1.4 s of every command's run, to free
    memory that the process's end frees anyway. Files are closed before `main` returns.
    """
    status = main(argv)
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
