"""Generate README.md from nbs/index.ipynb (quarto, which nbdev-readme needs, cannot be installed here).

Markdown cells are copied as they are (image links `images/...` re-pointed to `nbs/images/...`); code cells become ```python blocks (nbdev `#|` directive lines removed,
cells marked `#| hide` skipped) followed by their saved text output, if any (stderr left out).
`python tools/make_readme.py` writes README.md; `--check` exits 1 if README.md differs from what it would write.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n'

def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def _notebook(page):
    "The notebook path of docs page `page` (`backbone` -> `nbs/02_backbone.ipynb`)."
    hits = sorted((ROOT / 'nbs').glob(f'[0-9][0-9]_{page}.ipynb'))
    return f'nbs/{hits[0].name}' if hits else f'{page}.html'

def render(nb_path=ROOT / 'nbs' / 'index.ipynb'):
    "The README text for notebook `nb_path`."
    parts = []
    for cell in json.loads(Path(nb_path).read_text())['cells']:
        src = _src(cell).strip('\n')
        if cell['cell_type'] == 'markdown':   # README sits one level up; a docs page link becomes its notebook
            src = src.replace('](images/', '](nbs/images/')
            parts.append(re.sub(r'\]\(([a-z_]+)\.html\)', lambda m: f']({_notebook(m.group(1))})', src))
        elif cell['cell_type'] == 'code':
            lines = src.split('\n')
            directives = [l for l in lines if l.startswith('#|')]
            if any(d.replace(' ', '') in ('#|hide', '#|include:false', '#|echo:false') for d in directives): continue
            code = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
            if code: parts.append(f'```python\n{code}\n```')
            for out in cell.get('outputs', []):
                if out.get('name') == 'stderr': continue   # warnings from dependencies are not documentation
                text = out.get('text') or out.get('data', {}).get('text/plain')
                if text: parts.append('```\n' + (''.join(text) if isinstance(text, list) else text).rstrip('\n') + '\n```')
    return HEADER + '\n\n'.join(parts) + '\n'

def main(argv=sys.argv[1:]):
    readme, text = ROOT / 'README.md', render()
    if '--check' in argv:
        if not readme.exists() or readme.read_text() != text:
            print('README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`', file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0

if __name__ == '__main__': sys.exit(main())
