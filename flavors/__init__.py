"""Namespace flavours: where a zdtm test's process tree lives (h, ns, uns)."""

from flavors.base import Flavor, Started, StartError
from flavors.h import HostFlavor
from flavors.ns import NsFlavor
from flavors.uns import UserNsFlavor

FLAVORS: dict[str, type[Flavor]] = {"h": HostFlavor, "ns": NsFlavor, "uns": UserNsFlavor}

__all__ = ["FLAVORS", "Flavor", "StartError", "Started", "get_flavor"]


def get_flavor(name: str) -> Flavor:
    """A new flavour object by name (h, ns, uns)."""
    try:
        return FLAVORS[name]()
    except KeyError:
        raise ValueError(f"unknown flavour {name!r} (h, ns, uns)") from None
