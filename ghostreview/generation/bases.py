"""Checkpoint bases: what a checkpoint was trained from, beyond its architecture family.

A base decides the prompt conventions and the recommended settings a model is reviewed with (the benchmark's
``bases.yaml``, :mod:`ghostreview.protocol`), and for SDXL v-prediction checkpoints how it is sampled. The family
(the architecture: SD1, SDXL) is always read from the tensor keys (``loading.family_from_shapes``), never trusted
from a name; a base must fit it (:data:`BASE_FAMILIES`).

What a file says about its base, read from the header already read once (``loading.CheckpointFile``):

- ``__metadata__["modelspec.architecture"]`` (Stability's ModelSpec, written by kohya's sd-scripts and others):
  "stable-diffusion-v1", "stable-diffusion-xl-v1-base" (every SDXL fine-tune, Pony, Illustrious and NoobAI included,
  says the latter); other values (SD2, SD3, Flux) name no base reviewed here.
- ``__metadata__["modelspec.prediction_type"]``: "epsilon" or "v" (sd-scripts' values).
- the marker keys ``v_pred`` and ``ztsnr`` (empty tensors; NoobAI-XL V-Pred): A1111 since PR 16567 / 16569, Forge
  and ComfyUI switch to v-prediction on ``v_pred`` and to the zero-terminal-SNR schedule on ``ztsnr``.

A contradiction between the model entry and the file is a :class:`BaseError` naming both, the file and the key.
This module imports nothing heavy (no torch): ``protocol`` reads the base list from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ghostreview.errors import UserError

if TYPE_CHECKING:
    from ghostreview.generation.loading import CheckpointFile

# The bases a model entry may name, in listing order.
BASES = ("sd15", "sdxl", "pony", "illustrious", "noobai", "flux1-dev", "flux1-schnell")
FLUX_BASES = ("flux1-dev", "flux1-schnell")  # the same names as generation.flux_keys.flux_variant's
# The architecture family (generation.families.FAMILIES, or Flux's) each base needs.
BASE_FAMILIES: Mapping[str, str] = {"sd15": "sd15", "sdxl": "sdxl", "pony": "sdxl", "illustrious": "sdxl",
                                    "noobai": "sdxl", "flux1-dev": "flux", "flux1-schnell": "flux"}
# The base of a model whose entry and file name none: the family's plain base, as every model was reviewed before
# bases existed.
PLAIN_BASES: Mapping[str, str] = {"sd15": "sd15", "sdxl": "sdxl"}
ARCHITECTURE_KEY = "modelspec.architecture"
PREDICTION_KEY = "modelspec.prediction_type"
# modelspec.architecture -> the family it names ("/lora" and other adapter suffixes are not checkpoints)
ARCHITECTURE_FAMILIES: Mapping[str, str] = {"stable-diffusion-v1": "sd15", "stable-diffusion-xl-v1-base": "sdxl",
                                            "flux-1-dev": "flux", "flux-1-schnell": "flux"}
MODELSPEC_PREDICTIONS: Mapping[str, str] = {"epsilon": "epsilon", "v": "v_prediction"}
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"  # the same key as loading.ZTSNR_KEY (tests/test_bases.py keeps them equal; loading imports torch)


class BaseError(UserError, ValueError):
    """A model's base or prediction type that its file contradicts, or one GhostReview does not know."""


@dataclass(frozen=True)
class FileBase:
    """What a checkpoint file says about its base: ``architecture`` (modelspec, as written, or None), ``prediction``
    ("epsilon" | "v_prediction" | None when the file is silent) and where it says it (``prediction_source``: a key of
    the file), ``ztsnr`` (the marker key is there)."""

    architecture: str | None
    prediction: str | None
    prediction_source: str | None
    ztsnr: bool

    @property
    def family(self) -> str | None:
        """The family the modelspec architecture names, None when it names none reviewed here (or is absent)."""
        return ARCHITECTURE_FAMILIES.get(self.architecture or "")


@dataclass(frozen=True)
class ModelBase:
    """A model's resolved base: the base, its family, prediction type and whether it samples on zero terminal SNR."""

    base: str
    family: str
    prediction: str
    ztsnr: bool


def check_base(base: str) -> str:
    """``base`` when it is one of :data:`BASES`, else a BaseError listing them."""
    if base not in BASES:
        raise BaseError(f"unknown base {base!r}; valid: {', '.join(BASES)}")
    return base


def read_file_base(ckpt: CheckpointFile) -> FileBase:
    """What ``ckpt``'s header says: modelspec architecture and prediction type, the ``v_pred`` / ``ztsnr`` markers.

    Raises:
        BaseError: the file contradicts itself (a ``v_pred`` marker and modelspec.prediction_type "epsilon").
    """
    meta, keys = ckpt.metadata, ckpt.shapes
    said = meta.get(PREDICTION_KEY)
    spec = MODELSPEC_PREDICTIONS.get(said.strip().lower()) if said else None
    if V_PRED_KEY in keys and spec == "epsilon":
        raise BaseError(f"{ckpt.path}: has the {V_PRED_KEY!r} key (v-prediction) but its __metadata__ "
                        f"{PREDICTION_KEY} says {said!r}; fix the file's metadata, or remove the key")
    if V_PRED_KEY in keys:
        prediction, source = "v_prediction", f"the {V_PRED_KEY!r} key"
    elif spec is not None:
        prediction, source = spec, f"__metadata__ {PREDICTION_KEY} = {said!r}"
    else:
        prediction, source = None, None
    return FileBase(meta.get(ARCHITECTURE_KEY), prediction, source, ZTSNR_KEY in keys)


def resolve_base(ckpt: CheckpointFile, base: str | None = None, prediction: str | None = None) -> ModelBase:
    """The base of model ``ckpt`` from its entry (``base``, ``prediction``: None where the entry names none) and its
    file. The file's family comes from its tensor keys (``ckpt.family``).

    Unnamed, the base is the family's plain one (sd15, sdxl) and the prediction what the file says (epsilon when it
    says nothing); ``ztsnr`` is the file's marker.

    Raises:
        BaseError: an unknown base; a base of another family than the tensor keys'; a base the file's modelspec
            architecture contradicts; a prediction the file contradicts (each message names the entry's value, the
            file's, the file and the key).
    """
    family, told = ckpt.family, read_file_base(ckpt)
    chosen = check_base(base) if base is not None else plain_base(ckpt)
    if family == "flux" and chosen != plain_base(ckpt):
        raise BaseError(f"base {chosen!r} contradicts {ckpt.path}, a {plain_base(ckpt)} transformer (its "
                        f"guidance_in keys: present for dev, absent for schnell); set base to {plain_base(ckpt)!r}")
    if BASE_FAMILIES[chosen] != family:
        raise BaseError(f"base {chosen!r} is an {BASE_FAMILIES[chosen]} base, but {ckpt.path} is an {family} "
                        f"checkpoint (its tensor keys); set base to one of {', '.join(bases_of(family))}")
    if told.family is not None and told.family != family:
        raise BaseError(f"base {chosen!r}: {ckpt.path} says __metadata__ {ARCHITECTURE_KEY} = "
                        f"{told.architecture!r} (an {told.family} model), but its tensor keys are those of an "
                        f"{family} checkpoint; fix the file's metadata")
    if prediction is not None and told.prediction is not None and prediction != told.prediction:
        raise BaseError(f"prediction {prediction!r} contradicts {ckpt.path}, which says {told.prediction!r} "
                        f"({told.prediction_source}); remove prediction from the model entry to use the file's")
    return ModelBase(chosen, family, prediction or told.prediction or "epsilon", told.ztsnr)


def plain_base(ckpt: CheckpointFile) -> str:
    """The base of a model whose entry names none: the family's plain one; for Flux the variant its tensor keys
    say (dev has a distilled-guidance embedder, schnell none)."""
    if ckpt.family == "flux":
        from ghostreview.generation.flux_keys import flux_variant  # imports torch: only Flux models pay for it

        return flux_variant(ckpt.shapes)
    return PLAIN_BASES[ckpt.family]


def bases_of(family: str) -> tuple[str, ...]:
    """The bases of ``family``, in :data:`BASES` order."""
    return tuple(b for b in BASES if BASE_FAMILIES[b] == family)


def file_base_choice(ckpt: CheckpointFile) -> str | None:
    """The base ``add-model`` can write for ``ckpt`` from the file alone, None when several fit: the family's only
    base (an SD1 file is sd15). modelspec names the family, never the fine-tune (every SDXL derivative says
    "stable-diffusion-xl-v1-base"), and a v-prediction marker is not NoobAI's alone."""
    choices = bases_of(ckpt.family)
    return choices[0] if len(choices) == 1 else None
