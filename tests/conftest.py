"Project-wide pytest set-up: tests marked `slow` (model forwards over many images, subprocesses) run only with CFSEG_SLOW=1."
import os
import pytest

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a long test (several model forwards or a subprocess); runs with CFSEG_SLOW=1')

def pytest_collection_modifyitems(config, items):
    if os.environ.get('CFSEG_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow: set CFSEG_SLOW=1 to run it')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
