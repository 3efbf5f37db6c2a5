"""Registry of modality plugins: built-ins and third parties alike come in through the
entry-point group ``polymae.modalities``; :func:`register_modality` adds one at run time."""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

from polymae.modalities.base import ModalityPlugin

ENTRY_POINT_GROUP = "polymae.modalities"
_PLUGINS: dict[str, type[ModalityPlugin]] = {}
_loading = threading.Lock()


def register_modality(plugin: type[ModalityPlugin]) -> type[ModalityPlugin]:
    """Add a plugin class (usable as a decorator). A name can be registered once, and an
    installed entry point of the same name counts as registered.

    This registers in the calling process only: for tests and notebooks. Ray workers find a
    run's plugins through entry points, so a run needs the plugin's package installed
    (docs/plugins.md)."""
    _load_entry_point(plugin.name)
    return _add(plugin)


def _add(plugin: type[ModalityPlugin]) -> type[ModalityPlugin]:
    existing = _PLUGINS.get(plugin.name)
    if existing is not None and existing is not plugin:
        raise ValueError(f"modality {plugin.name!r} is already registered by {existing!r}")
    _PLUGINS[plugin.name] = plugin
    return plugin


def _load_entry_point(name: str) -> None:
    """Import the plugin behind entry point ``name``, if there is one. Only the modality asked
    for is imported, so a broken or heavy plugin never touches runs that do not use it."""
    with _loading:  # Ray may call in from several threads of one worker
        if name in _PLUGINS:
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            plugin = ep.load()
            if not (isinstance(plugin, type) and issubclass(plugin, ModalityPlugin)):
                raise TypeError(f"entry point {ep.name!r} = {ep.value} is not a ModalityPlugin")
            if plugin.name != ep.name:
                raise ValueError(f"entry point {ep.name!r} loads plugin named {plugin.name!r}")
            _add(plugin)
            return


def available_modalities() -> list[str]:
    """Registered and installed modality names (without importing any plugin)."""
    return sorted(set(_PLUGINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def get_plugin_class(name: str) -> type[ModalityPlugin]:
    _load_entry_point(name)
    if name not in _PLUGINS:
        raise KeyError(f"unknown modality {name!r}; allowed: {', '.join(available_modalities())}")
    return _PLUGINS[name]


def make_plugin(name: str, config: dict | None = None) -> ModalityPlugin:
    """An instance of the named plugin with its config (defaults merged with ``config``)."""
    return get_plugin_class(name)(config)
