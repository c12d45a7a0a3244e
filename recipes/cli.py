"""The ``conceptfix`` command line: the closed loop, diagnosis, fine-tuning and model comparison.

Built on jsonargparse, so every data module, model, callback and transform is set from YAML or flags with
``class_path`` / ``init_args`` (``--data PlantedConceptsDataModule --data.train_size 2000``), and unknown keys get
the nearest valid ones suggested. Each subcommand is one function of its arguments (:data:`COMMANDS`):

- ``demo`` (:func:`demo`): the whole loop on built-in planted-concept data, no arguments needed;
- ``fit --config recipe.yaml`` (:func:`fit`): any recipe (``recipes/configs/*.yaml``; ``--config planted_shadows``
  for a shipped one);
- ``diagnose --ckpt … --data …`` (:func:`diagnose`): a :class:`~debugger.report.ConceptReport`, TensorBoard logs
  and ``report.md``;
- ``finetune --ckpt … --recipe …`` (:func:`finetune`): fine-tune a checkpoint with the policy its failure concepts
  imply (the recipe gives the defaults, every ``fit`` option overrides it; ``--epochs`` is ``--finetune.epochs``);
- ``compare --ckpt-a … --ckpt-b … --data …`` (:func:`compare`): concept-conditioned confusion differences and the
  ensemble check.

Every run writes one directory (``--run_dir``, default ``runs/<command>-<time>``): ``config.yaml``, ``state.json``,
``checkpoints/``, ``tb/``, ``report.json``, ``report.md``. Running the same command on the same directory resumes.
Options are checked before the directory is made; the seed is set before the model and data are built.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from recipes.parsers import (
    UsageError,
    compare_parser,
    demo_parser,
    diagnose_parser,
    fit_parser,
    parse,
    resolve_recipe,
    shipped_recipes,
)

__all__ = ["COMMANDS", "UsageError", "check_options", "fit_parser", "main", "resolve_recipe", "shipped_recipes"]


def _say(msg: str) -> None:
    print(msg, flush=True)


# -- checks before any work ----------------------------------------------------------------------------------


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


# -- running a command ---------------------------------------------------------------------------------------


#: options a run directory does not record: where the run goes, how it shows progress, whether a trusted file may
#: be unpickled, and the files the options came from (their content is recorded, option by option)
UNRECORDED = ("run_dir", "progress", "overwrite", "allow_pickle", "config", "recipe")


def recorded_options(cfg: Any) -> dict[str, Any]:
    """The options of a parsed command line that decide a run's results, by their command-line names.

    Nested options are flattened as the command line spells them (``data.train_size``, ``data`` for the class);
    :data:`UNRECORDED` options are left out, so a run resumes whatever they are.

    Example:
        >>> from recipes.parsers import demo_parser
        >>> options = recorded_options(demo_parser().parse_args(["--finetune_epochs", "1", "--progress", "true"]))
        >>> options["finetune_epochs"], "progress" in options, "run_dir" in options
        (1, False, False)
    """
    from debugger.files import json_default

    def plain_value(o: Any) -> Any:
        try:
            return json_default(o)
        except TypeError:
            return str(o)  # e.g. jsonargparse's Path: as the command line gave it

    plain = json.loads(json.dumps(cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg), default=plain_value))
    flat: dict[str, Any] = {}

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                if key.startswith("__"):
                    continue
                walk(name if key in ("init_args", "class_path") else f"{name}.{key}" if name else key, inner)
        else:
            flat[name] = value

    walk("", {k: v for k, v in plain.items() if k not in UNRECORDED})
    return flat


@contextmanager
def run_directory(value: str | None, command: str, cfg: Any = None) -> Iterator[Any]:
    """The command's :class:`~recipes.loop.RunDirectory` (``value``, or a fresh ``runs/<command>-<time>``), made
    and claimed for ``command`` with the options of ``cfg`` (see :meth:`~recipes.loop.RunDirectory.claim`;
    ``cfg.overwrite`` empties an earlier run first).

    When the command fails on bad input (an unknown layer, data that does not fit, a checkpoint of another
    architecture) and the directory was made here and holds nothing but ``config.yaml`` and ``state.json``, it is
    removed again; an existing directory (a resume) is never touched.

    Raises:
        LoopError: if the directory cannot be made, or is another command's run or a run with other options.
    """
    from recipes.loop import LoopError, RunDirectory, default_run_dir

    run = RunDirectory(value or default_run_dir(command))
    created = not run.path.exists()
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoopError(f"Expected `--run_dir` to be a directory that can be created, but got {str(run.path)!r}: "
                        f"{err.strerror or err}.") from err
    if cfg is not None:
        run.claim(command, recorded_options(cfg), overwrite=bool(cfg.get("overwrite")))
    try:
        yield run
    except (LoopError, FileNotFoundError, ValueError):
        files = [f for f in run.path.rglob("*") if f.is_file()]
        if created and all(f.name in ("config.yaml", "state.json") and f.parent == run.path for f in files):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _progress(value: bool | None) -> bool:
    return sys.stdout.isatty() if value is None else bool(value)


def _save_config(run: Any, parser: Any, cfg: Any) -> None:
    cfg = cfg.clone()
    cfg.pop("overwrite", None)  # rerunning the saved recipe must not empty its run directory
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
    recipe: dict[str, Any] = {
        "data": {"class_path": "recipes.data.PlantedConceptsDataModule",
                 "init_args": {"train_size": cfg.train_size, "val_size": cfg.val_size, "test_size": cfg.test_size,
                               "seed": cfg.seed}},
        "model": {"class_path": "recipes.models.ResNetClassifier"},
        "epochs": cfg.epochs, "finetune": {"epochs": cfg.finetune_epochs, "control": "no_aug"},
        "probe_size": cfg.probe_size, "n_concepts": cfg.n_concepts,
        "seed": cfg.seed, "run_dir": cfg.run_dir, "progress": cfg.progress,
    }
    return parser, parser.parse_object(recipe)


def build_demo(cfg: Any) -> tuple[Any, Any]:
    """The demo's data module and model, seeded with ``cfg.seed`` (the same seed gives the same weights)."""
    parser, fit_cfg = demo_config(cfg)
    _, data, model = build_recipe(fit_cfg, parser)
    return data, model




def _instantiate(parser: Any, cfg: Any) -> Any:
    return parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)


def build_recipe(cfg: Any, parser: Any) -> tuple[Any, Any, Any]:
    """A recipe's instantiated config, data module and model (default: the baseline that fits the data), seeded
    with ``cfg.seed``."""
    from recipes.baseline import default_model

    seed_all(cfg.seed)
    init = _instantiate(parser, cfg)
    return init, init.data, init.model if init.model is not None else default_model(init.data)


def loop_config(cfg: Any, init: Any, pretrained: bool) -> Any:
    """The :class:`~recipes.loop.LoopConfig` of a recipe (``init``: its instantiated config)."""
    from recipes.loop import LoopConfig

    ft = cfg.finetune
    return LoopConfig(
        epochs=cfg.epochs, finetune_epochs=ft.epochs, layer=cfg.layer, callbacks=init.callbacks, finetune_lr=ft.lr,
        augmentations=ft.augmentations, transforms=init.finetune.transforms, fallback=ft.fallback, max_p=ft.max_p,
        base_p=ft.base_p, probe_size=cfg.probe_size, n_concepts=cfg.n_concepts, seed=cfg.seed,
        progress=_progress(cfg.progress), pretrained=pretrained, calibrate=ft.calibrate, policy=ft.policy,
        bind=ft.bind, control=ft.control, probe_root=cfg.get("probe_root"), report=_report_path(cfg),
    )


def _report_path(cfg: Any) -> str | None:
    """The diagnose report ``finetune`` starts from: ``--report``, or ``--from_run``'s ``report.json``."""
    report, from_run = cfg.get("report"), cfg.get("from_run")
    if report is not None and from_run is not None:
        raise UsageError(f"Expected one of `--report` and `--from_run`, but got both ({report!r}, {from_run!r}).")
    if from_run is not None:
        return str(Path(from_run) / "report.json")
    return str(report) if report is not None else None


# -- the commands --------------------------------------------------------------------------------------------


def demo(argv: Sequence[str]) -> int:
    """``conceptfix demo``: the whole loop on built-in planted-concept data, and its before/after table."""
    from recipes.loop import format_metrics, run_loop

    cfg = parse(demo_parser(), argv)
    check_options(cfg, "demo")
    fit_, fit_cfg = demo_config(cfg)
    _threads()
    with run_directory(cfg.run_dir, "demo", cfg) as run:
        _save_config(run, fit_, fit_cfg)  # a recipe: `conceptfix fit --config <run>/config.yaml` reruns the demo
        init, dm, model = build_recipe(fit_cfg, fit_)
        share = {split: 100 * float(dm.make_dataset(split).table[0, 0]) for split in ("train", "test")}
        _say(f"conceptfix demo: planted-concept data ({cfg.train_size} training images; shadows in "
             f"{share['train']:.0f}% of training and {share['test']:.0f}% of test images); writing to {run.path}")
        start = time.time()
        result = run_loop(dm, model, run, loop_config(fit_cfg, init, pretrained=False), log=_say)
    _say("\nTest accuracy per planted concept before fine-tuning:")
    _say(format_metrics(result.before, dm.concept_names))
    _say("\nBefore / after fine-tuning, the policy beside a no-augmentation arm of the same budget:")
    _say(result.table())
    shows = [m for m in (result.match.matches if result.match is not None else ()) if m.shows]
    if shows:
        _say("\nWhich annotated concept each discovered failure concept shows (annotations only score the choice):")
        for m in shows:
            _say(f"  {m.concept} → {m.transform or 'no match'}: shows {m.shows} ({m.shows_precision:.0%} of its top "
                 "patches)")
    _say(f"\n{time.time() - start:.0f} s. Report: {run.file('report.md')}; TensorBoard: tensorboard --logdir "
         f"{run.tensorboard}")
    return 0


def fit(argv: Sequence[str]) -> int:
    """``conceptfix fit --config recipe``: train with the monitors, diagnose, fine-tune with the policy, report."""
    parser = fit_parser()
    return _run_recipe(parse(parser, argv), parser, "fit")


def finetune(argv: Sequence[str]) -> int:
    """``conceptfix finetune --ckpt … --recipe …``: the recipe's loop from a checkpoint (no training).

    The recipe gives the defaults: every other option overrides it, wherever it stands; ``--epochs`` sets the
    fine-tuning epochs, since there is no training.

    Raises:
        UsageError: without ``--recipe`` (or ``--ckpt``, unless the recipe names one).
        FileNotFoundError: for a recipe that is neither a file nor a shipped recipe's name.
    """
    if "-h" in argv or "--help" in argv:
        return parse(fit_parser("finetune"), argv)  # type: ignore[no-any-return]  # prints the help and exits
    # The recipe must be known before the parser (whose defaults it gives) exists.
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--recipe")
    early.add_argument("--epochs", type=int)
    known, _ = early.parse_known_args(list(argv))
    if known.recipe is None:
        raise UsageError(f"Expected `--recipe` to be a recipe YAML file or the name of a shipped recipe "
                         f"({', '.join(shipped_recipes())}), but got none.")
    parser = fit_parser("finetune", resolve_recipe(known.recipe))
    cfg = parse(parser, argv)
    if known.epochs is not None:
        cfg.finetune.epochs = cfg.epochs
        cfg.epochs = parser.get_defaults().epochs  # the recipe's training epochs: nothing is trained
    return _run_recipe(cfg, parser, "finetune", ckpt=cfg.ckpt)


def _run_recipe(cfg: Any, parser: Any, command: str, ckpt: str | None = None) -> int:
    from recipes.loop import diagnose, format_metrics, load_model, probe_folder, run_loop, train

    check_options(cfg, command)
    _threads()
    with run_directory(cfg.run_dir, command, cfg) as run:
        saved = cfg.clone()
        for key in ("recipe", "report", "from_run"):  # the recipe is in the config: `fit --config` reruns it
            saved.pop(key, None)
        _save_config(run, fit_parser(), saved)
        init, data, model = build_recipe(cfg, parser)
        ckpt = ckpt or init.ckpt
        if ckpt is not None:
            model = load_model(ckpt, model if init.model is not None else None, allow_pickle=cfg.allow_pickle)
        _say(f"conceptfix {command}: {type(data).__name__} → {type(model).__name__}; writing to {run.path}")
        if not cfg.finetune.enabled:
            if ckpt is None:
                model = train(model, data, cfg.epochs, run, "train", init.callbacks or [], cfg.seed,
                              _progress(cfg.progress))
            probe = probe_folder(cfg.probe_root, data) if cfg.get("probe_root") else None
            d = diagnose(model, data, cfg.layer, run, "report", cfg.probe_size, cfg.n_concepts, seed=cfg.seed,
                         probe=probe)
            _say(format_metrics(d.metrics, d.concept_names) if d.metrics else "")
            _say(f"Report: {run.file('report.md')}")
            return 0
        result = run_loop(data, model, run, loop_config(cfg, init, pretrained=ckpt is not None), log=_say)
    _say("\nBefore / after fine-tuning" + (", the policy beside a no-augmentation arm of the same budget:"
                                           if result.control is not None else " with the policy:"))
    _say(result.table())
    if result.policies:
        _say(f"\nFine-tuned checkpoint: {run.file('checkpoints/finetune.ckpt')}")
    _say(f"Report: {run.file('report.md')}")
    return 0


def diagnose(argv: Sequence[str]) -> int:
    """``conceptfix diagnose --ckpt … --data …``: the concept report of a checkpoint, no training."""
    from recipes.loop import diagnose as run_diagnosis
    from recipes.loop import format_metrics, load_model, probe_folder

    parser = diagnose_parser()
    cfg = parse(parser, argv)
    check_options(cfg, "diagnose")
    _threads()
    with run_directory(cfg.run_dir, "diagnose", cfg) as run:
        _save_config(run, parser, cfg)
        init = _instantiate(parser, cfg)
        model = load_model(cfg.ckpt, init.model, allow_pickle=cfg.allow_pickle)
        _say(f"conceptfix diagnose: {cfg.ckpt} on {type(init.data).__name__}; writing to {run.path}")
        probe = probe_folder(cfg.probe_root, init.data) if cfg.probe_root else None
        d = run_diagnosis(model, init.data, cfg.layer, run, "report", cfg.probe_size, cfg.n_concepts, seed=cfg.seed,
                          split=cfg.split, probe=probe)
        run.mark_done("diagnose", report="report.json")
    _say(f"discovered failure concepts: {', '.join(f.name for f in d.report.failures) or 'none'}")
    for line in d.report.to_markdown().splitlines():
        if "probe images" in line and ("need" in line or "unseen" in line):
            _say(line.strip("- "))
    _say(f"fine-tune with the policy they choose: conceptfix finetune --ckpt {cfg.ckpt} --recipe <recipe> "
         f"--from_run {run.path}")
    if d.annotated is not None:
        _say(f"annotated failure concepts: {', '.join(r.name for r in d.annotated.failures()) or 'none'}")
    if d.metrics:
        _say(format_metrics(d.metrics, d.concept_names))
    _say(f"Report: {run.file('report.md')}; JSON: {run.file('report.json')}; TensorBoard: {run.tensorboard}")
    return 0


def compare(argv: Sequence[str]) -> int:
    """``conceptfix compare --ckpt-a … --ckpt-b … --data …``: two models on the same concepts."""
    from recipes.loop import compare_models, load_model

    parser = compare_parser()
    cfg = parse(parser, argv)
    check_options(cfg, "compare")
    _threads()
    with run_directory(cfg.run_dir, "compare", cfg) as run:
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


#: subcommand → (the function running it on its arguments, one line of help)
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "demo": (demo, "train the baseline with the monitors, find failure concepts, fine-tune with the policy they "
                   "imply and print a before/after table (no arguments needed)"),
    "fit": (fit, "run a recipe (YAML): train with monitors, diagnose, fine-tune"),
    "diagnose": (diagnose, "ConceptReport, TensorBoard logs and report.md of a checkpoint"),
    "finetune": (finetune, "fine-tune a checkpoint; fine-tuned checkpoint and before/after report"),
    "compare": (compare, "confusion differences per concept and the ensemble check"),
}


def overview() -> str:
    """What ``conceptfix`` and ``conceptfix --help`` print: the subcommands."""
    width = max(map(len, COMMANDS))
    lines = ["usage: conceptfix <command> [options]   (conceptfix <command> --help lists its options)", "",
             "Find the visual concepts a model fails on while it trains, and fix them with augmentation.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conceptfix``; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    from recipes.loop import LoopError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _say(overview())
        return 0
    command, args = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            near = difflib.get_close_matches(command, list(COMMANDS), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise UsageError(f"Expected a command in {list(COMMANDS)}, but got {command!r}.{hint}")
        return COMMANDS[command][0](args)
    except (UsageError, LoopError, FileNotFoundError, ValueError) as err:
        print(f"conceptfix {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"conceptfix {command}: interrupted; run the same command with the same --run_dir to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
