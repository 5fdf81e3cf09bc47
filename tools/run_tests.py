"""The project's test command: every notebook through `nbdev-test` (one run per notebook, so each is counted), and the
project checks in `tests/` through pytest. Prints one line per notebook and ends with `N passed, N failed`.
`--flags slow` also runs nbdev's `#| slow` cells and the pytest tests marked `slow` (every notebook in a Jupyter kernel).
`--jobs J` runs J of these at once (default 2), the longest first by the seconds in `tools/test_durations.json` (runs
it does not list first of all), so that no long run is left alone at the end: the export notebook spends minutes in
single-threaded symbolic tracing, which overlaps well with the rest. `--record` writes that file from this run of the whole suite.

    python tools/run_tests.py [--flags slow] [--jobs J] [--record] [notebook ...]
"""
import argparse, json, os, re, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DURATIONS = ROOT / 'tools' / 'test_durations.json'   # seconds of each run (notebook name or 'pytest'), from `--record`
PYTEST = 'pytest'

def recorded_durations():
    "The seconds of each run recorded by `--record` ({} without the file)."
    try: return {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError): return {}

def longest_first(names, durations):
    "`names` ordered by their recorded seconds, longest first; names without a record first of all (they may be long)."
    return sorted(names, key=lambda n: -durations.get(n, float('inf')))

def record_durations(seconds):
    "Write `seconds` (name -> s) to `DURATIONS` whole (the project's `core.atomic_write`)."
    from crossformer_seg.core import atomic_write
    with atomic_write(DURATIONS) as tmp: tmp.write_text(json.dumps({k: round(v) for k, v in sorted(seconds.items())}, indent=1) + '\n')

def run_notebook(nb, flags=''):
    "Run one notebook with `nbdev-test`; prints its line (and the tail of its output if it fails); `(passed, failed)`."
    t0 = time.time()
    cmd = [str(BIN / 'nbdev-test'), '--n-workers', '0', str(nb)] + (['--flags', flags] if flags else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    ok = r.returncode == 0
    print(f'{"PASS" if ok else "FAIL"} {nb.relative_to(ROOT)} ({time.time() - t0:.0f} s)' +
          ('' if ok else '\n' + r.stdout[-6000:] + '\n' + r.stderr[-6000:]), flush=True)   # one print: lines of parallel runs do not mix
    return int(ok), int(not ok)

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
    p.add_argument('--record', action='store_true', help=f'write each run\'s seconds to {DURATIONS.relative_to(ROOT)} (the order of later runs)')
    p.add_argument('notebooks', nargs='*', help='notebooks to run (default: all of nbs/)')
    a = p.parse_args(argv)
    t0 = time.time()
    nbs = [Path(n).resolve() for n in a.notebooks] or sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    jobs = {nb.name: (run_notebook, nb) for nb in nbs}
    if not a.notebooks: jobs[PYTEST] = (run_pytest, [ROOT / 'tests'])
    seconds = {}
    def timed(name):
        fn, arg = jobs[name]
        t = time.time()
        try: return fn(arg, a.flags)
        finally: seconds[name] = time.time() - t
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futures = {name: pool.submit(timed, name) for name in longest_first(jobs, recorded_durations())}
        results = {name: f.result() for name, f in futures.items()}
    nb_fail = [nb.name for nb in nbs if results[nb.name][1]]
    passed, failed = sum(r[0] for r in results.values()), sum(r[1] for r in results.values())
    if a.record and not a.notebooks: record_durations(seconds)   # the whole suite only
    if nb_fail: print('failed notebooks: ' + ', '.join(nb_fail))
    print(f'total time {time.time() - t0:.0f} s')
    print(f'{passed} passed, {failed} failed')
    return 1 if failed or not passed else 0

if __name__ == '__main__': sys.exit(main())
