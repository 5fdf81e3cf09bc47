"""pytest setup shared by the project tests.

Tests marked `@pytest.mark.slow` (minutes, e.g. every notebook in a Jupyter kernel) run only when the environment
variable `CFSEG_SLOW=1` is set; `python tools/run_tests.py --flags slow` sets it, as it enables nbdev's `slow` cells.
"""
import os
import pytest

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: minutes long; runs only with CFSEG_SLOW=1 (run_tests.py --flags slow)')

def pytest_collection_modifyitems(config, items):
    if os.environ.get('CFSEG_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow: set CFSEG_SLOW=1 to run')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)

def pytest_terminal_summary(terminalreporter):
    "List the seconds each notebook took in a kernel (the `kernel_seconds` property of test_notebooks_kernel)."
    rows = sorted((r.nodeid.split('[')[-1].rstrip(']'), dict(r.user_properties)['kernel_seconds'], outcome)
                  for outcome in ('passed', 'failed') for r in terminalreporter.stats.get(outcome, [])
                  if r.when == 'call' and 'kernel_seconds' in dict(r.user_properties))
    if not rows: return
    terminalreporter.write_sep('-', 'notebooks in a Jupyter kernel')
    for name, s, outcome in rows: terminalreporter.write_line(f'{s:8.1f} s  {name}  {outcome}')
    terminalreporter.write_line(f'{sum(s for _, s, _ in rows):8.1f} s  total')
