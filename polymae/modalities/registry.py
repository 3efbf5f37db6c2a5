"""Registry of modality plugins: built-ins and third parties alike come in through the
entry-point group ``polymae.modalities``; :func:`register_modality` adds one at run time."""

from __future__ import annotations

from importlib.metadata import entry_points

from polymae.modalities.base import ModalityPlugin

ENTRY_POINT_GROUP = "polymae.modalities"
_PLUGINS: dict[str, type[ModalityPlugin]] = {}
_loaded_entry_points = False


def register_modality(plugin: type[ModalityPlugin]) -> type[ModalityPlugin]:
    """Add a plugin class (usable as a decorator). A name can be registered once."""
    existing = _PLUGINS.get(plugin.name)
    if existing is not None and existing is not plugin:
        raise ValueError(f"modality {plugin.name!r} is already registered by {existing!r}")
    _PLUGINS[plugin.name] = plugin
    return plugin


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        if not (isinstance(plugin, type) and issubclass(plugin, ModalityPlugin)):
            raise TypeError(f"entry point {ep.name!r} = {ep.value} is not a ModalityPlugin")
        if plugin.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} loads plugin named {plugin.name!r}")
        register_modality(plugin)


def available_modalities() -> list[str]:
    _load_entry_points()
    return sorted(_PLUGINS)


def get_plugin_class(name: str) -> type[ModalityPlugin]:
    _load_entry_points()
    if name not in _PLUGINS:
        raise KeyError(f"unknown modality {name!r}; allowed: {', '.join(available_modalities())}")
    return _PLUGINS[name]


def make_plugin(name: str, config: dict | None = None) -> ModalityPlugin:
    """An instance of the named plugin with its config (defaults merged with ``config``)."""
    return get_plugin_class(name)(config)
