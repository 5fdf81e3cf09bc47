"""Training-pipeline loader throughput: images per second, in total and per worker process.

Runs `crossformer_seg.data.ade20k_dls` over the synthetic demo dataset (made in a temporary folder unless
`--root` points at an `ADEChallengeData2016` folder) with the paper's training pipeline (ratio resize, cat-max-ratio
crop, flip, photometric distortion, normalize, pad) and times whole epochs of the training loader after a warm-up
batch, for each `--workers` value. Every process runs torch with one thread (fastai's workers do), so the per-worker
number is the speed of one CPU core. No assertions: it prints measurements.

    python benchmarks/loader_bench.py                      # demo data, workers 0 and 2
    python benchmarks/loader_bench.py --workers 0 2 4 --bs 8 --root /data/ADEChallengeData2016
"""
import argparse, os, platform, tempfile, time
from pathlib import Path

import torch

from crossformer_seg.data import ade20k_dls
from crossformer_seg.demo import make_demo_ade20k


def bench(root, workers, bs, crop, epochs, seed):
    "Images/s of the training loader over `epochs` epochs, not counting each epoch's first batch (worker start-up)."
    dls = ade20k_dls(root, bs=bs, crop_size=(crop, crop), num_workers=workers, seed=seed, device='cpu')
    dl = dls.train
    n_img, secs = 0, 0.
    for _ in range(epochs):
        it = iter(dl)
        next(it)                                   # warm-up: worker start-up and the first batch
        t = time.perf_counter()
        for xb, yb in it: n_img += len(xb)
        secs += time.perf_counter() - t
    return n_img / secs, n_img, secs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--root', help='ADEChallengeData2016 folder (default: synthetic demo data in a temporary folder)')
    p.add_argument('--n-train', type=int, default=96, help='demo training images (default 96)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='num_workers values to time (default 0 2)')
    p.add_argument('--bs', type=int, default=4, help='batch size (default 4)')
    p.add_argument('--crop', type=int, default=512, help='crop size (default 512)')
    p.add_argument('--epochs', type=int, default=2, help='epochs timed per setting (default 2)')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root) if a.root else make_demo_ade20k(Path(tmp)/'demo_ade20k', n_train=a.n_train, n_val=2, seed=a.seed)
        print(f'loader benchmark: {"demo data" if not a.root else root}, crop {a.crop}, bs {a.bs}, {a.epochs} epoch(s), '
              f'torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}')
        print(f'{"workers":>8} {"images":>7} {"seconds":>8} {"images/s":>9} {"images/s per worker":>20}')
        for w in a.workers:
            ips, n, secs = bench(root, w, a.bs, a.crop, a.epochs, a.seed)
            print(f'{w:>8} {n:>7} {secs:>8.2f} {ips:>9.1f} {ips / max(w, 1):>20.1f}')


if __name__ == '__main__': main()
