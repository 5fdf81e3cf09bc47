"""Build the docs site offline: `nbdev-proc-nbs` stages the notebooks in `_proc/`, each staged notebook is renamed to
the page name nbdev gives it (`output-file`, e.g. `02_backbone.ipynb` -> `backbone.html`, the name every
cross-reference and the module index use), then `smalldocs render` turns them into HTML in `_docs/` using
`_quarto.yml`. Quarto itself cannot be installed here; nbdev's attempt to install it is harmless and its messages are
filtered out. The renderer's warnings are printed, and the build fails on a broken link or a missing image.
The API signatures that `show_doc` rendered are cleaned of what inspection leaves in them (see `clean_signature`).
The pages show the outputs saved in the notebooks (the build executes only the `show_doc` cells, as nbdev does);
`python tools/save_outputs.py nbs/NN_name.ipynb` re-runs a notebook in a kernel and saves the outputs a reader sees.

    python tools/build_docs.py
"""
import json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FATAL = re.compile(r'broken link|missing image|not found|cannot read', re.I)

def _output_file(nb_path):
    "The `output-file` of a staged notebook's front matter (None when it has none)."
    cells = json.loads(nb_path.read_text())['cells']
    if cells and cells[0]['cell_type'] == 'raw':
        m = re.search(r'^output-file:\s*(\S+)\s*$', ''.join(cells[0]['source']), re.M)
        if m: return m.group(1)
    return None

def page_names(proc):
    "Rename each staged notebook to its page name; return {notebook file name: page file name}."
    names = {}
    for nb in sorted(proc.glob('*.ipynb')):
        out = _output_file(nb)
        if out is None: continue
        d = json.loads(nb.read_text())   # the page name is now the file name: drop the key smalldocs does not read
        d['cells'][0]['source'] = [l for l in d['cells'][0]['source'] if not l.startswith('output-file:')]
        nb.write_text(json.dumps(d))
        if nb.stem == Path(out).stem: continue
        nb.rename(nb.with_name(Path(out).stem + '.ipynb'))
        names[nb.name] = Path(out).stem + '.ipynb'
    cfg = proc / '_quarto.yml'
    order = ['index.ipynb'] + [names.get(p.name, p.name) for p in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))]
    contents = 'contents:\n' + ''.join(f'      - {n}\n' for n in order)
    text = re.sub(r'contents:\s*auto[^\n]*\n', contents, cfg.read_text())   # the sidebar in reading order
    cfg.unlink(); cfg.write_text(text)   # the staged copy may be a symlink to the real config
    return names

def clean_signature(md):
    """A `show_doc` markdown entry as a reader should see it: fastcore annotates an un-annotated `x=None` as
    `x:NoneType=None`, names classes of the executing notebook `__main__.X`, shows dataclass factories as
    `<factory>`, spells `Optional` as `Union[..., NoneType]` and renders a class as `def X(`; these become `x=None`,
    `X`, the factory's value, `... | None` and `class X(`."""
    md = re.sub(r':NoneType=None\b', '=None', md)
    md = re.sub(r'\bNoneType\b', 'None', md)   # inside a written annotation (`Union[..., NoneType]`)
    md = re.sub(r'\b(?:typing\.)?Union\[([^\[\]]*)\]', lambda m: ' | '.join(p.strip() for p in m.group(1).split(',')), md)
    md = re.sub(r'\b__main__\.', '', md)
    md = re.sub(r'\b(?:crossformer_seg|fastai|collections\.abc|pathlib)(?:\.\w+)*\.([A-Z]\w*)', r'\1', md)   # full module paths
    md = re.sub(r'\btorch\.nn\.modules(?:\.\w+)*\.([A-Z]\w*)', r'nn.\1', md)
    md = re.sub(r':(list|dict|set|tuple)=<factory>', lambda m: f':{m.group(1)}={dict(list="[]", dict="{}", set="set()", tuple="()")[m.group(1)]}', md)
    md = re.sub(r"functools\.partial\(<class '(?:\w+\.)*(\w+)'>", r'partial(\1', md)
    md = re.sub(r':functools\.partial=', '=', md)   # the type fastcore infers from a `partial` default
    md = re.sub(r'(#+ ([A-Z]\w*)\n\n```python\n)def \2\(', r'\1class \2(', md)
    return re.sub(r'(```python\nclass [^`]*?\n\))->None:', r'\1:', md)   # a class's `__init__` returns None: not worth saying

def _split_top(s, sep):
    "Split `s` at each `sep` outside brackets and quotes."
    parts, depth, quote, cur = [], 0, None, ''
    for ch in s:
        if quote: quote = None if ch == quote else quote
        elif ch in '\'"': quote = ch
        elif ch in '([{': depth += 1
        elif ch in ')]}': depth -= 1
        elif ch == sep and depth == 0: parts.append(cur); cur = ''; continue
        cur += ch
    return parts + [cur]

def _param(code):
    "(name, type, default) of one rendered parameter `name:type=default`."
    head, _, default = code.partition('=')
    name, _, anno = head.partition(':')
    return name.strip(), anno.strip(), default.strip()

def param_table(md):
    """A markdown table (parameter, type, default, details) of a `show_doc` entry whose signature carries docments
    comments (`name:type=default, # what it is`), as nbdev 2 showed them; '' when no parameter is commented."""
    m = re.search(r'```python\n(?:class|def|async def) \w[\w.]*\((.*?)\n```', md, re.S)
    if not m or ' # ' not in m.group(1): return ''
    rows, ret = [], None
    for line in m.group(1).split('\n'):
        code, _, doc = line.partition(' # ')
        code = code.strip()
        if code.startswith(')'):
            anno = re.match(r'\)(?:->(.*?))?:$', code)
            if anno and (anno.group(1) or doc): ret = ((anno.group(1) or '').strip(), doc.strip())
            continue
        params = [p.strip() for p in _split_top(code, ',') if p.strip()]
        for i, p in enumerate(params):
            if p in ('*', '/'): continue
            rows.append((*_param(p), doc.strip() if i == len(params) - 1 else ''))
    if not any(r[3] for r in rows): return ''
    cell = lambda t: t.replace('|', '\\|')
    out = ['|  | Type | Default | Details |', '|---|---|---|---|']
    out += [f'| {cell(n)} | {cell(a)} | {cell(d)} | {cell(doc)} |' for n, a, d, doc in rows]
    if ret: out.append(f'| **Returns** | {cell(ret[0])} |  | {cell(ret[1])} |')
    return '\n\n' + '\n'.join(out)

def _true_signature(md):
    """`class X(*args, **kwargs)` is what inspection gives for a `NamedTuple` and for an exception without its own
    `__init__`; the entry's source link names the module, so the fields (or `message`) are shown instead."""
    m = re.search(r'crossformer_seg/(\w+)\.py#L\d+.*?#+ ([A-Z]\w*)\n\n```python\nclass \2\(\n    \*args, \*\*kwargs\n\):', md, re.S)
    if not m: return md
    import importlib, inspect
    try: obj = getattr(importlib.import_module(f'crossformer_seg.{m.group(1)}'), m.group(2))
    except (ImportError, AttributeError): return md
    if hasattr(obj, '_fields'):
        params = ', '.join(f'{n}:{getattr(p.annotation, "__name__", p.annotation)}' + ('' if p.default is p.empty else f'={p.default!r}')
                           for n, p in inspect.signature(obj).parameters.items())
    elif issubclass(obj, BaseException) and '__init__' not in vars(obj): params = 'message'
    else: return md
    return md.replace('    *args, **kwargs\n):', f'    {params}\n):', 1)

def clean_outputs(proc):
    "Apply `clean_signature` to every `show_doc` entry (markdown output) of the staged notebooks, and add its `param_table`."
    for nb in proc.glob('*.ipynb'):
        d, changed = json.loads(nb.read_text()), False
        for c in d['cells']:
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md is None: continue
                new = _true_signature(clean_signature(''.join(md) if isinstance(md, list) else md))
                new += param_table(new)
                if new != md: o['data']['text/markdown'], changed = new, True
        if changed: nb.write_text(json.dumps(d))

def build(out=ROOT / '_docs', verbose=True):
    "Render the site into `out`; return `out`. Raises `RuntimeError` with the tool's output on failure or broken links."
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([str(BIN / 'nbdev-proc-nbs'), '--force'], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f'nbdev-proc-nbs failed:\n{r.stdout}\n{r.stderr}')
    page_names(ROOT / '_proc')
    clean_outputs(ROOT / '_proc')
    r = subprocess.run([str(BIN / 'smalldocs'), 'render', '_proc'], cwd=ROOT, capture_output=True, text=True)
    log = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    warnings = [l for l in log if re.search(r'warn|broken|missing|error', l, re.I)]
    if verbose and warnings: print('\n'.join(warnings))
    if r.returncode != 0: raise RuntimeError(f'smalldocs render failed:\n' + '\n'.join(log))
    fatal = [l for l in warnings if FATAL.search(l)]
    if fatal: raise RuntimeError(f'docs build: {len(fatal)} broken links or missing images:\n' + '\n'.join(fatal))
    if not (out / 'index.html').exists(): raise RuntimeError(f'docs build wrote no {out / "index.html"}')
    return out

if __name__ == '__main__':
    try: print(f'docs written to {build()}')
    except RuntimeError as e: print(e, file=sys.stderr); sys.exit(1)
