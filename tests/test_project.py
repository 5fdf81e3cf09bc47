"""Project checks that are not about one notebook: README in sync, package in sync, CLI, docs site."""
import json, shutil, subprocess, sys, re
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

def package_drift(root, workdir):
    "Files of `root`'s package that `nbdev-export` of its notebooks would change; exports into a copy under `workdir`."
    ignore = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints')
    for name in ('nbs', 'crossformer_seg'): shutil.copytree(root / name, workdir / name, ignore=ignore)
    shutil.copy(root / 'pyproject.toml', workdir)
    subprocess.run([str(BIN / 'nbdev-export')], cwd=workdir, check=True, capture_output=True)
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in d.rglob('*.py') if '__pycache__' not in p.parts}
    old, new = files(root / 'crossformer_seg'), files(workdir / 'crossformer_seg')
    return sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))

def test_package_in_sync_with_notebooks(tmp_path):
    "The package equals a fresh `nbdev-export` of the notebooks, checked on a copy: the working tree is not touched."
    stamps = lambda: {p: p.stat().st_mtime_ns for p in (ROOT / 'crossformer_seg').rglob('*.py')}
    before = stamps()
    drift = package_drift(ROOT, tmp_path)
    assert stamps() == before, 'the sync check wrote into the working tree'
    assert not drift, f'nbdev-export would change {drift}: run nbdev-export'

def test_package_drift_is_detected(tmp_path):
    repo = tmp_path / 'repo'
    for name in ('nbs', 'crossformer_seg'): shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT / 'pyproject.toml', repo)
    nb_path = repo / 'nbs' / '00_core.ipynb'
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and ''.join(c['source']).startswith('#| export'))
    cell['source'] = ''.join(cell['source']) + '\nDRIFT = 1'
    nb_path.write_text(json.dumps(nb))
    before = (repo / 'crossformer_seg' / 'core.py').read_bytes()
    assert package_drift(repo, tmp_path / 'work') == ['core.py']
    assert (repo / 'crossformer_seg' / 'core.py').read_bytes() == before

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

def undocumented(package):
    """Public names of `package` without a docstring: each module's `__all__` (functions, classes, timm factories) and
    the public methods and properties its classes define (an override may inherit its base's docstring); `forward`
    (documented by its class) and fastai's callback events (`before_fit`, ...) are not called by a user."""
    import importlib, inspect, pkgutil
    from fastai.callback.core import _events
    missing = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith('_'): continue
        mod = importlib.import_module(f'{package.__name__}.{info.name}')
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or callable(obj)): continue   # constants and tables document themselves in prose
            if not (getattr(obj, '__doc__', None) or '').strip(): missing.append(f'{info.name}.{name}')
            if not inspect.isclass(obj) or obj.__module__ != mod.__name__: continue
            for k, v in vars(obj).items():
                if k.startswith('_') or k == 'forward' or k in _events: continue
                if isinstance(v, property): doc = v.__doc__
                elif inspect.isfunction(v) or isinstance(v, (staticmethod, classmethod)): doc = inspect.getdoc(getattr(obj, k))
                else: continue
                if not (doc or '').strip(): missing.append(f'{info.name}.{name}.{k}')
    return missing

def test_every_public_name_has_a_docstring():
    import crossformer_seg
    missing = undocumented(crossformer_seg)
    assert not missing, f'{len(missing)} public names without a docstring: {missing}'

def test_missing_docstring_is_detected(tmp_path, monkeypatch):
    pkg = tmp_path / 'fakepkg'; pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'mod.py').write_text("__all__ = ['f', 'C', 'K']\ndef f(): pass\nK = 3\n"
                                "class C:\n    'A class.'\n    def m(self): pass\n    def forward(self): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakepkg
    assert undocumented(fakepkg) == ['mod.f', 'mod.C.m']
