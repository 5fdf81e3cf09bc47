"""Project checks that are not about one notebook: README in sync, package in sync, CLI, docs site."""
import subprocess, sys, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / 'tools'))

def test_readme_matches_index_notebook():
    import make_readme
    assert (ROOT / 'README.md').read_text() == make_readme.render(), 'README.md drifted from nbs/index.ipynb: run python tools/make_readme.py'

def test_readme_drift_is_detected(tmp_path):
    import make_readme, json
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    nb['cells'][0]['source'] = ['# something else']
    (tmp_path / 'index.ipynb').write_text(json.dumps(nb))
    assert make_readme.render(tmp_path / 'index.ipynb') != (ROOT / 'README.md').read_text()

def test_package_in_sync_with_notebooks():
    git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout
    if not (ROOT / '.git').exists(): pytest.skip('not a git checkout')
    before = git('status', '--porcelain', '--', 'crossformer_seg')
    subprocess.run([str(BIN / 'nbdev-export')], cwd=ROOT, check=True, capture_output=True)
    after = git('status', '--porcelain', '--', 'crossformer_seg')
    assert before == after, f'nbdev-export changed the package:\n{git("diff", "--stat", "--", "crossformer_seg")}'

def test_cli_help_lists_commands():
    r = subprocess.run([str(BIN / 'crossformer-seg'), '--help'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'usage: crossformer-seg' in r.stdout
    from crossformer_seg.cli import COMMANDS
    for name in COMMANDS: assert re.search(rf'\b{name}\b', r.stdout), f'{name} missing from --help'
    r = subprocess.run([str(BIN / 'crossformer-seg'), '--version'], capture_output=True, text=True)
    import crossformer_seg
    assert r.returncode == 0 and r.stdout.strip() == f'crossformer-seg {crossformer_seg.__version__}'

def test_imports_in_their_own_cells():
    "nbdev-proc-nbs runs every cell that imports, on its own, to build the docs: such cells must hold imports only."
    import json, ast
    bad = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] != 'code' or '#| export' in src: continue
            tree = ast.parse(src)
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
               not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body): bad.append(f'{nb.name}:{c.get("id")}')
    assert not bad, f'cells mixing imports with other code: {bad}'

def test_readme_images_exist():
    import re
    links = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', (ROOT / 'README.md').read_text())
    assert links, 'README shows no picture'
    for link in links: assert (ROOT / link).is_file(), f'README links a missing image: {link}'
