"""What an encoder is: its architecture, where its weights come from, and its input contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "POOLINGS",
    "Preprocessing",
    "WeightSource",
    "EncoderSpec",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Which output makes the embedding. "model": the builder's module output as it is
#: (timm's pooled pre-logits, or an attention pooler's); "cls": the class token after the
#: final norm; "cls+mean": the class token concatenated with the mean of the patch tokens
#: (register tokens dropped); "mean": the mean of the patch tokens.
POOLINGS = ("model", "cls", "cls+mean", "mean")


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB tiles become the network's input.

    Tiles are resized (``interpolation``, antialiased) to ``input_size`` x ``input_size``
    when their side differs, scaled to [0, 1], then normalised with ``mean`` and ``std``.
    With ``resize_size`` (the published ``Resize(R)`` + ``CenterCrop(S)``, timm's
    ``crop_pct = S / R``) tiles are resized to R x R and the central S x S kept.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.resize_size is None:  # absent, as before it existed: features keep their identity
            del d["resize_size"]
        return d


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of an encoder come from; never a download.

    ``kind`` is ``"package"`` (a file inside an installed Python package), or ``"file"``
    (a local file: ``--weights PATH``, else the first match in the searched places:
    ``$WSI_WEIGHTS_DIR/<encoder>/``, the local Hugging Face cache for ``hf_repo``, and
    the torch hub checkpoint folder for ``torch_hub_glob``).
    """

    kind: str = "file"
    package: str | None = None
    package_file: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    torch_hub_glob: str | None = None
    #: other file names the published snapshot folder may hold the weights under, in
    #: order of preference after ``hf_filename`` (e.g. ``model.safetensors``)
    alt_filenames: tuple[str, ...] = ()

    def filenames(self) -> tuple[str, ...]:
        """The checkpoint file names of the published snapshot, preferred first."""
        first = (self.hf_filename,) if self.hf_filename else ()
        return first + tuple(f for f in self.alt_filenames if f != self.hf_filename)


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: one name, one architecture, one weight source, one input contract.

    ``builder`` names the function in :mod:`wsi.encoders.builders` that makes the
    module and maps checkpoint keys; ``timm_kwargs`` go to ``timm.create_model``.
    ``layout`` names the key layout of the published checkpoint (``timm``,
    ``transformers``, ...), ``pooling`` which tokens make the embedding (``POOLINGS``),
    ``gated`` whether the owners gate the weights behind an agreement.
    """

    name: str
    architecture: str
    builder: str
    feature_dim: int
    weights: WeightSource
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    licence: str = ""
    reference: str = ""
    layout: str = "timm"
    pooling: str = "model"
    gated: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder {self.name}: pooling {self.pooling!r} not in {POOLINGS}")

    def summary(self) -> dict[str, Any]:
        """What a store records about the encoder (keys unchanged for the original four)."""
        out = {
            "name": self.name,
            "architecture": self.architecture,
            "feature_dim": self.feature_dim,
            "preprocessing": self.preprocessing.as_dict(),
            "licence": self.licence,
            "reference": self.reference,
        }
        if self.pooling != "model":
            out["pooling"] = self.pooling
        return out
