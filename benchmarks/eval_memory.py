"""Peak memory of `crossformer_seg.metrics.evaluate` for N and k*N images: it must not grow with the split.

Each measurement runs in a fresh process: it builds `tiny_fpn` (random weights, seed 0), evaluates a split of N
copies of one synthetic demo image (same size, so every image costs the same) with the paper's test pipeline, and
reports the process's peak resident memory (`VmHWM`), the peak of Python and numpy allocations during the
evaluation (`tracemalloc`) and the resident memory after each image (what stays between images). A streamed
evaluation keeps only a confusion matrix, so all three are the same for N and k*N images (the child runs with
MALLOC_MMAP_THRESHOLD_=65536, so that freed blocks go back to the OS and resident memory is live data, not glibc's
cache and fragmentation, which otherwise add tens of MiB of noise at full scale). `--control` also runs a
loop that keeps every prediction (as evaluation loops that gather predictions do), to show the measurement sees
such growth: about H x W x 8 bytes per image.

    python benchmarks/eval_memory.py              # N = 4 and 16
    python benchmarks/eval_memory.py --n 8 --k 4 --ratio 1.0 --control
"""
import argparse, json, os, platform, shutil, subprocess, sys, tempfile
from pathlib import Path


def make_split(root, n, seed=3):
    "An ADEChallengeData2016-layout folder whose validation split is `n` copies of demo image 1 (returns `root`)."
    from crossformer_seg.demo import make_demo_ade20k
    src = make_demo_ade20k(Path(root).with_name(Path(root).name + '_src'), n_train=1, n_val=1, seed=seed)
    for kind, ext in (('images', '.jpg'), ('annotations', '.png')):
        d = Path(root)/kind/'validation'; d.mkdir(parents=True, exist_ok=True)
        for i in range(n): shutil.copy(src/kind/'validation'/f'ADE_val_00000001{ext}', d/f'ADE_val_{i + 1:08d}{ext}')
    return Path(root)


def _status_mib(key):
    "A memory line of /proc/self/status in MiB: VmRSS (resident now) or VmHWM (peak resident of this program)."
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ':')) / 2**10  # kB


def _child(root, ratio, leak):
    "Runs in the measured process: evaluate, then print the peaks and the per-image resident memory as JSON."
    import time, tracemalloc
    import torch
    torch.set_num_threads(1)
    import crossformer_seg.metrics as M
    from crossformer_seg.segmentor import build_segmentor
    torch.manual_seed(0)
    model = build_segmentor('tiny_fpn').eval()
    rss, kept, segment_image = [], [], M.segment_image
    def spy(*args, **kwargs):  # records the memory after each image; with `leak`, keeps the prediction (the control)
        pred = segment_image(*args, **kwargs)
        if leak: kept.append(pred)
        rss.append(_status_mib('VmRSS'))
        return pred
    M.segment_image = spy
    tracemalloc.start()
    t = time.perf_counter()
    res = M.evaluate(model, root, ratios=None if ratio == 1 else (ratio,), progress=False)
    secs = time.perf_counter() - t
    _, py_peak = tracemalloc.get_traced_memory()
    print(json.dumps(dict(images=res['images'], mIoU=res['mIoU'], secs=secs, py_peak_mib=py_peak / 2**20, rss_mib=rss,
                          maxrss_mib=_status_mib('VmHWM'))))  # not ru_maxrss: Linux carries the parent's over fork + exec


def measure(n, ratio=1.0, leak=False, workdir=None):
    "Peak memory of one evaluation of `n` images in a fresh process: dict(images, secs, py_peak_mib, maxrss_mib)."
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        root = make_split(Path(d)/f'split{n}', n)
        # blocks of 64 KiB and more straight from and back to the OS: resident memory shows live data, not malloc's cache
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', MALLOC_MMAP_THRESHOLD_='65536')
        r = subprocess.run([sys.executable, __file__, '--_child', str(root), '--ratio', str(ratio)] + ['--leak'] * leak,
                           capture_output=True, text=True, env=env)
        if r.returncode: raise RuntimeError(f'child failed:\n{r.stderr[-3000:]}')
        return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=4, help='images of the small split (default 4)')
    p.add_argument('--k', type=int, default=4, help='the large split has k * n images (default 4)')
    p.add_argument('--ratio', type=float, default=1.0, help='test scale ratio of 2048 x 512 (default 1.0)')
    p.add_argument('--control', action='store_true', help='also measure a loop that keeps every prediction')
    p.add_argument('--_child', help=argparse.SUPPRESS)
    p.add_argument('--leak', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child: return _child(a._child, a.ratio, a.leak)
    print(f'{platform.machine()}, torch threads 1, tiny_fpn, test scale ratio {a.ratio}')
    out = {}
    for leak in ((False, True) if a.control else (False,)):
        rows = out['control' if leak else 'evaluate'] = [measure(n, a.ratio, leak) for n in (a.n, a.k * a.n)]
        print('control: a loop that keeps every prediction' if leak else 'evaluate()')
        for r in rows:
            print(f"  {r['images']:4d} images: peak RSS {r['maxrss_mib']:7.1f} MiB, peak Python/numpy allocations "
                  f"{r['py_peak_mib']:6.2f} MiB, resident after image 1 / last {r['rss_mib'][0]:.1f} / {r['rss_mib'][-1]:.1f} MiB, {r['secs']:.1f}s")
        print(f"  growth for {a.k}x the images: peak RSS {rows[1]['maxrss_mib'] - rows[0]['maxrss_mib']:+.1f} MiB, "
              f"Python/numpy {rows[1]['py_peak_mib'] - rows[0]['py_peak_mib']:+.2f} MiB")
    return out


if __name__ == '__main__': main()
