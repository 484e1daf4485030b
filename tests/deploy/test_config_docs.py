"""README.md: the generated configuration reference is current; the docs' links resolve."""

from __future__ import annotations

import re

import pytest

from service.settings import Settings
from tests.deploy.conftest import REPO, setting_env_names
from tests.modules import load_module

gen = load_module(REPO / "scripts" / "gen_config_docs.py")


def test_readme_configuration_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert gen.update_readme(readme, gen.render_table()) == readme, (
        "README.md is out of date: run python scripts/gen_config_docs.py"
    )
    assert gen.main(["--check"]) == 0


def test_table_rows_follow_the_settings() -> None:
    table = gen.render_table().splitlines()
    assert len(table) == 2 + len(Settings.model_fields)
    names = {row.split("|")[1].strip().strip("`") for row in table[2:]}
    assert names == setting_env_names()
    row = next(r for r in table if r.startswith("| `CTVIS_DTYPE`"))
    assert "`float32` \\| `float16` \\| `bfloat16`" in row
    assert next(r for r in table if "`CTVIS_CHECKPOINT`" in r).split("|")[2].strip() == "unset"


def test_markers_are_required() -> None:
    with pytest.raises(ValueError, match="markers"):
        gen.update_readme("# no markers here\n", "table")
    stale = f"intro\n{gen.BEGIN}\nold\n{gen.END}\noutro\n"
    assert gen.update_readme(stale, "new") == f"intro\n{gen.BEGIN}\nnew\n{gen.END}\noutro\n"


@pytest.mark.parametrize("doc", ["README.md", "deploy/README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = REPO / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{doc}: broken link {target}"
    if doc == "README.md":
        assert "```mermaid" in text and "## Serving the released CTVIS checkpoints" in text


def test_deployment_files_name_only_real_settings() -> None:
    files = ["deploy/README.md", ".env.example", "Dockerfile", "deploy/healthcheck.py"]
    files += [p.relative_to(REPO).as_posix() for p in (REPO / "deploy" / "k8s").glob("*.yaml")]
    valid = setting_env_names()
    for name in files:
        mentioned = set(re.findall(r"\bCTVIS_[A-Z0-9_]+\b(?!\.yaml)", (REPO / name).read_text()))
        assert mentioned <= valid, f"{name}: {sorted(mentioned - valid)} are not settings"
