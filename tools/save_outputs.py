"""Run notebooks in a Jupyter kernel and save the outputs a reader learns from into them (the docs site shows the
notebooks' saved outputs; `tools/build_docs.py` does not execute them).

    python tools/save_outputs.py nbs/07_data.ipynb [nbs/09_inference.ipynb ...] [--slow]

Each notebook runs top to bottom with `nbs/` as the working directory, as `Run All` does; cells flagged `#| slow` are
skipped (their saved outputs kept) unless `--slow` is given. Outputs are then written back for the cells a reader
sees: not `#| hide`, not `show_doc` (the docs build renders those), not `#| export`. Streams on stderr (warnings,
progress bars) and fastai's progress displays are dropped; an output that holds a traceback, a `Warning:` line or a path of this machine is refused
with the cell named, so it is fixed at its source. Execution counts are not stored (fewer diffs).
"""
import argparse, re, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = re.compile(r'Traceback \(most recent call last\)|\w+Warning:|' + '|'.join(re.escape(p) for p in {str(ROOT), str(Path.home()), '/tmp/'}))

def _flags(src): return {l[3:].strip() for l in src.splitlines() if l.startswith('#|')}

def shown(cell):
    "Does a reader of the docs see this cell's outputs as saved in the notebook?"
    if cell.cell_type != 'code': return False
    flags = _flags(cell.source)
    if any(f in ('hide', 'export', 'exporti', 'exports') or f.startswith(('hide', 'default_exp')) for f in flags): return False
    return not re.match(r'\s*show_doc\(', '\n'.join(l for l in cell.source.splitlines() if not l.startswith('#|')))

def _text(o):
    if o.get('output_type') == 'stream': return o.get('text', '')
    if o.get('output_type') == 'error': return 'Traceback (most recent call last)'
    d = o.get('data', {})
    return '\n'.join(v if isinstance(v, str) else ''.join(v) for k, v in d.items() if k.startswith('text/'))

def keep(outputs):
    "The outputs worth saving: no stderr streams, no fastai progress bars (nor the tables of the tiny test runs they draw)."
    out = []
    for o in outputs:
        if o.get('output_type') == 'stream' and o.get('name') == 'stderr': continue
        if 'fastprogress' in _text(o) or '<progress' in _text(o): continue
        if o.get('output_type') == 'execute_result': o['execution_count'] = None
        out.append(o)
    return out

def save_outputs(nb_path, slow=False, timeout=1800):
    "Execute `nb_path` in a kernel and write the outputs of the cells a reader sees into it; returns the seconds taken."
    import json, nbformat, nbclient
    nb_path = Path(nb_path)
    raw = json.loads(nb_path.read_text())            # written back as it was read: key order and ids kept
    run = nbformat.read(nb_path, as_version=4)
    skipped = set()
    for i, c in enumerate(run.cells):
        if c.cell_type == 'code' and 'slow' in _flags(c.source) and not slow: c.source = ''; skipped.add(i)
    t0 = time.time()
    nbclient.NotebookClient(run, timeout=timeout, kernel_name='python3',
                            resources={'metadata': {'path': str(nb_path.parent)}}).execute()
    bad = []
    for i, (c, r) in enumerate(zip(raw['cells'], run.cells)):
        if c['cell_type'] != 'code' or i in skipped: continue
        c['execution_count'] = None
        c['outputs'] = keep([json.loads(json.dumps(o)) for o in r.outputs]) if shown(r) else []
        for o in c['outputs']:
            m = LOCAL.search(_text(o))
            if m: bad.append(f'{nb_path.name} cell {i} ({c.get("id")}): output shows {m.group(0)!r}')
    if bad: raise RuntimeError('\n'.join(bad))
    nb_path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + '\n')
    return time.time() - t0

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebooks', nargs='+')
    p.add_argument('--slow', action='store_true', help='run the #| slow cells too and save their outputs')
    args = p.parse_args()
    rc = 0
    for nb in args.notebooks:
        try: print(f'{nb}: {save_outputs(nb, args.slow):.0f} s')
        except Exception as e: print(f'{nb}: error: {e}', file=sys.stderr); rc = 1
    sys.exit(rc)
