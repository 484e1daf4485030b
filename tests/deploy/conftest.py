"""Helpers of the deployment tests: YAML loading, valid setting names, ``ctvis`` subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cli.main import SUBCOMMANDS, build_parser
from service.settings import Settings
from tests.modules import REPO

DEPLOY = REPO / "deploy"


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts Compose's ``!reset`` / ``!override`` tags (value kept as is)."""


def _keep(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _keep)
ComposeLoader.add_constructor("!override", _keep)


def load_yaml(path: Path) -> Any:
    """One YAML document (Compose tags allowed)."""
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every document of a multi-document YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def setting_env_names() -> set[str]:
    """``CTVIS_<FIELD>`` for every field of ``Settings`` (the only variables it reads)."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def is_subcommand(argv: list[str]) -> bool:
    """True when ``argv`` (the arguments after ``ctvis``) is a real subcommand with real flags.

    ``cli.main.build_parser`` parses it exactly as the ``ctvis`` command would (argparse exits
    on an unknown flag, which fails the calling test).
    """
    if not argv or argv[0] not in SUBCOMMANDS:
        return False
    return build_parser().parse_args(argv).command == argv[0]
