"""The bundle format, the bottom layer: schema, the one reader, the one way to edit (stdlib +
numpy only; every other package builds on it)."""

from edgediff.bundle.edit import BundleEdit, create, edit
from edgediff.bundle.reader import Bundle, build_command, parse_manifest

__all__ = ["Bundle", "BundleEdit", "build_command", "create", "edit", "parse_manifest"]
