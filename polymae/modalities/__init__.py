"""Modality plugins: the protocol, the registry and the built-ins (one module each)."""

from polymae.modalities.base import BadInputError, ModalityPlugin, PluginConfig
from polymae.modalities.registry import (
    ENTRY_POINT_GROUP,
    available_modalities,
    get_plugin_class,
    make_plugin,
    register_modality,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BadInputError",
    "ModalityPlugin",
    "PluginConfig",
    "available_modalities",
    "get_plugin_class",
    "make_plugin",
    "register_modality",
]
