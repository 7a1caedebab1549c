"""The notebooks of notebooks/: stored without outputs, and run as Jupyter would run them against
a staging area of two `loader run`s (test_incremental's source database and helpers), their
outputs showing what the source changes left there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from bson import ObjectId
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

import test_incremental
from conftest import ROOT
from loader.staging import Staging
from test_incremental import Clock, Target, new_document, stamp

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell
SHOWN = 3_000       # characters of a part's outputs shown by a failed assertion
generated_source = test_incremental.generated_source  # fixture: the dataset, in a MongoDB database of the test's own


def test_notebooks_are_stored_without_outputs():
    assert NOTEBOOKS, "no notebook in notebooks/"
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        dirty = [i for i, cell in enumerate(notebook.cells)
                 if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
        assert not dirty, (f"{path.name}: cells {dirty} hold outputs or an execution count; clear them before "
                           "committing (Jupyter: Edit > Clear Outputs of All Cells)")
        assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel is not python3"


def execute(path: Path, staging: Path) -> nbformat.NotebookNode:
    """The notebook run from its folder with LOADER_STAGING_DIR=`staging`, in the python3 kernel of
    this interpreter (ipykernel's own spec, not one a user installed); fails on a cell's error."""
    notebook = nbformat.read(path, as_version=4)
    kernel = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(path.parent)}})
    environment = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # ipykernel's inline figures
    client.execute(cleanup_kc=True, env=environment | {"LOADER_STAGING_DIR": str(staging)})
    return notebook


def outputs_by_part(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """The outputs (text, HTML, `[image]` for a figure) of the code cells under each numbered
    heading ("## 4. ..." -> "4")."""
    parts, part = {}, "preamble"
    for cell in notebook.cells:
        heading = re.match(r"## (\d+)\.", cell.source)
        if cell.cell_type == "markdown" and heading:
            part = heading[1]
        elif cell.cell_type == "code":
            for output in cell.outputs:
                data = output.get("data", {})
                texts = [output.get("text", ""), data.get("text/plain", ""), data.get("text/html", ""),
                         "[image]" if "image/png" in data else ""]
                parts[part] = parts.get(part, "") + "\n".join(texts)
    return parts


def test_notebooks_show_the_staged_changes(generated_source, target, tmp_path):
    """Every notebook runs after a first `loader run` (one snapshot per collection) and after a
    second one that follows changes to users (two renamed, one given a NUL character: a transform
    reject, one deleted, two added); staging.ipynb then shows both snapshots, the reject with its
    reason and the comparison's counts."""
    source, db = generated_source, generated_source.db
    staging = tmp_path / "staging"
    loader = Target({**source.env, **target}, staging)
    loader.loader("run")
    first = {path.name: outputs_by_part(execute(path, staging)) for path in NOTEBOOKS}
    assert "has a single snapshot, nothing to compare" in first["staging.ipynb"]["5"], first["staging.ipynb"]["5"]

    clock, loaded = Clock(source.data), sorted(loader.ids("users"))
    renamed, nul, gone = [ObjectId(user_id) for user_id in loaded[:2]], ObjectId(loaded[2]), ObjectId(loaded[3])
    for user_id in renamed:
        stamp(db, "users", user_id, clock(), firstname="Renommé")
    stamp(db, "users", nul, clock(), firstname="Jean\x00Pierre")
    db.users.delete_one({"_id": gone})
    added = [new_document(clock(), firstname="Nouvelle", lastname=f"Inscrite {i}", email=f"nouvelle{i}@example.org")
             for i in range(2)]
    db.users.insert_many(added)
    loader.loader("run")

    parts = {path.name: outputs_by_part(execute(path, staging)) for path in NOTEBOOKS}["staging.ipynb"]
    kept = Staging(staging)
    snapshots = [s for c in kept.collections() for s in kept.snapshots(c)]
    assert f"{sum(s.bytes for s in snapshots):,} bytes in {len(snapshots)} snapshots" in parts["1"], parts["1"][:SHOWN]
    assert "[image]" in parts["2"], "no figure of the documents by month"
    assert "users_logbooks_moments" in parts["3"], parts["3"][:SHOWN]
    assert "none: the extract rejected no document" in parts["4"], parts["4"][:SHOWN]
    assert "nul_character" in parts["4"] and str(nul) in parts["4"], parts["4"][:SHOWN]
    assert "users: added 2, removed 1, changed 3, unchanged" in parts["5"], parts["5"][:SHOWN]
    assert all(str(i) in parts["5"] for i in (gone, nul, *(d["_id"] for d in added))), parts["5"][:SHOWN]
