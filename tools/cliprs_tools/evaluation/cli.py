"""`python -m cliprs_tools.evaluation`: measure one or more CLIP models side by side.

Every option is also an environment variable (prefix ``EVAL_``, e.g. ``EVAL_CLASSIFICATION``;
lists as JSON: ``EVAL_MODEL='["a", "b"]'``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.evaluation.datasets import PROMPT, load_captions, load_classification
from cliprs_tools.evaluation.report import write_reports
from cliprs_tools.evaluation.runner import evaluate_model
from cliprs_tools.evaluation.sample import write_sample

SAMPLE_NOTICE = """\
!!! No dataset given: evaluating on a small GENERATED sample ({path}).
!!! Its images are procedural textures, so these figures only show that the tool works.
!!! For real figures put RSICD (or UCM-captions / Sydney-captions) in a folder:
!!!   DIR/dataset_rsicd.json + DIR/images/*.jpg          (captions: retrieval; file-name prefixes: classes)
!!!   or DIR/{{category}}/*.jpg                          (scene classification, ImageFolder)
!!! and run: make eval EVAL_ARGS="--retrieval DIR/dataset_rsicd.json --classification DIR/dataset_rsicd.json"
!!!      (or set EVAL_RETRIEVAL / EVAL_CLASSIFICATION; add --model PATH_OR_ID once per model)"""


class EvalSettings(BaseSettings):
    """Zero-shot scene classification and text/image retrieval for one or more CLIP models."""

    model_config = cli_config("EVAL_", "python -m cliprs_tools.evaluation")

    model: list[str] = Field(
        default_factory=list,
        description="Hugging Face id or local folder; repeat for several models (default: CLIP_MODEL)",
    )
    classification: Path | None = Field(
        None, description="scene classification set: a folder of category folders, or a JSON file"
    )
    retrieval: Path | None = Field(None, description="captions JSON in the RSICD layout (dataset_rsicd.json)")
    images_dir: Path | None = Field(
        None, description="images of the JSON datasets (default: images/ beside the JSON)"
    )
    split: str = Field("test", description="split of the JSON datasets to evaluate: train, val, test or all")
    categories: list[str] | None = Field(None, description="categories to score (default: the 30 RSICD ones)")
    prompt: str = Field(PROMPT, description="prompt template with {category}")
    out: Path = Field(Path("var/eval"), description="folder for results.md/json, plots and failures")
    sample_dir: Path = Field(Path("var/eval-sample"), description="where the generated sample is written")
    device: str | None = Field(None, description="cpu, cuda, cuda:N (default: CLIP_DEVICE)")
    batch_size: int = Field(0, ge=0, description="images per forward pass (0: CLIP_BATCH_SIZE, auto)")


def run(settings: EvalSettings) -> dict[str, Path]:
    """Load each model, evaluate it, write the reports; returns the files written."""
    model_defaults = ModelSettings()
    classification_path, retrieval_path = settings.classification, settings.retrieval
    images_dir, split = settings.images_dir, settings.split
    sample = classification_path is None and retrieval_path is None
    if sample:
        retrieval_path = classification_path = write_sample(settings.sample_dir)
        images_dir, split = None, "test"
        print(SAMPLE_NOTICE.format(path=settings.sample_dir), flush=True)
    classification = (
        load_classification(classification_path, settings.categories, images_dir, split)
        if classification_path
        else None
    )
    retrieval = load_captions(retrieval_path, images_dir, split) if retrieval_path else None
    reports = []
    for name in settings.model or [model_defaults.model]:
        # The bundled sample must run anywhere, so there a model that cannot load falls back to
        # the generated CLIP (loudly); on real data a missing model is an error unless CLIP_FALLBACK.
        model_settings = model_defaults.model_copy(
            update={
                "model": name,
                "device": settings.device or model_defaults.device,
                "fallback": model_defaults.fallback or sample,
            }
        )
        encoder = load_encoder(model_settings)
        if encoder.info.fallback:
            print(
                f"!!! {name!r} could not be loaded: measuring the GENERATED fallback CLIP instead", flush=True
            )
        print(f"==> evaluating {name} on {encoder.info.device}", flush=True)
        reports.append(
            evaluate_model(
                encoder,
                name,
                classification,
                retrieval,
                prompt=settings.prompt,
                batch_size=settings.batch_size,
                root=images_dir or (Path(retrieval_path or classification_path).parent),
            )
        )
        del encoder
    written = write_reports(reports, settings.out)
    print((settings.out / "results.md").read_text().split("## Failures")[0].rstrip())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return written


def main(argv: list[str] | None = None) -> int:
    return run_cli(EvalSettings, run, argv)
