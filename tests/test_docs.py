"""The docs site as a reader meets it: built offline, served on 127.0.0.1, every page opened in headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: no port, no extra package): for
each page the test waits for the load, saves a screenshot, and reads from the live DOM the title, the API entries and
tables, whether every `<img>` loaded, and the text. Links and anchors are checked across the whole site.
"""
import base64, functools, http.server, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urlparse, unquote
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))

class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe (messages are JSON, each ended by a NUL byte)."
    def __init__(self, profile):
        to_r, self._to_w = os.pipe()        # we write, the browser reads on fd 3
        self._from_r, from_w = os.pipe()    # the browser writes on fd 4, we read
        def fds(): os.dup2(to_r, 3); os.dup2(from_w, 4)
        self.proc = subprocess.Popen(
            [shutil.which('chromium'), '--headless', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe',
             '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
             '--hide-scrollbars', '--window-size=1280,900', f'--user-data-dir={profile}', 'about:blank'],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r); os.close(from_w)
        self._buf, self._id = b'', 0
        targets = self.call('Target.getTargets')['targetInfos']
        page = next(t for t in targets if t['type'] == 'page')
        self.session = self.call('Target.attachToTarget', targetId=page['targetId'], flatten=True)['sessionId']
        self.call('Page.enable', session=True)

    def _read(self):
        while b'\0' not in self._buf:
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk: raise RuntimeError('chromium closed the DevTools pipe')
            self._buf += chunk
        msg, self._buf = self._buf.split(b'\0', 1)
        return json.loads(msg)

    def call(self, method, session=False, **params):
        self._id += 1
        msg = dict(id=self._id, method=method, params=params)
        if session: msg['sessionId'] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b'\0')
        while True:
            r = self._read()
            if r.get('id') == self._id:
                if 'error' in r: raise RuntimeError(f'{method}: {r["error"]}')
                return r['result']

    def open(self, url, timeout=60):
        "Navigate to `url` and wait until the document and its images have loaded."
        self.call('Page.navigate', session=True, url=url)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.js("document.readyState === 'complete' && location.href !== 'about:blank'"): return
            time.sleep(0.1)
        raise TimeoutError(url)

    def js(self, expr):
        r = self.call('Runtime.evaluate', session=True, expression=expr, returnByValue=True)
        return r['result'].get('value')

    def screenshot(self, path):
        Path(path).write_bytes(base64.b64decode(self.call('Page.captureScreenshot', session=True, format='png')['data']))

    def close(self):
        try: self.call('Browser.close')
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()
        os.close(self._to_w); os.close(self._from_r)

def serve(folder):
    "Serve `folder` on 127.0.0.1 on a free port in a daemon thread; returns (server, base URL)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(Path(folder).resolve()))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}/'

PAGE_FACTS = """JSON.stringify({
  title: document.title,
  h1: (document.querySelector('h1') || {}).textContent || '',
  api: document.querySelectorAll('h2[id], h3[id], h4[id], table, .doc-entry, .api').length,
  tables: document.querySelectorAll('table').length,
  images: Array.from(document.images).map(i => [(i.getAttribute('src') || '').slice(0, 80), i.complete && i.naturalWidth > 0]),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  heading_ids: Array.from(document.querySelectorAll('h2[id], h3[id]')).map(e => e.id),
  nav: document.querySelectorAll('.nav-page-next, .nav-page-previous').length,
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  text: document.body.innerText
})"""

@pytest.fixture(scope='module')
def site():
    import build_docs
    return build_docs.build()

def test_docs_build_has_every_notebook(site):
    "Each notebook became its page, named as the cross-references name it."
    import build_docs
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        assert (site / f'{nb.stem.split("_", 1)[1]}.html').is_file(), f'no page for {nb.name}'
    assert (site / 'index.html').is_file()

@pytest.mark.skipif(not shutil.which('chromium'), reason='skipped: no chromium (Debian package `chromium`)')
def test_docs_pages_in_chromium(site, tmp_path):
    srv, base = serve(site)
    browser = Chromium(tmp_path / 'profile')
    pages = sorted(p.name for p in site.glob('*.html'))
    facts, problems = {}, []
    try:
        for page in pages:
            browser.open(base + page)
            browser.screenshot(tmp_path / f'{page}.png')
            facts[page] = f = json.loads(browser.js(PAGE_FACTS))
            if f['images']:   # a second screenshot with the page's first figure in view
                browser.js("(() => { const i = Array.from(document.images).find(i => i.naturalWidth > 200) || document.images[0];"
                           " window.scrollTo({top: i.getBoundingClientRect().top + window.scrollY - 80, behavior: 'instant'}); })()")
                time.sleep(0.3)
                browser.screenshot(tmp_path / f'{page}.figure.png')
            if not f['title'].strip() or not f['h1'].strip(): problems.append(f'{page}: no title')
            if page != 'index.html' and f['api'] == 0: problems.append(f'{page}: no API entry or table')
            problems += [f'{page}: image {src} did not load' for src, ok in f['images'] if not ok]
            if f['nav'] == 0: problems.append(f'{page}: no previous/next link')
            for site_link in ('https://github.com/crossformer-seg/crossformer_seg', 'https://arxiv.org/abs/2108.00154'):
                if site_link not in f['links']: problems.append(f'{page}: no link to {site_link}')
            # a heading that takes an API entry's name pushes the entry to `name-1`, where no cross-reference points
            problems += [f'{page}: heading id {i} is a duplicate' for i in f['heading_ids'] if re.search(r'-\d+$', i)]
            for bad in (r'Traceback \(most recent call last\)', r'\w*Warning:', '/work/', '/home/', '/tmp/',   # build-machine noise
                        r'NoneType', r'__main__\.\w', r'<factory>', r'functools\.partial', r' object at 0x',   # unreadable signatures
                        r'class \w+\(\s*\*args, \*\*kwargs\s*\)',
                        r'RECIPES\.md|DESIGN\.md|shared/reference'):   # files a clone does not have
                m = re.search(bad, f['text'])
                if m: problems.append(f'{page}: shows {m.group(0)!r}')
    finally:
        browser.close(); srv.shutdown()
    n_links = 0
    for page, f in facts.items():
        for href in f['links']:
            u = urlparse(href)
            if u.scheme or href.startswith(('mailto:', 'javascript:')): continue
            n_links += 1
            target = unquote(u.path) or page
            if target not in facts and not (site / target).exists(): problems.append(f'{page}: broken link {href}')
            elif u.fragment and target in facts and u.fragment not in facts[target]['ids']:
                problems.append(f'{page}: broken anchor {href}')
    print(f'{len(pages)} pages, {n_links} internal links, '
          f'{sum(len(f["images"]) for f in facts.values())} images checked; screenshots in {tmp_path}')
    assert not problems, '\n'.join(problems)

def test_docs_index_and_api_pages(site):
    index = (site / 'index.html').read_text()
    assert '<title>' in index and 'crossformer_seg' in index and 'Long short distance attention' in index
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):   # the notebook table links every page
        assert f'href="{nb.stem.split("_", 1)[1]}.html"' in index, f'the index does not link {nb.name}'
    assert 'Getting started' in index and 'crossformer-seg demo' in index
    api = (site / 'backbone.html').read_text()
    assert 'CrossFormer backbone' in api and 'CrossScaleEmbedding' in api and 'DynamicPosBias' in api

def test_signatures_are_cleaned():
    from build_docs import clean_signature
    md = ("### PairTransform\n\n```python\ndef PairTransform(\n    seed:NoneType=None\n)->__main__.LoadReport:\n```\n"
          "def f(missing:list=<factory>, act:functools.partial=functools.partial(<class 'torch.nn.modules.activation.ReLU'>, inplace=True), "
          "m:Union[Callable, collections.abc.MutableSequence, NoneType]=None)")
    out = clean_signature(md)
    assert 'class PairTransform(\n    seed=None\n)->LoadReport:' in out
    assert 'missing:list=[]' in out and 'act=partial(ReLU, inplace=True)' in out
    assert 'm:Callable | MutableSequence | None=None' in out
    assert clean_signature('### R\n\n```python\ndef R(\n    path:str\n)->None:\n```') == '### R\n\n```python\nclass R(\n    path:str\n):\n```'

def test_param_table_from_docments():
    from build_docs import param_table
    md = ("### f\n\n```python\ndef f(\n    a, b:int=1, # the b\n    c:str | None=None, # the c, with a | bar\n    **kw\n"
          ")->Tensor: # the result\n```\n\n*Doc.*")
    rows = param_table(md).strip().split('\n')
    assert rows[2:] == ['| a |  |  |  |', '| b | int | 1 | the b |', '| c | str \\| None | None | the c, with a \\| bar |',
                        '| **kw |  |  |  |', '| **Returns** | Tensor |  | the result |']
    assert param_table("### g\n\n```python\ndef g(\n    a, b:int=1\n):\n```") == ''   # no docments: no table

def test_entry_points_have_parameter_tables(site):
    "The main entry points are documented with docments comments, which the build turns into parameter tables."
    for page, name, param in [('segmentor', 'build_segmentor', 'name_or_config'), ('segmentor', 'inference', 'crop_size'),
                              ('checkpoint', 'load_checkpoint', 'nonfinite'), ('data', 'ade20k_dls', 'crop_size'),
                              ('metrics', 'evaluate', 'ratios'), ('learner', 'seg_learner', 'recipe')]:
        html = (site / f'{page}.html').read_text()
        entry = html[html.index(f'id="{name}"'):]
        entry = entry[:entry.find('<h3', 10) if '<h3' in entry[10:] else len(entry)]
        assert '<table' in entry and f'<td>{param}</td>' in entry, f'{page}.html: {name} has no parameter table'

def test_namedtuple_and_exception_signatures():
    from build_docs import _true_signature
    entry = lambda mod, name: (f'[source](https://github.com/o/r/blob/main/crossformer_seg/{mod}.py#L1)\n\n### {name}\n\n'
                               f'```python\nclass {name}(\n    *args, **kwargs\n):\n```')
    assert "class ADEPair(\n    image:Path, label:Path, split:str='training'\n):" in _true_signature(entry('data', 'ADEPair'))
    assert 'class UsageError(\n    message\n):' in _true_signature(entry('core', 'UsageError'))

def test_save_outputs_keeps_what_a_reader_sees():
    "tools/save_outputs.py: which cells' outputs are saved, which outputs are dropped, which are refused."
    from types import SimpleNamespace as NS
    import save_outputs as so
    code = lambda s: NS(cell_type='code', source=s)
    assert so.shown(code("print('hi')")) and so.shown(code('fig = dls.show_batch()'))
    assert not any(so.shown(code(s)) for s in ('#| hide\nx = 1', '#| export\ndef f(): pass', 'show_doc(f)', '#| default_exp core'))
    outs = [dict(output_type='stream', name='stderr', text='UserWarning: x'), dict(output_type='stream', name='stdout', text='ok\n'),
            dict(output_type='display_data', data={'text/html': '<table class="fastprogress">'}, metadata={}),
            dict(output_type='execute_result', execution_count=7, data={'text/plain': '3'}, metadata={})]
    kept = so.keep(outs)
    assert [o['output_type'] for o in kept] == ['stream', 'execute_result'] and kept[1]['execution_count'] is None
    for bad in ('Traceback (most recent call last):', 'FutureWarning: soon', f'saved to {ROOT}/x.png', 'in /tmp/tmpab12/x.pth'):
        assert so.LOCAL.search(bad), bad
    assert not so.LOCAL.search('loaded 398 tensors from bad_fpn.pth')
