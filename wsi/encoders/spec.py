"""What an encoder is: its architecture, where its weights come from, and its input contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "WeightSource", "EncoderSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB tiles become the network's input.

    Tiles are resized (bilinear, antialiased) to ``input_size`` x ``input_size`` when
    their side differs, scaled to [0, 1], then normalised with ``mean`` and ``std``.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
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


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: one name, one architecture, one weight source, one input contract.

    ``builder`` names the function in :mod:`wsi.encoders.builders` that makes the
    module and maps checkpoint keys; ``timm_kwargs`` go to ``timm.create_model``.
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

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "feature_dim": self.feature_dim,
            "preprocessing": self.preprocessing.as_dict(),
            "licence": self.licence,
            "reference": self.reference,
        }
