"""The `affcache` command line.

Every DVC stage's `cmd` is one of these commands, so what `dvc repro` runs is exactly what a user
can run by hand. Commands only parse options and hand over to `affcache.stages.*`; heavy imports
(torch, transformers) happen inside the command that needs them so `affcache --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from extractors.registry import modalities  # cheap: the registries read declarations, import no torch
from heads.registry import FUSIONS, HEADS, model_names
from pipeline.datasets import adapter_names  # cheap too: declarations read from the source
from pipeline.config import ParamsError
from pipeline.records import SPLITS

log = logging.getLogger("affcache")


class UserError(click.ClickException):
    """An error whose message is meant for the user as it is (file, problem, fix)."""


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)  # also when called again for options given after the subcommand
    # Libraries we drive are chatty at INFO; keep their warnings.
    for noisy in ("transformers", "urllib3", "filelock", "fsspec", "numcodecs", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if level > logging.INFO:
        _silence_library_bars()


def _silence_library_bars() -> None:
    """Under `-q`, the bars that Hugging Face libraries draw themselves ("Loading weights", hub
    downloads) go too. The variable reaches libraries imported later and worker processes; the
    calls reach those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _params_option(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["params_path"] = value


def _verbosity_option(sign: int):
    def callback(ctx: click.Context, _param: click.Parameter, value: int) -> None:
        if value:
            obj = ctx.ensure_object(dict)
            obj["verbosity"] = obj.get("verbosity", 0) + sign * value
            _setup_logging(obj["verbosity"])

    return callback


_VERBOSE_HELP = "More log output (-v: debug)."
_QUIET_HELP = "Less log output (-q: warnings only, -qq: errors only)."
_PARAMS_HELP = "Params file the stage commands read their settings from."


def shared_options(command):
    """`-v`, `-q` and `--params` after the subcommand too (`affcache extract face -v`), as before it."""
    for decorator in (
        click.option("-v", "--verbose", count=True, expose_value=False, callback=_verbosity_option(1),
                     help=_VERBOSE_HELP),
        click.option("-q", "--quiet", count=True, expose_value=False, callback=_verbosity_option(-1),
                     help=_QUIET_HELP),
        click.option("--params", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     expose_value=False, callback=_params_option, help=_PARAMS_HELP + " [default: params.yaml]"),
    ):
        command = decorator(command)
    return command


class AffcacheGroup(click.Group):
    """Adds the shared options to every subcommand."""

    def command(self, *args, **kwargs):
        decorator = super().command(*args, **kwargs)
        return lambda f: decorator(shared_options(f))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types whose messages already name the file, the problem and the fix."""
    from pipeline.datasets import DatasetError
    from pipeline.labels import LabelError
    from pipeline.media import MediaError
    from affcache.stages import StageFailed
    from pipeline.store import StoreError

    errors: list[type[BaseException]] = [ParamsError, StageFailed, FileNotFoundError, DatasetError,
                                         LabelError, MediaError, StoreError]
    try:
        from extractors.base import ExtractorError, VideoError

        errors += [ExtractorError, VideoError]
    except ImportError:  # pragma: no cover - extractors need torch, which is always installed
        pass
    return tuple(errors)


def _run_stage(fn, params_path: Path, *args, **kwargs) -> None:
    """Check the whole params file, then run a stage; turn the errors users can fix into one
    clear line and a non-zero exit."""
    from affcache.stages.schema import check_params_file

    try:
        check_params_file(params_path)
        fn(params_path, *args, **kwargs)
    except _user_errors() as exc:
        raise UserError(str(exc)) from exc


@click.group(cls=AffcacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="affcache", prog_name="affcache", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help=_VERBOSE_HELP)
@click.option("-q", "--quiet", count=True, help=_QUIET_HELP)
@click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
    help=_PARAMS_HELP,
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int, params_path: Path) -> None:
    """affcache: decode once, encode once, cache forever; train small heads many times.

    The stage commands (index, extract, train, fuse, evaluate, report) are what `dvc repro` runs;
    each reads its own section of params.yaml.
    """
    _setup_logging(verbose - quiet)
    ctx.obj = {"params_path": params_path, "verbosity": verbose - quiet}


# --------------------------------------------------------------------------- demo


@main.command("demo-data")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Root of the generated Aff-Wild2-shaped tree (default: params `demo.root`).")
@click.option("--labels-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Drive lengths, fps, invalid spans and splits from real VA annotation files.")
@click.pass_context
def demo_data(ctx: click.Context, out: Path | None, labels_from: Path | None) -> None:
    """Generate the synthetic demo dataset (params section `demo`)."""
    from affcache.stages import demo_data as demo_data_stage

    _run_stage(demo_data_stage.run, ctx.obj["params_path"], out=out, labels_from=labels_from)


@main.command("demo-models")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the tiny checkpoints (default: params `demo_models.out`).")
@click.pass_context
def demo_models(ctx: click.Context, out: Path | None) -> None:
    """Write tiny random-initialised checkpoints of the real encoder classes (fixed seeds)."""
    from affcache.stages import demo_models as demo_models_stage

    _run_stage(demo_models_stage.run, ctx.obj["params_path"], out=out)


# --------------------------------------------------------------------------- data


@main.command("index")
@click.option("--adapter", type=click.Choice(adapter_names()), default=None,
              help="Dataset adapter, as declared by `@register_adapter` in pipeline/datasets/ "
                   "(default: params `dataset.adapter`).")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dataset root (default: params `dataset.root`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Index file to write (default: params `dataset.index`).")
@click.pass_context
def index(ctx: click.Context, adapter: str | None, root: Path | None, out: Path | None) -> None:
    """Scan a dataset into the video index (fps and frame counts read from the containers)."""
    from affcache.stages import index as index_stage

    _run_stage(index_stage.run, ctx.obj["params_path"], adapter=adapter, root=root, out=out)


# --------------------------------------------------------------------------- pipeline stages


@main.command("extract")
@click.argument("modality", type=click.Choice(modalities()))
@click.option("--device", default=None, help="Device for the model (auto, cpu, cuda, cuda:1, mps); "
              "default: the config's `device` (not part of the store's fingerprint: same store on any device).")
@click.option("--videos", "video_ids", multiple=True, metavar="ID",
              help="Extract only these video ids of the index (repeat the option, or separate ids by commas).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
              help="local (threads in this process) or ray (an actor pool on a Ray cluster, params "
                   "`extract.<modality>.ray`); default: params `extract.<modality>.engine`, else local.")
@click.pass_context
def extract(ctx: click.Context, modality: str, device: str | None, video_ids: tuple[str, ...],
            engine: str | None) -> None:
    """Extract one modality's features for every video in the index into its Zarr store.

    Resumable and incremental: videos already complete in the store are skipped; a video that
    fails is recorded in `<modality>/<store>.failures.json` and the command exits non-zero after
    finishing the others.
    """
    from affcache.stages import extract as extract_stage

    ids = [i for item in video_ids for i in item.split(",") if i]
    _run_stage(extract_stage.run, ctx.obj["params_path"], modality, device=device, video_ids=ids or None,
               engine=engine)


@main.command("train")
@click.argument("head", type=click.Choice(HEADS))
@click.pass_context
def train(ctx: click.Context, head: str) -> None:
    """Train one unimodal head on the cached features; write predictions for every split."""
    from affcache.stages import train as train_stage

    _run_stage(train_stage.run, ctx.obj["params_path"], head)


@main.command("train-static")
@click.argument("name")
@click.pass_context
def train_static(ctx: click.Context, name: str) -> None:
    """Fine-tune a frame-level encoder on the face crops (params `train_static.<name>`); write its weights
    to data/static/<name>, which the extractor of its modality loads (README, "Static fine-tuning")."""
    from affcache.stages import train_static as train_static_stage

    _run_stage(train_static_stage.run, ctx.obj["params_path"], name)


@main.command("fuse")
@click.argument("fusion", type=click.Choice(FUSIONS))
@click.pass_context
def fuse(ctx: click.Context, fusion: str) -> None:
    """Train one fusion on the heads' outputs."""
    from affcache.stages import fuse as fuse_stage

    _run_stage(fuse_stage.run, ctx.obj["params_path"], fusion)


@main.command("evaluate")
@click.option("--task", type=click.Choice(["va", "expr"]), default="va", show_default=True,
              help="Which models to score: valence/arousal, or the expression (EXPR) models.")
@click.pass_context
def evaluate(ctx: click.Context, task: str) -> None:
    """Score every head and fusion on validation; write metrics and plot data."""
    from affcache.stages import evaluate as evaluate_stage

    _run_stage(evaluate_stage.run if task == "va" else evaluate_stage.run_expr, ctx.obj["params_path"])


@main.command("report")
@click.pass_context
def report(ctx: click.Context) -> None:
    """Write the static HTML report (data/reports/index.html)."""
    from affcache.stages import report as report_stage

    _run_stage(report_stage.run, ctx.obj["params_path"])


@main.command("export")
@click.option("--model", type=click.Choice([*model_names(None), "late_fusion"]), default=None,
              help="Which predictions to export (VA or EXPR model, or late_fusion: the weights fitted on "
                   "validation; default: the best VA model on validation).")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Split to export.")
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="ABAW template file whose row order and count the submission follows.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Submission file to write.")
@click.pass_context
def export(ctx: click.Context, model: str | None, split: str, template: Path | None, out: Path) -> None:
    """Write an ABAW submission file (image_location,valence,arousal; an expr_ model: image_location,Neutral,...,Other)."""
    from affcache.stages import export as export_stage

    _run_stage(export_stage.run, ctx.obj["params_path"], model=model, split=split, template=template, out=out)


@main.command("predict")
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/predictions"),
              show_default=True, help="Folder for per-video CSV files, plots and the features cache of new videos.")
@click.option("--model", default=None,
              help=f"{', '.join(model_names())} (default: params `predict.model`, "
                   "else the best model on validation).")
@click.option("--max-faces", type=click.IntRange(min=0), default=None,
              help="Persons followed per video, the faces seen longest first (default: params "
                   "`predict.max_faces`, 4; 0 = every tracked face).")
@click.pass_context
def predict(ctx: click.Context, videos: tuple[Path, ...], out: Path, model: str | None, max_faces: int | None) -> None:
    """Run the extractors (cached or fresh) and the trained models on new videos (files, or
    folders: every video file below them; files that share a name get distinct ids).

    Writes <out>/<video>.csv (frame, time, person, valence, arousal, face and voice columns,
    per-head columns, gate weights; one row per frame and person) and <out>/<video>.png per video;
    a video that fails is reported and the others still run.
    """
    from affcache.stages import predict as predict_stage

    _run_stage(predict_stage.run, ctx.obj["params_path"], list(videos), out, model=model, max_faces=max_faces)


# --------------------------------------------------------------------------- params


@main.group("params")
def params_group() -> None:
    """Inspect params files and profiles."""


@params_group.command("show")
@click.argument("profile", default="params.yaml")
@click.option("--stage", "stages", multiple=True, help="Only this stage (dvc.yaml name, e.g. fuse_dcmmoe); repeatable.")
def params_show(profile: str, stages: tuple[str, ...]) -> None:
    """Print every stage's fully resolved config (defaults filled in) as YAML.

    PROFILE is a profile name (`paper`: affcache/profiles/paper.yaml; `demo`: the repository's
    params.yaml) or a params file.
    """
    import yaml

    import textwrap

    from affcache.stages.resolve import resolve_profile, stage_notes

    try:
        resolved = resolve_profile(profile)
    except _user_errors() as exc:
        raise UserError(str(exc)) from exc
    unknown = [s for s in stages if s not in resolved]
    if unknown:
        raise UserError(f"{profile}: unknown stage(s) {', '.join(unknown)}; known: {', '.join(resolved)}")
    shown = {s: resolved[s] for s in stages} if stages else resolved
    notes = stage_notes(shown)
    for stage, config in shown.items():  # one block per stage, its note (if any) as comments above it
        if stage in notes:
            click.echo("\n".join(f"# {line}" for line in textwrap.wrap(notes[stage], 98)))
        click.echo(yaml.safe_dump({stage: config}, sort_keys=False, default_flow_style=False, width=100), nl=False)


@main.command("dvc-yaml")
@click.option("--check", is_flag=True, help="Only compare: exit 1 if dvc.yaml is not what the declarations give.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("dvc.yaml"), show_default=True)
def dvc_yaml(check: bool, out: Path) -> None:
    """Write dvc.yaml from the plug-in declarations (one extraction stage per declared modality, one
    train/fuse stage per declared model, each with the import closure of its code as deps)."""
    from affcache import dvc_yaml as gen

    if check:
        if not out.exists() or out.read_text() != gen.render():
            raise UserError(f"{out} is stale: the declarations or the code's imports changed; run `affcache dvc-yaml`")
        click.echo(f"{out} is up to date")
        return
    click.echo(f"{out} {'written' if gen.write(out) else 'already up to date'}")


# --------------------------------------------------------------------------- store tools


@main.group("store", cls=AffcacheGroup)
def store() -> None:
    """Inspect, check, upgrade and export feature stores."""


def _store_call(fn_name: str, *args):
    """Run `pipeline.store.<fn_name>`; a StoreError (it names the store and the fix) exits non-zero."""
    from pipeline import store as store_lib

    try:
        return getattr(store_lib, fn_name)(*args)
    except store_lib.StoreError as exc:
        raise UserError(str(exc)) from exc


@store.command("info")
@click.argument("url")
def store_info(url: str) -> None:
    """Summarise a store: attributes, videos, arrays, size on disk."""
    import json

    click.echo(json.dumps(_store_call("store_info", url), indent=2, default=str))


@store.command("verify")
@click.argument("url")
@click.option("--repair", is_flag=True,
              help="Mark every damaged video incomplete, so the next extraction run rewrites it.")
def store_verify(url: str, repair: bool) -> None:
    """Check a store's integrity (every checksum of every chunk); exit non-zero and list the problems."""
    problems = _store_call("verify", url, None, repair)
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise UserError(f"{url}: {len(problems)} problem(s) found"
                        + ("; damaged videos are marked for re-extraction: re-run the extraction stage" if repair else ""))
    click.echo(f"{url}: ok")


@store.command("upgrade")
@click.argument("url")
def store_upgrade(url: str) -> None:
    """Convert a store of the folder-per-video layout (schema 2) in place, without re-extraction."""
    done = _store_call("upgrade_store", url)
    click.echo(f"{url}: converted {len(done['converted'])} video(s)"
               + (f"; dropped (incomplete or damaged, the next extraction run redoes them): {', '.join(done['dropped'])}"
                  if done["dropped"] else ""))


@store.command("export-h5")
@click.argument("url")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def store_export_h5(url: str, out: Path) -> None:
    """Export the complete videos of a store to one HDF5 file."""
    _store_call("export_h5", url, out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
