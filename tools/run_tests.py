"""The project's test command: every notebook through `nbdev-test` (one run per notebook, so each is counted), and the
project checks in `tests/` through pytest. Prints one line per notebook and ends with `N passed, N failed`.
`--flags slow` also runs nbdev's `#| slow` cells and the pytest tests marked `slow` (every notebook in a Jupyter kernel).
`--jobs J` runs J of these at once (default 2): the export notebook spends minutes in single-threaded symbolic tracing,
which overlaps well with the rest.

    python tools/run_tests.py [--flags slow] [--jobs J] [notebook ...]
"""
import argparse, os, re, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LONG_FIRST = ('13_export.ipynb',)   # started first: minutes of export tracing, so it does not run alone at the end

def run_notebook(nb, flags=''):
    "Run one notebook with `nbdev-test`; prints its line (and the tail of its output if it fails); True if it passed."
    t0 = time.time()
    cmd = [str(BIN / 'nbdev-test'), '--n-workers', '0', str(nb)] + (['--flags', flags] if flags else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    ok = r.returncode == 0
    print(f'{"PASS" if ok else "FAIL"} {nb.relative_to(ROOT)} ({time.time() - t0:.0f} s)' +
          ('' if ok else '\n' + r.stdout[-6000:] + '\n' + r.stderr[-6000:]), flush=True)   # one print: lines of parallel runs do not mix
    return ok

def run_pytest(paths, flags=''):
    if not paths: return 0, 0
    env = {**os.environ, **({'CFSEG_SLOW': '1'} if 'slow' in flags.replace(',', ' ').split() else {})}   # tests/conftest.py reads it
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *map(str, paths)], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    print(out[-8000:] + '\n', end='', flush=True)
    count = lambda word: sum(int(n) for n in re.findall(rf'(\d+) {word}', out.splitlines()[-1] if out.strip() else ''))
    passed, failed = count('passed'), count('failed') + count('error')
    if r.returncode not in (0, 5) and failed == 0: failed = 1   # pytest crashed without a summary
    return passed, failed

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--flags', default='', help='nbdev test flags to enable, e.g. "slow"')
    p.add_argument('--jobs', type=int, default=2, help='notebook / pytest runs at once (default 2)')
    p.add_argument('notebooks', nargs='*', help='notebooks to run (default: all of nbs/)')
    a = p.parse_args(argv)
    t0 = time.time()
    nbs = [Path(n).resolve() for n in a.notebooks] or sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        first = {nb: pool.submit(run_notebook, nb, a.flags) for nb in nbs if nb.name in LONG_FIRST}
        py = pool.submit(run_pytest, [] if a.notebooks else [ROOT / 'tests'], a.flags)
        runs = {**first, **{nb: pool.submit(run_notebook, nb, a.flags) for nb in nbs if nb not in first}}
        oks = [runs[nb].result() for nb in nbs]
        py_pass, py_fail = py.result()
    nb_fail = [nb.name for nb, ok in zip(nbs, oks) if not ok]
    passed, failed = len(nbs) - len(nb_fail) + py_pass, len(nb_fail) + py_fail
    if nb_fail: print('failed notebooks: ' + ', '.join(nb_fail))
    print(f'total time {time.time() - t0:.0f} s')
    print(f'{passed} passed, {failed} failed')
    return 1 if failed or not passed else 0

if __name__ == '__main__': sys.exit(main())
