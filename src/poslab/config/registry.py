"""The conf/pos_enc configs by encoding family: which names may score a checkpoint of a family."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class

from poslab.config import CONFIG_DIR, available, load_choice
from poslab.encodings import family_of, mechanism_of


def family_of_target(target: str) -> str:
    """The family of the encoding class a config's `_target_` names."""
    return family_of(get_class(target))


def encodings_of_family(family: str, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> list[str]:
    """The pos_enc names (in the config folders) whose encoding belongs to `family`."""
    names = []
    for name in available("pos_enc", config_dirs):
        target = load_choice("pos_enc", name, config_dirs).get("_target_")
        try:
            if target and family_of_target(target) == family:
                names.append(name)
        except (ImportError, AttributeError, ValueError):
            continue
    return names


def mechanism_of_target(target: str) -> str:
    """How the encoding class a config's `_target_` names carries position (encodings.MECHANISMS)."""
    return mechanism_of(get_class(target))
