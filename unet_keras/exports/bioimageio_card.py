"""What a BioImage.IO package says about its model for the zoo: who made and maintains it,
what to cite, the training data and its terms, a cover image and the model card.

The facts come from the model's record and, for a shipped model, from the JSON beside it
(`unet_keras.pretrained_models`): how it was trained, on whose data, its held-out scores.
Nothing is filled in that those do not say: a model without a known data set gets no
training-data entry, and a data set without a known licence is described as such.
bioimageio.spec is imported inside the functions (the `bioimageio` extra).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unet_keras.pretrained_models import SHIPPED, resolve, shipped_file, training_record
from unet_keras.record import ModelRecord

# (text, DOI): the U-Net, then the ISBI 2012 data's, which its terms ask publications to cite.
UNET_PAPER = (
    "Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "10.1007/978-3-319-24574-4_28",
)
ISBI_PAPERS = (
    (
        "Arganda-Carreras I. et al. (2015). Crowdsourcing the creation of image segmentation "
        "algorithms for connectomics. Front. Neuroanat. 9:142 (the ISBI 2012 challenge).",
        "10.3389/fnana.2015.00142",
    ),
    (
        "Cardona A. et al. (2010). An Integrated Micro- and Macroarchitectural Analysis of the "
        "Drosophila Brain by Computer-Assisted Serial Section Electron Microscopy. "
        "PLoS Biol 8(10): e1000502 (the data set).",
        "10.1371/journal.pbio.1000502",
    ),
    (
        "Cardona A. et al. (2012). TrakEM2 Software for Neural Circuit Reconstruction. "
        "PLoS ONE 7(6): e38011 (cited as the data's terms ask).",
        "10.1371/journal.pone.0038011",
    ),
)
DEFAULT_AUTHORS = ("unet-keras developers",)
# The zoo shows covers at 2:1 and asks for files under 500 kB: two 256-pixel panels.
COVER_SIDE = 256


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    """Who the package names and where it lives: authors (names), maintainers (GitHub user
    names), the package's version and its git repository (left out when None)."""

    authors: tuple[str, ...] = DEFAULT_AUTHORS
    maintainers: tuple[str, ...] = ()
    version: str = "1"
    git_repo: str | None = None

    def __post_init__(self) -> None:
        if not self.authors:
            raise ValueError("--authors: a BioImage.IO package needs at least one author")
        for name in (*self.authors, *self.maintainers):
            if "/" in name or "\\" in name or not name.strip():
                raise ValueError(f"--authors/--maintainers: {name!r} is not a name")
        if self.git_repo is not None and not self.git_repo.startswith("https://"):
            raise ValueError(f"--git-repo {self.git_repo}: expected an https:// URL")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What is known of a model beyond its record: the shipped model's name and JSON."""

    name: str
    summary: str
    training: dict[str, Any]

    @property
    def data_terms(self) -> str | None:
        """The terms of the training data as the shipped model's JSON quotes them."""
        return self.training.get("data_terms")

    @property
    def isbi2012(self) -> bool:
        """Whether it was trained on the ISBI 2012 challenge's data (whose papers we cite)."""
        return "ISBI 2012" in self.training["training"]["data"]


def provenance(model_path: str | os.PathLike) -> Provenance | None:
    """The shipped model that `model_path` names, or None for any other model."""
    name = str(model_path)
    shipped = shipped_file(name)
    if shipped is None or resolve(model_path) != shipped:
        return None
    return Provenance(name, SHIPPED[name], training_record(name))


def citations(source: Provenance | None) -> list[Any]:
    """The spec's cite entries: the U-Net paper, and the ISBI 2012 data's for its models."""
    from bioimageio.spec.model import v0_5

    papers = [UNET_PAPER, *(ISBI_PAPERS if source and source.isbi2012 else ())]
    return [v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in papers]


def people(info: PackageInfo) -> dict[str, Any]:
    """The spec's `authors` and `maintainers` fields."""
    import httpx
    from bioimageio.spec.model import v0_5

    try:
        # bioimageio.spec looks each maintainer up on GitHub's API.
        maintainers = [v0_5.Maintainer(github_user=user) for user in info.maintainers]
    except (ValueError, httpx.HTTPError) as error:
        raise ValueError(
            f"--maintainers {' '.join(info.maintainers)}: not confirmed as GitHub users "
            f"({str(error).splitlines()[0]})"
        ) from None
    return {
        "authors": [v0_5.Author(name=name) for name in info.authors],
        "maintainers": maintainers,
    }


def training_data(source: Provenance | None) -> Any:
    """The training data set as an inline dataset description, or None when unknown."""
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.model import v0_5

    if source is None or not source.isbi2012:
        return None
    return DatasetDescr(
        name="ISBI 2012 EM segmentation challenge data",
        description=(
            "Serial-section TEM of the Drosophila first instar larva ventral nerve cord, "
            "4 x 4 x 50 nm, with membrane labels. No licence identifier is known for these "
            "data; the terms quoted with them: free to use for generating or testing "
            "non-commercial image segmentation software; publications must cite TrakEM2, "
            "Cardona et al. 2010 and the challenge paper (see cite)."
        ),
        authors=[v0_5.Author(name="Cardona A. et al.")],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in ISBI_PAPERS],
        tags=["electron-microscopy", "drosophila", "neurons", "membranes", "isbi2012"],
    )


def cover_image(image: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    """Writes the zoo's 2:1 cover: the test section beside its prediction, as a PNG."""
    side = min(image.shape[0], image.shape[1])
    section = _as_gray(image[:side, :side, 0])
    if probabilities.shape[-1] == 1:
        shown = probabilities[:side, :side, 0]
    else:  # the most probable class, its index spread over the grey levels
        shown = np.argmax(probabilities[:side, :side], axis=-1) / (probabilities.shape[-1] - 1)
    panels = [
        Image.fromarray(panel).resize((COVER_SIDE, COVER_SIDE), Image.Resampling.LANCZOS)
        for panel in (section, np.round(np.clip(shown, 0, 1) * 255).astype(np.uint8))
    ]
    cover = Image.new("L", (2 * COVER_SIDE, COVER_SIDE))
    for i, panel in enumerate(panels):
        cover.paste(panel, (i * COVER_SIDE, 0))
    cover.save(path, optimize=True)
    return path


def _as_gray(channel: np.ndarray) -> np.ndarray:
    """A channel as 8-bit grey levels, stretched between its extremes unless uint8."""
    if channel.dtype == np.uint8:
        return channel
    low, high = float(channel.min()), float(channel.max())
    scaled = (channel.astype(np.float64) - low) / max(high - low, 1e-12)
    return np.round(scaled * 255).astype(np.uint8)


def model_card(
    record: ModelRecord,
    source: Provenance | None,
    *,
    halo: int,
    sizes: tuple[int, int],
    input_id: str,
    output_id: str,
    mask_convention: str,
) -> str:
    """The package's documentation (README.md): what the model does and how to check it."""
    model, normalization = record.model, record.normalization
    what = source.summary if source else "not recorded with the model (see its record)"
    offsets = ", ".join(f"{value:g}" for value in normalization.offset)
    scales = ", ".join(f"{value:g}" for value in normalization.scale)
    smallest, step = sizes
    lines = [
        f"# {source.name if source else 'unet-keras U-Net'}",
        "",
        "A U-Net (Ronneberger, Fischer and Brox 2015) trained with unet-keras: "
        f"{model.filters} filters, depth {model.depth}, {model.padding} padding, "
        f"{model.in_channels} input channel(s), {model.classes} output channel(s).",
        "",
        "## What it segments",
        "",
        what,
        "",
        "## Input and output",
        "",
        f"- Input `{input_id}`: images [batch, y, x, channel] in {normalization.input_dtype}; "
        f"y and x at least {smallest} pixels and {smallest} plus a multiple of {step}. The "
        f"package normalises them as the model was trained: (x - {offsets}) / {scales}.",
        f"- Output `{output_id}`: float32 probabilities at the input's size. {mask_convention}",
        f"- Border: {halo} pixels of context, mirrored beyond the image (reflect padding), "
        "as `unet-keras predict` does: the package predicts whole images as predict does.",
        "",
        "## Training data",
        "",
        *_training_lines(source),
        "",
        "## Validation",
        "",
        *_validation_lines(record, source),
        "",
        "## Limitations",
        "",
        "- Trained on one imaging modality and resolution; other microscopes, stains or "
        "pixel sizes need fine-tuning (`unet-keras train --init-from`) or at least a check "
        "against labelled images of their own (`unet-keras evaluate`).",
        "- A semantic segmentation: touching objects are separated only by the predicted "
        "boundaries; objects are labelled afterwards (`unet-keras predict --instances "
        "watershed`).",
        "- 2D: volumes are predicted section by section.",
        "",
        "## How to run",
        "",
        "```python",
        "from bioimageio.core import predict",
        "",
        f'sample = predict(model="package.zip", inputs={{"{input_id}": image[None]}})',
        f'probabilities = sample.members["{output_id}"].data',
        "```",
        "",
        "The package's `config.unet_keras` holds the model's record; the same model as a "
        "`.keras` file runs with `unet-keras predict --model MODEL --input IN --output OUT`.",
    ]
    return "\n".join(lines) + "\n"


def _training_lines(source: Provenance | None) -> list[str]:
    if source is None:
        return ["Not recorded with this model."]
    training = source.training["training"]
    lines = [f"- Data: {training['data']}."]
    if source.data_terms:
        lines.append(
            "- Licence: no licence identifier is known for the data; the terms quoted with "
            f"them: {source.data_terms} These terms apply to this model's weights too."
        )
    lines.append(f"- Trained with: `{training['remake']}` ({training['machine']}).")
    return lines


def _validation_lines(record: ModelRecord, source: Provenance | None) -> list[str]:
    lines = []
    if record.threshold is not None:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(record.threshold.scores.items()))
        images = ", ".join(record.threshold.images) or "none recorded"
        lines.append(
            f"Threshold {record.threshold_value:g}, chosen by {record.threshold.chosen_by} on "
            f"the validation images ({images}): {scores}."
        )
    if source is not None and "scores" in source.training:
        scores = source.training["scores"]
        columns = scores["columns"].split(" | ")
        lines += ["", f"Held out: {scores['held_out']}.", ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += scores["table"]
    if not lines:
        lines.append("No scores are recorded with this model.")
    lines += [
        "",
        "To validate on labelled images of your own (a folder of images/ and masks/): "
        "`unet-keras evaluate --model MODEL --data DATA` (pixel error, IoU, Dice, adapted "
        "Rand, VI, the ISBI 2012 challenge's scores).",
    ]
    return lines
