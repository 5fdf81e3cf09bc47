"""Build the docs site offline: `nbdev-proc-nbs` stages the notebooks in `_proc/`, then `smalldocs render` turns them
into HTML in `_docs/` using `_quarto.yml` (quarto itself cannot be installed here; nbdev's attempt to install it is
harmless and its messages are filtered out).
"""
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def build(out=ROOT / '_docs'):
    "Render the site into `out`; return `out`. Raises `RuntimeError` with the tool's output on failure."
    shutil.rmtree(out, ignore_errors=True)
    for cmd in ([str(BIN / 'nbdev-proc-nbs'), '--force'], [str(BIN / 'smalldocs'), 'render', '--quiet', '_proc']):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0: raise RuntimeError(f'{" ".join(cmd)} failed:\n{r.stdout}\n{r.stderr}')
    if not (out / 'index.html').exists(): raise RuntimeError(f'docs build wrote no {out / "index.html"}')
    return out

if __name__ == '__main__':
    print(f'docs written to {build()}')
