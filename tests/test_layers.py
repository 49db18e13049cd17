"""The package layers a newcomer can rely on: each package imports only from the ones before it.

data -> models -> runtime -> evaluation -> adapters -> app. ``models/`` says what a network is and never
imports how it is run fast (``runtime/``); nothing imports the app. A new import that runs back up a layer
fails here, naming the file and the import.
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

LAYERS = ["data", "models", "runtime", "evaluation", "adapters", "app"]


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(n.name.split(".")[0] for n in node.names)
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_package_imports_only_from_lower_layers(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imports(path) & set(LAYERS) - allowed)
    ]
    assert upward == [], f"{package}/ may import only {sorted(allowed)}: " + "; ".join(upward)
