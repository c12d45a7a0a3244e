"""The ``conceptfix`` command line: the closed loop, diagnosis, fine-tuning and model comparison.

Built on jsonargparse, so every data module, model, callback and transform is set from YAML or flags with
``class_path`` / ``init_args`` (``--data PlantedConceptsDataModule --data.train_size 2000``), and unknown keys get
the nearest valid ones suggested. Subcommands:

- ``demo``: the whole loop on built-in planted-concept data, no arguments needed;
- ``fit --config recipe.yaml``: any recipe (``recipes/configs/*.yaml``; ``--config planted_shadows`` for a
  shipped one);
- ``diagnose --ckpt … --data …``: a :class:`~debugger.report.ConceptReport`, TensorBoard logs and ``report.md``;
- ``finetune --ckpt … --recipe …``: fine-tune a checkpoint with the policy its failure concepts imply (every
  ``fit`` option overrides the recipe; ``--epochs`` is ``--finetune.epochs``);
- ``compare --ckpt-a … --ckpt-b … --data …``: concept-conditioned confusion differences and the ensemble check.

Every run writes one directory (``--run_dir``, default ``runs/<command>-<time>``): ``config.yaml``, ``state.json``,
``checkpoints/``, ``tb/``, ``report.json``, ``report.md``. Running the same command on the same directory resumes.
Options are checked before the directory is made; the seed is set before the model and data are built.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# -- printing ------------------------------------------------------------------------------------------------


def format_slice_table(metrics: dict[str, Any], concept_names: Sequence[str]) -> str:
    """A plain-text table of accuracy with and without each concept (classification slice metrics)."""
    from recipes.loop import format_metrics

    return format_metrics(metrics, concept_names)


def _say(msg: str) -> None:
    print(msg, flush=True)


# -- recipes -------------------------------------------------------------------------------------------------


def shipped_recipes() -> list[str]:
    """Names of the recipes in ``recipes/configs`` (usable as ``--config <name>`` / ``--recipe <name>``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_recipe(value: str) -> str:
    """A recipe path, or the path of a shipped recipe given by name.

    Raises:
        FileNotFoundError: if it is neither, listing the shipped recipes.
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


# -- parsers -------------------------------------------------------------------------------------------------


def _common(parser: Any, seed: bool = True) -> None:
    parser.add_argument("--run_dir", "--run-dir", type=str | None, default=None,
                        help="directory of this run (default runs/<command>-<time>); an existing one resumes")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seeds data order, analysis and training")
    parser.add_argument("--progress", type=bool | None, default=None,
                        help="Lightning progress bars (default: when printing to a terminal)")


def _analysis_args(parser: Any) -> None:
    parser.add_argument("--layer", type=str | None, default=None,
                        help="dotted layer name the concepts are read from (default: layer2 / enc2)")
    parser.add_argument("--probe_size", "--probe-size", type=int, default=128, help="probe images analysed")
    parser.add_argument("--n_concepts", "--n-concepts", type=int | None, default=8,
                        help="concepts to discover (None: chosen by silhouette)")


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


def fit_parser(command: Literal["fit", "finetune"] = "fit") -> Any:
    """The recipe schema: what ``fit --config`` and ``finetune --recipe`` read.

    ``finetune`` takes the same options, with the recipe given by ``--recipe`` (applied first, so every other
    option overrides it) and ``--epochs`` meaning the fine-tuning epochs (see :func:`_finetune_argv`).
    """
    import pytorch_lightning as pl
    from jsonargparse import ArgumentParser
    from torch import nn

    import augment  # noqa: F401  (class names resolvable in YAML)
    import callbacks  # noqa: F401
    import recipes.data  # noqa: F401
    import recipes.models  # noqa: F401

    if command not in ("fit", "finetune"):
        raise ValueError(f"Expected `command` to be one of ['fit', 'finetune'], but got {command!r}.")
    if command == "fit":
        p = ArgumentParser(exit_on_error=False, description="Run a recipe: train, diagnose, fine-tune, report.")
        p.add_argument("--config", action="config", help="recipe YAML (or a shipped recipe's name)")
    else:
        p = ArgumentParser(exit_on_error=False, description="Fine-tune a checkpoint with the policy its failures "
                           "imply. Every option of `fit` is accepted and overrides the recipe's value.")
        p.add_argument("--recipe", action="config",
                       help=f"recipe YAML or name ({', '.join(shipped_recipes())}); required")
    _data_arg(p, required=True)
    _model_arg(p)
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="checkpoint to fine-tune (.ckpt); required" if command == "finetune" else
                   "start from this checkpoint instead of training (fine-tuning a user's model)")
    _pickle_arg(p)
    p.add_argument("--epochs", type=int, default=3, help="training epochs (skipped with --ckpt)" if command == "fit"
                   else "unused (training is skipped); `finetune --epochs N` sets --finetune.epochs")
    p.add_argument("--callbacks", type=list[pl.Callback] | None, default=None,
                   help="callbacks while training (default: the monitors and FailureDrivenAugmentation)")
    _analysis_args(p)
    p.add_argument("--finetune.enabled", type=bool, default=True, help="fine-tune with the derived policy")
    p.add_argument("--finetune.epochs", type=int, default=2, help="fine-tuning epochs")
    p.add_argument("--finetune.lr", type=float | None, default=3e-3, help="fine-tuning learning rate")
    p.add_argument("--finetune.augmentations", type=dict[str, str] | None, default=None,
                   help="failure concept → transform name (default shadow → SyntheticShadow, occluder → Cutout)")
    p.add_argument("--finetune.transforms", type=dict[str, nn.Module] | None, default=None,
                   help="transform name → module (default SyntheticShadow, Cutout, HideAndSeek)")
    p.add_argument("--finetune.fallback", type=str | None, default=None,
                   help="transform for failure concepts that match no named concept (e.g. Cutout)")
    p.add_argument("--finetune.max_p", type=float, default=0.9, help="probability for a class failing only "
                   "inside the concept's slice")
    p.add_argument("--finetune.base_p", type=float, default=0.3, help="probability for every other sample")
    p.add_argument("--finetune.calibrate", type=bool, default=True, help="set the shadow transform's strength "
                   "(SyntheticShadow intensity) from the darkening measured under the failing concept's masks")
    _common(p)
    return p


def build_parser() -> Any:
    """The ``conceptfix`` parser with its subcommands."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="conceptfix", exit_on_error=False,
        description="Find the visual concepts a model fails on while it trains, and fix them with augmentation.",
    )
    sub = parser.add_subcommands(required=False, dest="command")

    demo = ArgumentParser(exit_on_error=False, description="The whole loop on built-in planted-concept data.")
    demo.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    demo.add_argument("--finetune_epochs", "--finetune-epochs", type=int, default=5, help="fine-tuning epochs")
    demo.add_argument("--train_size", "--train-size", type=int, default=6000, help="training images")
    demo.add_argument("--test_size", "--test-size", type=int, default=2000, help="test images")
    demo.add_argument("--val_size", "--val-size", type=int, default=500, help="validation (probe) images")
    demo.add_argument("--probe_size", "--probe-size", type=int, default=128, help="probe images analysed")
    _common(demo)
    sub.add_subcommand("demo", demo, help="train the baseline with the monitors, find failure concepts, fine-tune "
                       "with the policy they imply and print a before/after table (no arguments needed)")

    sub.add_subcommand("fit", fit_parser(), help="run a recipe (YAML): train with monitors, diagnose, fine-tune")

    diag = ArgumentParser(exit_on_error=False, description="Concept report of a checkpoint on data, no training.")
    diag.add_argument("--ckpt", type=str, required=True, help="checkpoint (.ckpt)")
    _pickle_arg(diag)
    _data_arg(diag, required=True)
    _model_arg(diag)
    diag.add_argument("--split", type=str, default="val", help="split the probe images come from")
    _analysis_args(diag)
    _common(diag)
    sub.add_subcommand("diagnose", diag, help="ConceptReport, TensorBoard logs and report.md of a checkpoint")

    sub.add_subcommand("finetune", fit_parser("finetune"),
                       help="fine-tune a checkpoint; fine-tuned checkpoint and before/after report")

    cmp = ArgumentParser(exit_on_error=False, description="Compare two models on the same concepts.")
    cmp.add_argument("--ckpt_a", "--ckpt-a", type=str, required=True, help="checkpoint of model A")
    cmp.add_argument("--ckpt_b", "--ckpt-b", type=str, required=True, help="checkpoint of model B")
    _pickle_arg(cmp)
    _data_arg(cmp, required=True)
    _analysis_args(cmp)
    _common(cmp)
    sub.add_subcommand("compare", cmp, help="confusion differences per concept and the ensemble check")
    return parser


# -- nearest-key suggestions ---------------------------------------------------------------------------------


def _class_params(class_path: str) -> list[str]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
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


def _known_classes(key: str | None = None) -> list[str]:
    """The built-in classes an option takes by name: models for ``model``, data modules for ``data``, callbacks
    for ``callbacks``, transforms for ``finetune.transforms``; all of them for any other key."""
    import importlib

    import pytorch_lightning as pl
    from torch import nn

    from recipes.data.base import ContractDataModule

    kinds: dict[str, tuple[str, type]] = {
        "model": ("recipes.models", pl.LightningModule),
        "data": ("recipes.data", ContractDataModule),
        "callbacks": ("callbacks", pl.Callback),
        "finetune.transforms": ("augment", nn.Module),
    }
    names: set[str] = set()
    for module, base in [kinds[key]] if key in kinds else list(kinds.values()):
        for name, obj in vars(importlib.import_module(module)).items():
            if (inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not name.startswith("_")
                    and not inspect.isabstract(obj)):
                names.add(name)
    return sorted(names)


def _parser_keys(parser: Any) -> list[str]:
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        keys += [s.lstrip("-") for s in getattr(action, "option_strings", [])]
    return keys


def suggest(message: str, parser: Any | None = None) -> str:
    """Add ``did you mean …?`` hints to a jsonargparse error message for every unknown key or class name."""
    hints: list[str] = []
    for m in re.finditer(r"class_path '([\w.]+)':\s*Option '([\w.]+)' is not accepted", message):
        near = difflib.get_close_matches(m.group(2), _class_params(m.group(1)), n=3, cutoff=0.5)
        valid = _class_params(m.group(1))
        hints.append(f"{m.group(1).rsplit('.', 1)[-1]} has no option {m.group(2)!r}"
                     + (f"; did you mean {near[0]!r}?" if near else f"; it accepts {valid}"))
    key = re.search(r'Parser key "([\w.]+)"', message)
    kind = {"model": "models", "data": "data modules", "callbacks": "callbacks", "finetune.transforms": "transforms"}
    for name in dict.fromkeys(re.findall(r"Expected a dot import path string: ([\w.]+)", message)):
        known = _known_classes(key.group(1) if key else None)
        near = difflib.get_close_matches(name.rsplit(".", 1)[-1], known, n=3, cutoff=0.5)
        what = kind.get(key.group(1), "classes") if key else "classes"
        hints.append(f"no class {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                     + f"; built-in {what}: {', '.join(known)}")
    unknown = re.findall(r"(?:unrecognized arguments|Unrecognized arguments):\s*(.*)", message)
    unknown_keys = [a.lstrip("-").split("=")[0] for group in unknown for a in group.split() if a.startswith("--")]
    unknown_keys += re.findall(r"does not accept (?:option|key) '([\w.\-]+)'", message)
    unknown_keys += re.findall(r"Key '([\w.\-]+)' is not expected", message)
    keys = _parser_keys(parser) if parser is not None else []
    for key in unknown_keys:
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        if not near and "." in key:
            near = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in keys], 3, 0.5)
        hints.append(f"unknown option {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                  f"; valid options: {sorted(set(keys))}"))
    if not hints:
        return message
    return message.rstrip() + "\n" + "\n".join(f"  hint: {h}" for h in hints)


# -- commands ------------------------------------------------------------------------------------------------


def _positive(name: str, value: Any, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"Expected `{name}` to be a positive integer{' or null' if none_ok else ''}, but got "
                         f"{value!r}.")


def _check_ckpt(name: str, value: str | None) -> None:
    from recipes.loop import LoopError

    if value is None or Path(value).is_file():
        return
    why = "which is a directory" if Path(value).is_dir() else "which does not exist"
    raise LoopError(f"Expected `{name}` to be an existing checkpoint file (.ckpt from `conceptfix fit`/`finetune` or "
                    f"a Lightning Trainer), but got {value!r}, {why}.")


def check_options(cfg: Any, command: str) -> None:
    """Reject bad options before any work is done (no training, no run directory): numbers out of range, a
    ``--run_dir`` that is a file, checkpoints that do not exist.

    Raises:
        UsageError: naming the option, what it accepts and what it got.
        LoopError: for a checkpoint that is not there.
    """
    _check_run_dir(cfg.get("run_dir"))
    _check_numbers(cfg, command)
    if command == "finetune" and cfg.ckpt is None:
        raise UsageError("Expected `--ckpt` to be the checkpoint to fine-tune, but got none (the recipe sets none).")
    for name in ("ckpt", "ckpt_a", "ckpt_b"):
        _check_ckpt(f"--{name}", cfg.get(name))


def _check_numbers(cfg: Any, command: str) -> None:
    seed = cfg.get("seed")
    if seed is not None and not 0 <= seed <= 2**32 - 1:  # what numpy's seeding accepts
        raise UsageError(f"Expected `--seed` to be an integer in [0, 4294967295], but got {seed!r}.")
    if command == "demo":
        for name in ("epochs", "finetune_epochs", "train_size", "val_size", "test_size", "probe_size"):
            _positive(f"--{name}", cfg[name])
        return
    _positive("--probe_size", cfg.probe_size)
    _positive("--n_concepts", cfg.n_concepts, none_ok=True)
    if command not in ("fit", "finetune"):
        return
    _positive("--epochs", cfg.epochs)
    ft = cfg.finetune
    if ft.enabled:
        _positive("--finetune.epochs", ft.epochs)
        if ft.lr is not None and not ft.lr > 0:
            raise UsageError(f"Expected `--finetune.lr` to be a positive number or null, but got {ft.lr!r}.")
        if not 0 <= ft.base_p <= ft.max_p <= 1:
            raise UsageError("Expected 0 <= `--finetune.base_p` <= `--finetune.max_p` <= 1, but got "
                             f"base_p={ft.base_p!r}, max_p={ft.max_p!r}.")


def _check_run_dir(value: str | None) -> None:
    if value is None:
        return
    path = Path(value)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == path else f" ({str(p)!r} is a file)"
            raise UsageError(f"Expected `--run_dir` to be a directory (new or of an earlier run), but got {value!r}, "
                             f"which is a file{where}.")


# Run directories this invocation created: removed again when the command fails on bad input before writing
# anything but its config (an error about the layer, the data or the checkpoint must not leave clutter behind).
_CREATED_RUN_DIRS: list[Path] = []


def _run_dir(value: str | None, command: str) -> Any:
    from recipes.loop import LoopError, RunDirectory, default_run_dir

    run = RunDirectory(value or default_run_dir(command))
    try:
        if not run.path.exists():
            _CREATED_RUN_DIRS.append(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoopError(f"Expected `--run_dir` to be a directory that can be created, but got {str(run.path)!r}: "
                        f"{err.strerror or err}.") from err
    return run


def _remove_unused_run_dirs() -> None:
    """Delete the run directories this invocation created if they hold nothing but ``config.yaml``."""
    import shutil

    for path in _CREATED_RUN_DIRS:
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []
        if all(f == path / "config.yaml" for f in files):
            shutil.rmtree(path, ignore_errors=True)
    _CREATED_RUN_DIRS.clear()


def _progress(value: bool | None) -> bool:
    return sys.stdout.isatty() if value is None else bool(value)


def _save_config(run: Any, parser: Any, cfg: Any) -> None:
    try:
        text = parser.dump(cfg, skip_validation=True)
    except Exception:  # noqa: BLE001 - a config holding live objects still gets a readable record
        text = repr(cfg)
    run.write_text("config.yaml", text)


def _threads() -> int:
    """The torch thread count for a command: ``$CONCEPTFIX_THREADS`` when set; else all cores on an idle
    machine and one thread when others already keep the cores busy (oversubscribed OpenMP threads spin against
    each other and run several times slower than one). Returned so that runs can record it: a seeded run is
    bit-for-bit repeatable at the same thread count, not across thread counts (reductions split differently)."""
    import torch

    env = os.environ.get("CONCEPTFIX_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise SystemExit(f"error: CONCEPTFIX_THREADS must be a positive integer, got {env!r}.")
        threads = int(env)
    else:
        cores = max(1, os.cpu_count() or 1)
        try:
            busy = os.getloadavg()[0] >= cores
        except OSError:
            busy = False
        threads = 1 if busy else cores
    torch.set_num_threads(threads)
    print(f"conceptfix: {threads} torch thread(s) (set CONCEPTFIX_THREADS to choose)", file=sys.stderr)
    return threads


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (and dataloader workers) before anything random is built.

    Model weights are drawn when the model is constructed, so this has to run before the model exists: seeding
    only in the trainer leaves the initial weights, and so the whole run, different from one invocation to the next.
    """
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def demo_config(cfg: Any) -> tuple[Any, Any]:
    """The demo as a recipe: the ``fit`` parser and the config ``fit --config`` reruns (what ``config.yaml`` holds)."""
    parser = fit_parser()
    args = ["--data", "PlantedConceptsDataModule", "--data.train_size", str(cfg.train_size),
            "--data.val_size", str(cfg.val_size), "--data.test_size", str(cfg.test_size), "--data.seed", str(cfg.seed),
            "--model", "ResNetClassifier", "--epochs", str(cfg.epochs), "--finetune.epochs", str(cfg.finetune_epochs),
            "--probe_size", str(cfg.probe_size), "--seed", str(cfg.seed)]
    if cfg.run_dir is not None:
        args += ["--run_dir", str(cfg.run_dir)]
    if cfg.progress is not None:
        args += ["--progress", str(cfg.progress).lower()]
    return parser, _parse(parser, args)


def build_demo(cfg: Any) -> tuple[Any, Any]:
    """The demo's data module and model, seeded with ``cfg.seed`` (the same seed gives the same weights)."""
    parser, fit_cfg = demo_config(cfg)
    _, data, model = build_recipe(fit_cfg, parser)
    return data, model


def run_demo(cfg: Any, parser: Any = None) -> int:
    check_options(cfg, "demo")
    fit, fit_cfg = demo_config(cfg)
    _threads()
    run = _run_dir(cfg.run_dir, "demo")
    _save_config(run, fit, fit_cfg)  # a recipe: `conceptfix fit --config <run>/config.yaml` reruns the demo
    init, dm, model = build_recipe(fit_cfg, fit)
    share = {split: 100 * float(dm.make_dataset(split).table[0, 0]) for split in ("train", "test")}
    _say(f"conceptfix demo: planted-concept data ({cfg.train_size} training images; shadows in "
         f"{share['train']:.0f}% of training and {share['test']:.0f}% of test images); writing to {run.path}")
    start = time.time()
    result = _fit_loop(fit_cfg, init, dm, model, run)
    _say("\nTest accuracy per planted concept before fine-tuning:")
    _say(format_slice_table(result.before, dm.concept_names))
    _say("\nBefore / after fine-tuning with the policy:")
    _say(result.table())
    _say(f"\n{time.time() - start:.0f} s. Report: {run.file('report.md')}; TensorBoard: tensorboard --logdir "
         f"{run.tensorboard}")
    return 0


def _instantiate(parser: Any, cfg: Any) -> Any:
    return parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)


def _model_for(data: Any, model: Any) -> Any:
    from recipes.baseline import default_model

    return model if model is not None else default_model(data)


def build_recipe(cfg: Any, parser: Any) -> tuple[Any, Any, Any]:
    """A recipe's instantiated config, data module and model, seeded with ``cfg.seed``."""
    seed_all(cfg.seed)
    init = _instantiate(parser, cfg)
    return init, init.data, _model_for(init.data, init.model)


def _fit_loop(cfg: Any, init: Any, data: Any, model: Any, run: Any, ckpt: str | None = None,
              finetune_epochs: int | None = None) -> Any:
    from recipes.loop import LoopConfig, run_loop

    ft = cfg.finetune
    config = LoopConfig(
        epochs=cfg.epochs, finetune_epochs=finetune_epochs or ft.epochs, layer=cfg.layer, callbacks=init.callbacks,
        finetune_lr=ft.lr, augmentations=ft.augmentations, transforms=init.finetune.transforms, fallback=ft.fallback,
        max_p=ft.max_p, base_p=ft.base_p, probe_size=cfg.probe_size, n_concepts=cfg.n_concepts, seed=cfg.seed,
        progress=_progress(cfg.progress), pretrained=ckpt is not None, calibrate=ft.calibrate,
    )
    return run_loop(data, model, run, config, log=_say)


def run_recipe(cfg: Any, parser: Any, command: str = "fit", ckpt: str | None = None,
               finetune_epochs: int | None = None) -> int:
    from recipes.loop import diagnose, load_model

    check_options(cfg, command)
    _threads()
    run = _run_dir(cfg.run_dir, command)
    _save_config(run, parser, cfg)
    init, data, model = build_recipe(cfg, parser)
    ckpt = ckpt or init.ckpt
    if ckpt is not None:
        model = load_model(ckpt, model if init.model is not None else None, allow_pickle=cfg.allow_pickle)
    _say(f"conceptfix {command}: {type(data).__name__} → {type(model).__name__}; writing to {run.path}")
    ft = cfg.finetune
    if not ft.enabled:
        if ckpt is None:
            from recipes.loop import train

            model = train(model, data, cfg.epochs, run, "train", init.callbacks or [], cfg.seed,
                          _progress(cfg.progress))
        d = diagnose(model, data, cfg.layer, run, "report", cfg.probe_size, cfg.n_concepts, seed=cfg.seed)
        _say(format_slice_table(d.metrics, d.concept_names) if d.metrics else "")
        _say(f"Report: {run.file('report.md')}")
        return 0
    result = _fit_loop(cfg, init, data, model, run, ckpt, finetune_epochs)
    _say("\nBefore / after fine-tuning with the policy:")
    _say(result.table())
    _say(f"\nFine-tuned checkpoint: {run.file('checkpoints/finetune.ckpt')}\nReport: {run.file('report.md')}")
    return 0


def run_fit(cfg: Any, parser: Any = None) -> int:
    return run_recipe(cfg, fit_parser(), "fit")


def run_finetune(cfg: Any, parser: Any = None) -> int:
    check_options(cfg, "finetune")
    return run_recipe(cfg, fit_parser("finetune"), "finetune", ckpt=cfg.ckpt)


def run_diagnose(cfg: Any, parser: Any) -> int:
    from recipes.loop import diagnose, format_metrics, load_model

    check_options(cfg, "diagnose")
    _threads()
    run = _run_dir(cfg.run_dir, "diagnose")
    _save_config(run, parser, cfg)
    init = _instantiate(parser, cfg)
    model = load_model(cfg.ckpt, init.model, allow_pickle=cfg.allow_pickle)
    _say(f"conceptfix diagnose: {cfg.ckpt} on {type(init.data).__name__}; writing to {run.path}")
    d = diagnose(model, init.data, cfg.layer, run, "report", cfg.probe_size, cfg.n_concepts, seed=cfg.seed,
                 split=cfg.split)
    run.mark_done("diagnose", report="report.json")
    failures = ", ".join(f.name for f in d.report.failures) or "none"
    _say(f"discovered failure concepts: {failures}")
    if d.annotated is not None:
        annotated = ", ".join(r["name"] for r in d.annotated["ranking"] if r["is_failure"]) or "none"
        _say(f"annotated failure concepts: {annotated}")
    if d.metrics:
        _say(format_metrics(d.metrics, d.concept_names))
    _say(f"Report: {run.file('report.md')}; JSON: {run.file('report.json')}; TensorBoard: {run.tensorboard}")
    return 0


def run_compare(cfg: Any, parser: Any) -> int:
    from recipes.loop import compare_models, load_model

    check_options(cfg, "compare")
    _threads()
    run = _run_dir(cfg.run_dir, "compare")
    _save_config(run, parser, cfg)
    init = _instantiate(parser, cfg)
    a = load_model(cfg.ckpt_a, what="`--ckpt-a`", allow_pickle=cfg.allow_pickle)
    b = load_model(cfg.ckpt_b, what="`--ckpt-b`", allow_pickle=cfg.allow_pickle)
    _say(f"conceptfix compare: A={cfg.ckpt_a} vs B={cfg.ckpt_b}; writing to {run.path}")
    result = compare_models(a, b, init.data, cfg.layer, run, cfg.probe_size, cfg.n_concepts, seed=cfg.seed)
    run.mark_done("compare", report="report.json")
    ann = result["annotated"]
    if ann is not None:
        _say(f"{'slice':<12}{'acc A':>8}{'acc B':>8}{'ensemble':>10}")
        for i, name in enumerate(ann["names"]):
            _say(f"{name:<12}{100 * ann['accuracy_a'][i]:>7.1f}%{100 * ann['accuracy_b'][i]:>7.1f}%"
                 f"{100 * ann['accuracy_ensemble'][i]:>9.1f}%")
    _say(f"Report: {run.file('report.md')}")
    return 0


def _parse(parser: Any, argv: Sequence[str]) -> Any:
    import argparse

    try:
        return parser.parse_args(list(argv))
    except argparse.ArgumentError as err:
        raise UsageError(suggest(str(err), _subparser(parser, argv))) from err


def _subparser(parser: Any, argv: Sequence[str]) -> Any:
    subs = getattr(parser, "_subcommands_action", None)
    if subs is None:
        return parser
    for a in argv:
        if a in getattr(subs, "_name_parser_map", {}):
            return subs._name_parser_map[a]
    return parser


class UsageError(Exception):
    """A command line the parser rejected (message already carries the hints)."""


def _expand_recipe_names(argv: list[str]) -> list[str]:
    """``fit --config planted_shadows`` → the shipped recipe's path; ``finetune`` → :func:`_finetune_argv`."""
    out = list(argv)
    if out[:1] == ["finetune"]:
        return ["finetune", *_finetune_argv(out[1:])]
    for i, a in enumerate(out[:-1]):
        if a == "--config" and i > 0 and out[0] == "fit":
            out[i + 1] = resolve_recipe(out[i + 1])
    return out


def _finetune_argv(args: list[str]) -> list[str]:
    """``finetune``'s arguments in the order the recipe schema reads them: the recipe first (so that every other
    option, wherever it stands, overrides it) and ``--epochs`` as ``--finetune.epochs``.

    Raises:
        UsageError: without ``--recipe``.
    """
    if any(a in ("-h", "--help") for a in args):
        return args
    recipe: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--recipe" and i + 1 < len(args):
            recipe, i = args[i + 1], i + 2
            continue
        if a.startswith("--recipe="):
            recipe = a.split("=", 1)[1]
        elif a == "--epochs" or a.startswith("--epochs="):
            rest.append(a.replace("--epochs", "--finetune.epochs", 1))
        else:
            rest.append(a)
        i += 1
    if recipe is None:
        raise UsageError(f"Expected `--recipe` to be a recipe YAML file or the name of a shipped recipe "
                         f"({', '.join(shipped_recipes())}), but got none.")
    return ["--recipe", resolve_recipe(recipe), *rest]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conceptfix``; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    commands: dict[str, Callable[..., int]] = {
        "demo": run_demo,
        "fit": run_fit,
        "finetune": run_finetune,
        "diagnose": run_diagnose,
        "compare": run_compare,
    }
    from recipes.loop import LoopError

    command = argv[0]
    _CREATED_RUN_DIRS.clear()
    try:
        if command not in commands:
            near = difflib.get_close_matches(command, list(commands), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise UsageError(f"Expected a command in {list(commands)}, but got {command!r}.{hint}")
        cfg = _parse(parser, _expand_recipe_names(argv))
        return commands[command](cfg[command], _subparser(parser, argv))
    except UsageError as err:
        print(f"conceptfix {command}: error: {err}", file=sys.stderr)
        return 2
    except (LoopError, FileNotFoundError, ValueError) as err:
        _remove_unused_run_dirs()
        print(f"conceptfix {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"conceptfix {command}: interrupted; run the same command with the same --run_dir to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
