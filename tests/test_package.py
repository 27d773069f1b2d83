"""The package face: every public name is listed once per list it must be in, and each imports."""

import ast
from pathlib import Path

import conceptspace


def test_the_lazy_table_the_type_checking_imports_and_all_name_the_same_names():
    lazy = {name for names in conceptspace._EXPORTS.values() for name in names}
    assert set(conceptspace.__all__) == lazy | {"__version__"}
    tree = ast.parse(Path(conceptspace.__file__).read_text(encoding="utf-8"))
    checked = next(node for node in tree.body if isinstance(node, ast.If))  # the TYPE_CHECKING block
    imported = {
        alias.name: node.module
        for node in checked.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {name: module for module, names in conceptspace._EXPORTS.items() for name in names}
    for name in conceptspace.__all__:
        assert getattr(conceptspace, name) is not None, name


def test_every_module_but_the_testbeds_own_is_forbidden_to_import_the_testbed():
    """The import-linter contract lists its source modules by hand: a new module must join the list (or be the
    testbed, its demo or the CLI), else it could name the testbed unchecked."""
    import tomllib

    root = Path(conceptspace.__file__).parent
    config = tomllib.loads((root.parent / "pyproject.toml").read_text())
    contract = next(
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c.get("forbidden_modules") == ["conceptspace.testbed"]
    )
    modules = {
        f"conceptspace.{path.stem if path.is_file() else path.name}"
        for path in root.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__" and path.stem != "__main__")
        or (path.is_dir() and (path / "__init__.py").is_file())
    }
    allowed = {"conceptspace.testbed", "conceptspace.demo", "conceptspace.cli"}
    assert set(contract["source_modules"]) == modules - allowed


def test_no_public_name_is_also_the_name_of_a_submodule_of_its_package():
    """Importing a submodule sets it as its package's attribute, over a lazily exported name of the same
    spelling: after ``import conceptspace.compare``, ``from conceptspace import compare`` gave the module."""
    import importlib
    import pkgutil

    for name in ("conceptspace", "conceptspace.modular", "conceptspace.sampling", "conceptspace.metrics"):
        package = importlib.import_module(name)
        submodules = {module.name for module in pkgutil.iter_modules(package.__path__)}
        assert not set(package.__all__) & submodules, name
