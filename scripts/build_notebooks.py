"""Build notebooks/NN_name.ipynb from its percent-format twin notebooks/src/NN_name.py (outputs stripped).

Edit the twin, run `python scripts/build_notebooks.py`, commit both. tests/test_notebooks.py checks they agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def build(src: Path) -> Path:
    """Write the stripped .ipynb for one twin and return its path."""
    nb = jupytext.read(src)
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids keep the diffs to real changes
        tags = cell.metadata.get("tags")
        cell.metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    out = ROOT / "notebooks" / f"{src.stem}.ipynb"
    nbformat.validate(nb)
    tmp = out.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    names = sys.argv[1:]
    sources = [ROOT / "notebooks" / "src" / f"{n}.py" for n in names] if names else sorted((ROOT / "notebooks" / "src").glob("*.py"))
    for src in sources:
        print(build(src).relative_to(ROOT))
