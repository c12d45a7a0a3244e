"""The options of the ``conceptfix`` command line: one parser per subcommand, the shipped recipes, and hints for
what a rejected command line gets wrong (found by checking what the user gave against the options and the classes
they name, never by reading the parser's error messages)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class UsageError(Exception):
    """A command line the parser rejected (the message carries the hints)."""


# -- recipes -------------------------------------------------------------------------------------------------


def shipped_recipes() -> list[str]:
    """Names of the recipes in ``recipes/configs`` (usable as ``--config <name>`` / ``--recipe <name>``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_recipe(value: str) -> str:
    """A recipe path, or the path of a shipped recipe given by name.

    Raises:
        FileNotFoundError: if it is neither, listing the shipped recipes.

    Example:
        >>> Path(resolve_recipe("planted_shadows")).name
        'planted_shadows.yaml'
    """
    if Path(value).is_file():
        return value
    shipped = CONFIG_DIR / f"{value.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return str(shipped)
    near = difflib.get_close_matches(value, shipped_recipes(), n=3, cutoff=0.4)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise FileNotFoundError(
        f"Expected a recipe YAML file or the name of a shipped recipe ({', '.join(shipped_recipes())}), "
        f"but got {value!r}.{hint}"
    )


def _recipe_action() -> type:
    """jsonargparse's config-file action, reading a shipped recipe given by name (``--config planted_shadows``)."""
    from jsonargparse import ActionConfigFile

    class RecipeFile(ActionConfigFile):
        def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
            super().__call__(parser, cfg, resolve_recipe(values), option_string)

    return RecipeFile


# -- parsers -------------------------------------------------------------------------------------------------


def _common(parser: Any) -> None:
    parser.add_argument("--run_dir", "--run-dir", type=str | None, default=None,
                        help="directory of this run (default runs/<command>-<time>); a run of the same command "
                             "with the same options resumes, any other is refused")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="empty an earlier run in --run_dir and start afresh")
    parser.add_argument("--seed", type=int, default=0, help="seeds data order, analysis and training")
    parser.add_argument("--progress", type=bool | None, default=None,
                        help="Lightning progress bars (default: when printing to a terminal)")


# the demo's probe set: large enough for the planted failures, small enough for the demo's time budget
DEMO_PROBE_SIZE = 256


def _analysis_args(parser: Any) -> None:
    parser.add_argument("--layer", type=str | None, default=None,
                        help="dotted layer name the concepts are read from (default: layer1 of the built-in ResNets, "
                             "enc2 of the segmentation net)")
    parser.add_argument("--probe_size", "--probe-size", type=int, default=256, help="probe images analysed")
    parser.add_argument("--n_concepts", "--n-concepts", type=int | None, default=32,
                        help="concepts to discover, also by the training monitors (None: chosen by silhouette)")


def _probe_root_arg(parser: Any) -> None:
    parser.add_argument("--probe_root", "--probe-root", type=str | None, default=None,
                        help="a labelled folder of deployment images, root/<class>/<image> with the training data's "
                             "classes, diagnosed instead of the validation split")


def _pickle_arg(parser: Any) -> None:
    parser.add_argument("--allow_pickle", "--allow-pickle", type=bool, default=False,
                        help="let checkpoints that hold Python objects unpickle them (only for files you trust: "
                             "unpickling can run code); by default only tensors and plain values are read")


def _data_arg(parser: Any, required: bool) -> None:
    from recipes.data.base import ContractDataModule

    parser.add_subclass_arguments(ContractDataModule, "data", required=required,
                                  help="data module: class_path/init_args, a YAML file, or a built-in name")


def _model_arg(parser: Any) -> None:
    import pytorch_lightning as pl

    parser.add_subclass_arguments(pl.LightningModule, "model", required=False,
                                  help="model (default: the baseline that fits the data)")


def _parser(command: str, description: str, default_config_files: Sequence[str] = ()) -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog=f"conceptfix {command}", exit_on_error=False, description=description,
                          default_config_files=list(default_config_files))


def fit_parser(command: Literal["fit", "finetune"] = "fit", recipe: str | None = None) -> Any:
    """The recipe schema: what ``fit --config`` and ``finetune --recipe`` read.

    ``fit`` reads a recipe with ``--config`` where it stands (later options override it). ``finetune`` takes the
    recipe's path as ``recipe``: its values are the defaults, so every option on the command line overrides them
    wherever it stands, and its ``--epochs`` is the fine-tuning epochs (:func:`finetune`).
    """
    import pytorch_lightning as pl
    from torch import nn

    import augment  # noqa: F401  (class names resolvable in YAML)
    import callbacks  # noqa: F401
    import recipes.data  # noqa: F401
    import recipes.models  # noqa: F401

    if command not in ("fit", "finetune"):
        raise ValueError(f"Expected `command` to be one of ['fit', 'finetune'], but got {command!r}.")
    if command == "fit":
        p = _parser("fit", "Run a recipe: train, diagnose, fine-tune, report.")
        p.add_argument("--config", action=_recipe_action(), help="recipe YAML (or a shipped recipe's name)")
    else:
        p = _parser("finetune", "Fine-tune a checkpoint with the policy its failures imply. Every option of `fit` "
                    "is accepted and overrides the recipe's value.", [recipe] if recipe is not None else [])
        p.add_argument("--recipe", type=str | None, default=None,
                       help=f"recipe YAML or name ({', '.join(shipped_recipes())}); required")
    _data_arg(p, required=True)
    _model_arg(p)
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="checkpoint to fine-tune (.ckpt); required" if command == "finetune" else
                   "start from this checkpoint instead of training (fine-tuning a user's model)")
    _pickle_arg(p)
    p.add_argument("--epochs", type=int, default=3, help="training epochs (skipped with --ckpt)" if command == "fit"
                   else "the fine-tuning epochs (`--finetune.epochs`): training is skipped")
    p.add_argument("--callbacks", type=list[pl.Callback] | None, default=None,
                   help="callbacks while training (default: the monitors and FailureDrivenAugmentation)")
    _analysis_args(p)
    _probe_root_arg(p)
    if command == "finetune":
        p.add_argument("--report", type=str | None, default=None,
                       help="report.json of a `conceptfix diagnose` run on the same checkpoint: fine-tune with the "
                            "policy of its failure concepts (no new diagnosis)")
        p.add_argument("--from_run", "--from-run", type=str | None, default=None,
                       help="a `conceptfix diagnose` run directory (its report.json, as `--report`)")
    p.add_argument("--finetune.enabled", type=bool, default=True, help="fine-tune with the derived policy")
    p.add_argument("--finetune.policy", type=Literal["match", "annotations"], default="match",
                   help="match: each discovered failure concept chooses its transform from the catalogue by what "
                        "its patches look like (no labels); annotations: the annotated concept it shows does")
    p.add_argument("--finetune.bind", type=dict[str, str] | None, default=None,
                   help="discovered concept → transform, chosen by you; overrides the match "
                        "(e.g. {cluster-6: shadow-line})")
    p.add_argument("--finetune.control", type=Literal["no_aug"] | None, default=None,
                   help="no_aug: also fine-tune a copy without augmentation on the same budget and show it beside "
                        "the policy's (the policy's own effect)")
    p.add_argument("--finetune.epochs", type=int, default=2, help="fine-tuning epochs")
    p.add_argument("--finetune.lr", type=float | None, default=3e-3, help="fine-tuning learning rate")
    p.add_argument("--finetune.augmentations", type=dict[str, str] | None, default=None,
                   help="with --finetune.policy annotations: annotated concept → transform name (default shadow → "
                        "SyntheticShadow, occluder → Cutout)")
    p.add_argument("--finetune.transforms", type=dict[str, nn.Module] | None, default=None,
                   help="transform name → module, added to the defaults (SyntheticShadow, Cutout, HideAndSeek and "
                        "every catalogue entry: shadow-line, defocus, noise, ...)")
    p.add_argument("--finetune.fallback", type=str | None, default=None,
                   help="transform for failure concepts that match no transform (e.g. Cutout; none: no policy)")
    p.add_argument("--finetune.max_p", type=float, default=0.9, help="probability for a class failing only "
                   "inside the concept's slice")
    p.add_argument("--finetune.base_p", type=float, default=0.3, help="probability for every other sample")
    p.add_argument("--finetune.calibrate", type=bool, default=True, help="set the shadow transform's strength "
                   "(SyntheticShadow intensity) from the darkening measured under the failing concept's masks")
    _common(p)
    return p


def demo_parser() -> Any:
    """The options of ``demo``."""
    p = _parser("demo", "The whole loop on built-in planted-concept data.")
    p.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    p.add_argument("--finetune_epochs", "--finetune-epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--train_size", "--train-size", type=int, default=6000, help="training images")
    p.add_argument("--test_size", "--test-size", type=int, default=2000, help="test images")
    p.add_argument("--val_size", "--val-size", type=int, default=500, help="validation (probe) images")
    p.add_argument("--probe_size", "--probe-size", type=int, default=DEMO_PROBE_SIZE, help="probe images analysed")
    p.add_argument("--n_concepts", "--n-concepts", type=int, default=32, help="concepts to discover")
    _common(p)
    return p


def diagnose_parser() -> Any:
    """The options of ``diagnose``."""
    p = _parser("diagnose", "Concept report of a checkpoint on data, no training.")
    p.add_argument("--ckpt", type=str, required=True, help="checkpoint (.ckpt)")
    _pickle_arg(p)
    _data_arg(p, required=True)
    _model_arg(p)
    p.add_argument("--split", type=str, default="val", help="split the probe images come from")
    _analysis_args(p)
    _probe_root_arg(p)
    _common(p)
    return p


def compare_parser() -> Any:
    """The options of ``compare``."""
    p = _parser("compare", "Compare two models on the same concepts.")
    p.add_argument("--ckpt_a", "--ckpt-a", type=str, required=True, help="checkpoint of model A")
    p.add_argument("--ckpt_b", "--ckpt-b", type=str, required=True, help="checkpoint of model B")
    _pickle_arg(p)
    _data_arg(p, required=True)
    _analysis_args(p)
    _common(p)
    return p


def parse(parser: Any, argv: Sequence[str]) -> Any:
    """``parser.parse_args(argv)``; a rejected command line raises :class:`UsageError` with hints for what in it
    is unknown (:func:`input_hints`)."""
    try:
        return parser.parse_args(list(argv))
    except argparse.ArgumentError as err:
        problems = input_problems(parser, argv)
        if problems:  # what was given and is unknown: one plain line each, not the parser's account of it
            raise UsageError("\n".join(f"Expected `--{option}` to be {accepted}, but {hint}"
                                       for option, accepted, hint in problems)) from err
        plain = _plain_type_error(str(err))
        raise UsageError(plain or str(err).rstrip()) from err


#: how a plain type reads in a message
TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _plain_type_error(message: str) -> str | None:
    """One line for a value of the wrong type, from jsonargparse's nested account of it, e.g. ``Expected
    `--data.train_size` to be an integer, but got 'abc'.``; None when the message is about something else.

    Example:
        >>> _plain_type_error('Parser key "probe_size":\\n  Expected a <class \\'int\\'>. Got value: abc')
        "Expected `--probe_size` to be an integer, but got 'abc'."
    """
    found = re.search(r"Expected a <class '(\w+)'>\. Got value: (.*)", message)
    keys = re.findall(r'Parser key "([\w.]+)"', message[:found.start()] if found else "")
    if found is None or not keys or found.group(1) not in TYPE_NAMES:
        return None
    return f"Expected `--{'.'.join(keys)}` to be {TYPE_NAMES[found.group(1)]}, but got {found.group(2).strip()!r}."


# -- hints for what the user gave ----------------------------------------------------------------------------

# Options that take a class (``class_path`` or a built-in name): where the built-in ones live, their base, and
# what they are called in a hint.
CLASS_OPTIONS: dict[str, tuple[str, str, str]] = {
    "model": ("recipes.models", "pytorch_lightning.LightningModule", "models"),
    "data": ("recipes.data", "recipes.data.base.ContractDataModule", "data modules"),
    "callbacks": ("callbacks", "pytorch_lightning.Callback", "callbacks"),
    "finetune.transforms": ("augment", "torch.nn.Module", "transforms"),
}


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def known_classes(option: str) -> list[str]:
    """The built-in classes ``option`` (a key of :data:`CLASS_OPTIONS`) takes by name.

    Example:
        >>> known_classes("model")
        ['ResNetClassifier', 'SegmentationNet']
    """
    module, base_path, _ = CLASS_OPTIONS[option]
    base = _import(base_path)
    names = []
    for name, obj in vars(importlib.import_module(module)).items():
        # Only the package's own classes: a base it imports (the two-flavour LightningModule) is no choice.
        own = inspect.isclass(obj) and (obj.__module__ == module or obj.__module__.startswith(module + "."))
        if (own and issubclass(obj, base) and obj is not base and not name.startswith("_")
                and not inspect.isabstract(obj)):
            names.append(name)
    return sorted(names)


def _resolve_class(option: str, value: str) -> type | None:
    """The class ``value`` names for ``option``: a built-in name or an importable dotted path; None if neither."""
    if "." not in value:
        return _import(f"{CLASS_OPTIONS[option][0]}.{value}") if value in known_classes(option) else None
    found = _import(value)
    return found if inspect.isclass(found) else None


def class_parameters(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` and its bases (what ``init_args`` accepts)."""
    params: list[str] = []
    for c in getattr(cls, "__mro__", (cls,)):
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params += [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")]
        except (TypeError, ValueError):
            continue
    return sorted(set(params))


def parser_keys(parser: Any) -> list[str]:
    """Every option the parser accepts, as written on the command line without the dashes (aliases included)."""
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        keys += [s.lstrip("-") for s in getattr(action, "option_strings", [])]
    return keys


def _given(argv: Sequence[str]) -> list[tuple[str, Any]]:
    """The ``(key, value)`` pairs of a command line (``--key value`` or ``--key=value``; value None for a flag)."""
    out: list[tuple[str, Any]] = []
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        key, eq, written = token[2:].partition("=")
        value: str | None = written
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = nxt if nxt is not None and not nxt.startswith("--") else None
        out.append((key, value))
    return out


def _from_file(data: Any, keys: set[str], prefix: str = "") -> list[tuple[str, Any]]:
    """The ``(key, value)`` pairs of a recipe's YAML: nested mappings flattened to dotted keys down to an option."""
    out: list[tuple[str, Any]] = []
    if not isinstance(data, Mapping):
        return out
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key in CLASS_OPTIONS and isinstance(v, Mapping) and "class_path" in v:
            out.append((key, v["class_path"]))
            out += [(f"{key}.{arg}", val) for arg, val in (v.get("init_args") or {}).items()]
        elif key not in keys and isinstance(v, Mapping):
            out += _from_file(v, keys, f"{key}.")
        else:
            out.append((key, v))
    return out


def input_hints(parser: Any, argv: Sequence[str]) -> list[str]:
    """What in ``argv`` (and the recipe files it names) the parser does not know, with the nearest valid names.

    Checked against the parser's own options and the classes the options name, never against the wording of the
    parser's error: an unknown option, a class that is not built in or importable, an ``init_args`` key the class
    does not take.

    Example:
        >>> input_hints(diagnose_parser(), ["--ckpt", "m.ckpt", "--data", "PlantedConceptsDataModule",
        ...                                 "--data.trian_size", "4"])
        ["PlantedConceptsDataModule has no option 'trian_size'; did you mean 'train_size'?"]
    """
    return [hint for _, _, hint in input_problems(parser, argv)]


def input_problems(parser: Any, argv: Sequence[str]) -> list[tuple[str, str, str]]:
    """:func:`input_hints` with the option each hint is about and what that option accepts:
    ``(option, accepted, hint)``.

    Example:
        >>> input_problems(diagnose_parser(), ["--ckpt", "m.ckpt", "--model", "Resnet"])
        [('model', 'a built-in model or an importable class path', "no class 'Resnet'; built-in models: \
ResNetClassifier, SegmentationNet")]
    """
    import yaml

    keys = parser_keys(parser)
    given = _given(argv)
    for option in ("config", "recipe"):
        for key, value in list(given):
            if key == option and isinstance(value, str):
                try:
                    data = yaml.safe_load(Path(resolve_recipe(value)).read_text(encoding="utf-8"))
                except (OSError, FileNotFoundError, yaml.YAMLError):
                    continue
                given += _from_file(data, set(keys))
    chosen: dict[str, type | None] = {}
    problems: list[tuple[str, str, str]] = []
    for key, value in given:
        if key in CLASS_OPTIONS and isinstance(value, str):
            chosen[key] = _resolve_class(key, value)
            if chosen[key] is None:
                problems.append((key, _accepted_class(key), _class_hint(key, value)))
        elif key in CLASS_OPTIONS and isinstance(value, list):
            for item in value:
                name = item.get("class_path") if isinstance(item, Mapping) else item
                if isinstance(name, str) and _resolve_class(key, name) is None:
                    problems.append((key, _accepted_class(key), _class_hint(key, name)))
        elif key not in keys:
            owner = next((o for o in CLASS_OPTIONS if key.startswith(f"{o}.")), None)
            if owner is None:
                problems.append((key, "a known option", _unknown_option_hint(key, keys)))
                continue
            cls = chosen.get(owner)
            arg = key[len(owner) + 1:].removeprefix("init_args.")
            if cls is not None and arg not in ("class_path", "init_args") and arg not in class_parameters(cls):
                valid = class_parameters(cls)
                near = difflib.get_close_matches(arg, valid, n=3, cutoff=0.5)
                problems.append((key, f"an option of {cls.__name__}", f"{cls.__name__} has no option {arg!r}"
                                 + (f"; did you mean {near[0]!r}?" if near else f"; it accepts {valid}")))
    return list({hint: (option, accepted, hint) for option, accepted, hint in problems}.values())


def _accepted_class(option: str) -> str:
    return f"a built-in {CLASS_OPTIONS[option][2].removesuffix('s')} or an importable class path"


def _class_hint(option: str, name: str) -> str:
    known = known_classes(option)
    near = difflib.get_close_matches(name.rsplit(".", 1)[-1], known, n=3, cutoff=0.5)
    return (f"no class {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; built-in {CLASS_OPTIONS[option][2]}: {', '.join(known)}")


def _unknown_option_hint(key: str, keys: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not near and "." in key:
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in keys], 3, 0.5)
    return f"unknown option {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                        f"; valid options: {sorted(set(keys))}")
