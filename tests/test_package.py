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
        alias.name: node.module for node in checked.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == {name: module for module, names in conceptspace._EXPORTS.items() for name in names}
    for name in conceptspace.__all__:
        assert getattr(conceptspace, name) is not None, name
