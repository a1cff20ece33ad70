"""The specs a server steers with: folders of one spec directory, loaded, listed and unloaded at runtime.

A spec is named by its folder directly inside the spec directory. A name is 1-64 characters of letters, digits,
``.``, ``_`` and ``-`` that starts with a letter or digit, and its folder (and the two files in it) must resolve
inside the spec directory, so no name, ``..`` or symlink reaches a file outside it. Loading checks the spec
against the served model (fingerprint, sites, widths); a request holds the ``Spec`` values it was admitted with,
so unloading or reloading a spec never changes a generation already running.
"""

__all__ = ["NAME_PATTERN", "SpecRegistry", "seed_toy_specs", "describe"]

import difflib
import re
import threading
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.export.spec import MANIFEST, TENSORS, Spec
from workbench.interventions import AddDirection
from workbench.models import HookedModel
from workbench.serve.errors import ApiError

#: a spec (or pairs, directions) name: a plain folder name, never a path
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: object, what: str = "spec", param: str = "name") -> str:
    """``name`` if it is a plain folder name (``NAME_PATTERN``, no ``..``); else a 400 naming the fix."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ApiError(
            400,
            f"{what} name {shown} is not a plain folder name: use 1-64 letters, digits, '.', '_' or '-' (starting "
            f"with a letter or digit, no '..', no '/'); a {what} is named by its folder inside the spec directory.",
            param=param,
        )
    return name


def describe(name: str, spec: Spec) -> dict:
    """What ``GET /v1/steering`` shows of a loaded spec."""
    return {
        "id": name,
        "object": "steering",
        "interventions": [
            {
                "kind": iv.to_dict()["kind"],
                "hook": iv.site.name,
                "layer": iv.site.layer,
                "site": iv.site.kind,
                "positions": iv.positions.to_dict(),
                **({"scale": iv.scale} if isinstance(iv, AddDirection) else {}),
            }
            for iv in spec.interventions
        ],
        "scalable": any(isinstance(iv, AddDirection) for iv in spec.interventions),
        "provenance": spec.provenance.to_dict(),
    }


class SpecRegistry:
    """The loaded specs of one spec directory, for one model; safe to use from several threads."""

    def __init__(self, folder: "str | Path", model: HookedModel) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self._specs: dict[str, Spec] = {}
        self._lock = threading.Lock()

    def path_of(self, name: object, *, param: str = "name") -> Path:
        """The folder of spec ``name``: inside the spec directory, or a 400 naming the fix."""
        path = self.folder / check_name(name, param=param)
        for p in (path, path / MANIFEST, path / TENSORS):
            if not p.resolve().is_relative_to(self.folder):
                raise ApiError(
                    400,
                    f"spec {name!r} links outside the spec directory {self.folder}; copy the spec folder into the "
                    f"spec directory instead of linking it.",
                    param=param,
                )
        return path

    def on_disk(self) -> list[str]:
        """Names of the spec folders in the spec directory (loaded or not)."""
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if not p.name.startswith(".") and _NAME.fullmatch(p.name) and (p / MANIFEST).is_file()
        )

    def load(self, name: str, *, param: str = "name") -> Spec:
        """Read spec ``name`` from the spec directory, check it against the model and (re)load it."""
        path = self.path_of(name, param=param)
        if not (path / MANIFEST).is_file():
            have = ", ".join(self.on_disk()) or "none"
            raise ApiError(
                404,
                f"there is no spec folder {name!r} in the spec directory {self.folder} (specs there: {have}); save "
                f"one from the playground, or write one with `workbench export --format spec --out "
                f"{self.folder}/{name} ...`.",
                param=param,
            )
        try:
            spec = Spec.load(path, self.model)
        except WorkbenchError as e:
            other = "made for another model" in str(e)
            raise ApiError(422 if other else 400, f"spec {name!r}: {e}", param=param) from None
        with self._lock:
            self._specs[name] = spec
        return spec

    def load_all(self) -> "dict[str, str]":
        """Load every spec folder of the spec directory; returns ``{name: reason}`` for those refused."""
        refused = {}
        for name in self.on_disk():
            try:
                self.load(name)
            except ApiError as e:
                refused[name] = e.message
        return refused

    def unload(self, name: str, *, param: str = "name") -> None:
        check_name(name, param=param)
        with self._lock:
            if name not in self._specs:
                raise ApiError(404, f"spec {name!r} is not loaded ({self._loaded_names()}); nothing to unload.")
            del self._specs[name]

    def get(self, name: object, *, param: str = "steering.spec") -> Spec:
        """The loaded spec ``name``; a 404 that names how to load it when it is not loaded."""
        name = check_name(name, param=param)
        with self._lock:
            spec = self._specs.get(name)
            if spec is not None:
                return spec
            loaded = self._loaded_names()
            near = difflib.get_close_matches(name, list(self._specs), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ApiError(
            404,
            f'unknown spec {name!r} ({loaded}); {hint}load it with POST /v1/steering {{"name": "{name}"}} (it must '
            f"be a folder in the spec directory) or pick a loaded one (GET /v1/steering).",
            param=param,
        )

    def loaded(self) -> dict[str, Spec]:
        with self._lock:
            return dict(self._specs)

    def _loaded_names(self) -> str:
        return "loaded: " + ", ".join(sorted(self._specs)) if self._specs else "no spec is loaded"


def seed_toy_specs(model: HookedModel, toy_name: str, folder: "str | Path", seed: int = 0) -> list[str]:
    """Write the demo's per-attribute edits of the shipped toy model ``toy_name`` into ``folder``: for each toy
    attribute, the mean-difference direction from 200 toy contrast pairs (as ``workbench demo`` computes it) at
    the cell (site, layer, strength) the model's card measured best. Returns the names written."""
    from workbench.export.spec import spec_from_directions
    from workbench.shipped import card
    from workbench.toy.measure import directions_for
    from workbench.toy.prompts import STEER_TARGETS

    steering = (card(toy_name).get("measured") or {}).get("steering", {})
    written = []
    for attribute, (source, target) in STEER_TARGETS.items():
        best = (steering.get(attribute) or {}).get("best")
        if not best or best["strength"] <= 0:
            continue
        kind, position = best["kind"], best.get("position", "last")
        ds = directions_for(model, attribute, source, target, n_pairs=200, seed=seed, kind=kind, position=position)
        spec = spec_from_directions(
            ds, best["layer"], float(best["strength"]), kind=kind, source=f"toy:{attribute} {source}->{target}"
        )
        spec.save(Path(folder) / attribute)
        written.append(attribute)
    return written
