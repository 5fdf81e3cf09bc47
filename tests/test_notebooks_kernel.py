"""Every notebook runs top to bottom in a real Jupyter kernel, the way JupyterLab's "Run All" does.

`nbdev-test` runs notebooks in-process and skips the cells flagged `#| slow`; a kernel runs every cell, slow ones
included, with the notebook's folder as the working directory. This test is marked `slow` (minutes on a 2-core
laptop): it runs with `CFSEG_SLOW=1 python -m pytest tests/test_notebooks_kernel.py` or
`python tools/run_tests.py --flags slow`, and prints the time of each notebook.
"""
import time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
TIMEOUT = 1800   # seconds per cell: the slowest cells are minutes, not hours

@pytest.mark.slow
@pytest.mark.parametrize('nb_path', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs_in_kernel(nb_path, record_property):
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    pytest.importorskip('ipykernel')
    nb = nbformat.read(nb_path, as_version=4)
    # the `python3` kernel of this interpreter (ipykernel's own spec), whatever the notebook's metadata says
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name='python3',
                                     resources={'metadata': {'path': str(nb_path.parent)}})
    t0 = time.time()
    try: client.execute()   # raises CellExecutionError naming the cell and the traceback
    finally: record_property('kernel_seconds', round(time.time() - t0, 1))   # listed at the end of the run (conftest.py)
