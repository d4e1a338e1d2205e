"""Family registry: choosing a family is a config value; an unknown name lists the known ones."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from models.anogan import AnoGAN
from models.base import WindowModel
from models.classical import IsolationForestModel, PCAReconstruction
from models.dense_ae import DenseAE
from models.knn import WindowKNN
from models.lstm_ae import LSTMAE
from models.transformer_ae import TransformerAE
from models.usad import USAD
from models.vae import VAE

FAMILIES: dict[str, type[WindowModel]] = {
    cls.name: cls for cls in (DenseAE, VAE, LSTMAE, TransformerAE, USAD)
}
FAMILIES |= {cls.name: cls for cls in (AnoGAN, PCAReconstruction, IsolationForestModel, WindowKNN)}


class UnknownFamilyError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_family(name: str) -> type[WindowModel]:
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise UnknownFamilyError(f"unknown model family {name!r}; available: {known}") from None


def build_model(name: str, n_features: int, window: int, params: dict[str, Any]) -> WindowModel:
    """Instantiate a family; bad hyper-parameters raise ValueError naming the field."""
    cls = get_family(name)
    try:
        typed = cls.Params.model_validate(params)
    except ValidationError as err:
        bad = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"family {name!r} params: {bad}") from None
    return cls(n_features, window, typed)


def describe_families() -> dict[str, str]:
    return {name: cls.description for name, cls in sorted(FAMILIES.items())}
