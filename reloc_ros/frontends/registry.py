"""The one registry of front ends: what ``reloc-map``, ``reloc-eval``, the ``Localizer``, the demo and the nodes'
``front_end`` parameter choices all read.

A front end is a package that declares ``SPEC = FrontEndSpec(...)`` in its ``__init__.py`` (strings only, so that
reading the registry imports no network code) and is listed once in ``BUILTIN_PACKAGES``; a package outside
reloc_ros registers itself with ``register_front_end(spec)`` or through the entry-point group
``reloc_ros.front_ends`` (value: the package that holds ``SPEC``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["BACKENDS", "check_backend", "FrontEndSpec", "register_front_end", "front_end_spec", "front_end_names", "BUILTIN_PACKAGES"]

BUILTIN_PACKAGES = ("reloc_ros.frontends.implicit", "reloc_ros.frontends.ace", "reloc_ros.frontends.sift")
ENTRY_POINT_GROUP = "reloc_ros.front_ends"
BACKENDS = ("torch", "onnxruntime")   # the libraries a front end's networks can run on (FrontEndSpec.backends)


@dataclass(frozen=True)
class FrontEndSpec:
    """name: as stored in map metadata ``front_end``; front_end: ``"module:Class"`` with ``from_map(tensors,
    metadata, device, **options)``, ``localize(image, camera)`` and ``METADATA_SCHEMA``; trainer: module with
    ``DEFAULT_CONF`` and ``train(conf, dataset, out_path)``; support: the support measure the gate checks
    (``"inliers"``: ``min_inliers`` / ``min_inlier_ratio``; ``"weight_mass"``: ``min_weight_mass``; None);
    refiner_defaults: refiner options applied under the caller's; summary: one line for --help; backends: the
    libraries that can run its networks (``Localizer.from_map(backend=...)``; other than "torch" through the front-end
    option ``network_backend``)."""

    name: str
    front_end: str
    trainer: str
    summary: str = ""
    support: str | None = None
    refiner_defaults: dict = field(default_factory=dict)
    backends: tuple = ("torch",)

    def load_class(self):
        module, cls = self.front_end.split(":")
        return getattr(importlib.import_module(module), cls)

    def load_trainer(self):
        return importlib.import_module(self.trainer)


def check_backend(value: str, option: str = "network_backend") -> str:
    """``value`` if it is one of ``BACKENDS``, else a ValueError naming ``option``."""
    if value not in BACKENDS:
        raise ValueError(f"{option} must be {' or '.join(repr(b) for b in BACKENDS)}, got {value!r}")
    return value


_REGISTRY: dict[str, FrontEndSpec] = {}
_loaded = False


def register_front_end(spec: FrontEndSpec) -> FrontEndSpec:
    """Add ``spec``; a ValueError when another spec has its name."""
    if spec.support not in (None, "inliers", "weight_mass"):
        raise ValueError(f"front end {spec.name!r}: support must be None, 'inliers' or 'weight_mass'")
    if "torch" not in spec.backends or not set(spec.backends) <= set(BACKENDS):
        raise ValueError(f"front end {spec.name!r}: backends must include 'torch' and be among {BACKENDS}")
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"a front end named {spec.name!r} is already registered ({old.front_end})")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points
    packages = list(BUILTIN_PACKAGES) + [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for pkg in packages:
        register_front_end(importlib.import_module(pkg).SPEC)


def front_end_names() -> list[str]:
    """Every registered front end's name, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def front_end_spec(name: str) -> FrontEndSpec:
    """The spec named ``name``; a ValueError listing the known names otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown front end {name!r}; choose one of {front_end_names()}")
    return _REGISTRY[name]
