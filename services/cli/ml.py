"""``covidct diagnose | evaluate | train``: the commands for people who run or build the
models. Flags and JSON keys are a contract other tools rely on."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from services.cli.findings_text import findings_lines
from services.common.config import get_settings
from services.common.errors import StudyError

evaluate_app = typer.Typer(no_args_is_help=True, help="Metrics on labelled data.")
train_app = typer.Typer(no_args_is_help=True, help="Train the slice CNN or the ensemble.")

if TYPE_CHECKING:
    from services.diagnosis import Diagnosis
    from services.preprocess.types import PreparedStudy

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _fail(error: StudyError) -> None:
    typer.echo(f"error: {error.code.value}: {error.message}", err=True)
    raise typer.Exit(2)


def _print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, default=float))
        return
    for key in ("n", "accuracy", "sensitivity", "specificity", "f1", "auc"):
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        typer.echo(f"{key:12s} {shown}")


def diagnose(
    path: Annotated[Path, typer.Argument(help="Study: DICOM folder/zip/tar, NIfTI, image(s).")],
    as_json: JsonFlag = False,
    heatmaps: Annotated[
        Path | None, typer.Option("--heatmaps", help="Write Grad-CAM PNG overlays here.")
    ] = None,
) -> None:
    """Patient-level COVID / NonCOVID verdict for one study."""
    from services.diagnosis import diagnose_path

    if not path.exists():
        typer.echo(f"error: unsupported_format: {path} does not exist", err=True)
        raise typer.Exit(2)
    try:
        result, prepared = diagnose_path(path)
    except StudyError as error:
        _fail(error)
        return
    body = result.as_json()
    if heatmaps is not None:
        body["heatmaps"] = [str(p) for p in _write_heatmaps(result, prepared, heatmaps)]
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
    typer.echo(f"{result.label}  ({probs})")
    typer.echo(
        f"slices used {result.slices_used} of {result.slices_total}; models {result.model_versions}"
    )
    for line in findings_lines(result.findings):
        typer.echo(line)
    for p in body.get("heatmaps", []):
        typer.echo(f"heatmap {p}")


def _write_heatmaps(result: Diagnosis, prepared: PreparedStudy, out_dir: Path) -> list[Path]:
    """The service's heatmap stage, written to files named by slice index."""
    from services.inference.scorer import ScoreBatch
    from services.inference.stage import explain_slices, loaded_slice_model

    scores = ScoreBatch(
        np.array([[1 - p, p] for p in result.slice_probabilities]),
        get_settings().scorer_model_name,
        result.model_versions["slice_cnn"],
    )
    top_k = get_settings().heatmap_top_k
    pngs = explain_slices(prepared.inputs, scores, loaded_slice_model(), top_k)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for position, png in pngs.items():
        path = out_dir / f"slice-{prepared.kept[position]:04d}.png"
        path.write_bytes(png)
        written.append(path)
    return written


@evaluate_app.command("slices")
def evaluate_slices(
    root: Annotated[Path, typer.Option("--root", help="Folder the CSV paths are relative to.")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV file,label[,patient_id,split].")],
    as_json: JsonFlag = False,
    split: Annotated[str | None, typer.Option(help="Only rows of this split.")] = None,
) -> None:
    """Slice-level metrics of the shipped CNN on labelled images."""
    from services.training.evaluation import evaluate_slice_set

    _print_metrics(evaluate_slice_set(root, labels, split=split), as_json)


@evaluate_app.command("studies")
def evaluate_studies(
    root: Annotated[Path, typer.Option("--root", help="Folder holding the studies.")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV study,diagnosis[,...].")],
    as_json: JsonFlag = False,
) -> None:
    """Patient-level metrics of the full pipeline; COVID is positive."""
    from services.training.evaluation import evaluate_study_set

    metrics = evaluate_study_set(root, labels)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, default=float))
        return
    _print_metrics(metrics, as_json=False)
    for row in metrics["studies"]:
        typer.echo(
            f"{row['study']:20s} {row['diagnosis']:10s} {row['label']:9s} "
            f"{row['probability'] if row['probability'] is None else round(row['probability'], 4)}"
        )


@evaluate_app.command("lungs")
def evaluate_lungs_cmd(
    images: Annotated[Path, typer.Option("--images", help="Folder of slice images.")],
    masks: Annotated[Path, typer.Option("--masks", help="Folder of masks, same file names.")],
    as_json: JsonFlag = False,
) -> None:
    """Dice of the lung segmentation against reference masks."""
    from services.training.lung_eval import evaluate_lungs

    result = evaluate_lungs(images, masks)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=float))
        return
    for key in ("dice_mean", "dice_min", "n"):
        typer.echo(f"{key:10s} {result[key]}")


@train_app.command("slices")
def train_slices(
    version: Annotated[str, typer.Option(help="Model version directory name.")] = "v1",
    out: Annotated[
        Path | None, typer.Option(help="Output dir (default models/slice-cnn/V).")
    ] = None,
    backbone: Annotated[
        str, typer.Option(help="efficientnet-lite0 | efficientnet-lite2")
    ] = "efficientnet-lite0",
    image_size: Annotated[int, typer.Option(help="CNN input size (px).")] = 224,
    enhancement: Annotated[str, typer.Option(help="none | he | clahe | he+clahe | auto")] = "auto",
    epochs: Annotated[int, typer.Option()] = 15,
    batch_size: Annotated[int, typer.Option()] = 24,
    lr: Annotated[float, typer.Option()] = 5e-4,
    loss: Annotated[str, typer.Option(help="ce | focal")] = "ce",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; one member each.")] = "0",
    extra: Annotated[list[str] | None, typer.Option(help="Extra source, e.g. sarscov2-ct.")] = None,
    extra_share: Annotated[float, typer.Option(help="Per-epoch share of extra images.")] = 0.5,
    cache_dir: Annotated[Path, typer.Option(help="Prepared-slice cache.")] = Path("cache"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Fine-tune the slice CNN on UCSD train (+extras); select on UCSD val."""
    from services.training.slice_cnn import TrainConfig
    from services.training.slice_experiment import probe_enhancements, train_slice_model

    settings = get_settings()
    out_dir = out or settings.models_dir / "slice-cnn" / version
    probe = None
    if enhancement == "auto":
        probe = probe_enhancements(settings.data_dir, image_size=image_size, cache_dir=cache_dir)
        enhancement = max(probe, key=lambda k: probe[k])
        typer.echo(f"enhancement probe (val AUC): {probe} -> {enhancement}")
    config = TrainConfig(
        backbone=backbone,  # type: ignore[arg-type]
        image_size=image_size,
        enhancement=enhancement,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,  # type: ignore[arg-type]
        extra_share=extra_share if extra else 0.0,
        device=device,
    )
    report = train_slice_model(
        settings.data_dir,
        out_dir,
        version,
        config,
        seeds=tuple(int(s) for s in seeds.split(",")),
        extra_sources=tuple(extra or ()),
        cache_dir=cache_dir,
        command="covidct " + shlex.join(sys.argv[1:]),
    )
    if probe is not None:
        report["enhancement_probe"] = probe
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    _print_metrics(report["val"], as_json=False)


@train_app.command("ensemble")
def train_ensemble(
    version: Annotated[str, typer.Option(help="Ensemble version directory name.")] = "v1",
    folds: Annotated[int, typer.Option(help="CNN cross-fitting folds for OOF probabilities.")] = 5,
    fold_epochs: Annotated[int, typer.Option(help="Epochs of each fold CNN.")] = 6,
    cache_dir: Annotated[Path, typer.Option(help="Prepared-slice cache.")] = Path("cache"),
) -> None:
    """Fit the XGBoost+SVM soft vote on out-of-fold CNN probabilities, grouped by patient."""
    from services.training.ensemble_cv import train_ensemble_model

    settings = get_settings()
    report = train_ensemble_model(
        settings,
        version,
        folds=folds,
        fold_epochs=fold_epochs,
        cache_dir=cache_dir,
        command="covidct " + shlex.join(sys.argv[1:]),
    )
    _print_metrics(report["cv"], as_json=False)


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@train_app.command("realct", context_settings=_PASS_THROUGH)
def train_realct(ctx: typer.Context) -> None:
    """Slice CNN on real CT slices (the v2 recipe); options as
    `python -m services.training.realct_train --help`."""
    from services.training.realct_train import main as realct_train

    realct_train(list(ctx.args))


@evaluate_app.command("realct", context_settings=_PASS_THROUGH)
def evaluate_realct(ctx: typer.Context) -> None:
    """Per-source metrics with bootstrap CIs, COVID-CT-MD per band; options as
    `python -m services.training.realct_eval --help`."""
    from services.training.realct_eval import main as realct_eval

    realct_eval(list(ctx.args))
