"""Optimization plugins: one sub-package per technique, each registered by name."""

from plugins.base import Action, Plugin
from plugins.registry import create_plugin, get_plugin_class, list_plugins, register_plugin

__all__ = ["Action", "Plugin", "create_plugin", "get_plugin_class", "list_plugins", "register_plugin"]
