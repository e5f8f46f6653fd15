"""The submission notebook: valid, parameterised, output-free, and every cell one library call."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "submission.ipynb"


def load() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_parameters_cell_is_first_code_cell_and_tagged() -> None:
    code = [c for c in load().cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    tree = ast.parse(code[0].source)
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    assert names == {"config_path", "overrides", "run_name", "run_dir"}


def test_no_stored_outputs() -> None:
    for cell in load().cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_no_accelerator_metadata_and_python3_kernel() -> None:
    nb = load()
    assert nb.metadata.kernelspec.name == "python3"
    assert "accelerator" not in nb.metadata and "kaggle" not in nb.metadata


def test_every_code_cell_is_one_short_library_call() -> None:
    code = [c for c in load().cells if c.cell_type == "code"][1:]
    assert code[0].source.strip() == "import kaggle_lib as kl"
    stages = []
    for cell in code[1:]:
        tree = ast.parse(cell.source)
        assert len(tree.body) == 1, cell.source
        node = tree.body[0]
        call = node.value if isinstance(node, ast.Assign | ast.Expr) else None
        assert isinstance(call, ast.Call), cell.source
        assert isinstance(call.func, ast.Attribute) and call.func.value.id == "kl", cell.source
        stages.append((call.func.attr, *(a.value for a in call.args[1:])))
    # Baseline samples, the few-shot baseline and the export are cells of their own.
    assert stages == [("start_run",), ("authenticate",), ("load_model",),
                      ("evaluate", "baseline"), ("sample", "baseline"),
                      ("evaluate", "baseline_fewshot"), ("train",), ("evaluate", "trained"),
                      ("sample", "trained"), ("export_model",), ("finish",)]
