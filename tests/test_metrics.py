"""Checks of `crossformer_seg.metrics` that need several processes or minutes: the `test` command under
`accelerate launch` equals the one-process run, the fastai metric under two processes does not count the padding
repeat of fastai's `DistributedDL`, `--mode slide --aug-test` with a `tiny_upernet` checkpoint, and memory that does
not grow with the split. Slow ones run with CFSEG_SLOW=1 (`python tools/run_tests.py --flags slow`)."""
import argparse, contextlib, io, json, os, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
slow = pytest.mark.skipif(os.environ.get('CFSEG_SLOW') != '1', reason='slow: set CFSEG_SLOW=1 to run')
# one thread per process: fastest on a shared 2-core machine, and the same float sums in every process
ENV = dict(os.environ, OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1', PYTHONWARNINGS='ignore')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try: yield
    finally: torch.set_num_threads(n)


def run_test(*argv):
    "The `test` command in this process, as `python -m crossformer_seg.metrics ARGV` runs it: (exit code, stdout, stderr)."
    import crossformer_seg.metrics as M
    from crossformer_seg.core import command_main
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e), one_thread():
        code = command_main(M.test_arguments, M.run_test, list(map(str, argv)))
    return code, o.getvalue(), e.getvalue()


def launch(*argv, n=2, timeout=300):
    "`accelerate launch` of `python -m crossformer_seg.metrics` on `n` CPU processes (gloo)."
    cmd = [str(BIN / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', str(n), '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(free_port()),
           '-m', 'crossformer_seg.metrics', *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope='module')
def five(tmp_path_factory):
    "A demo validation split of 5 images (an odd count) and a `tiny_fpn` checkpoint from a fixed seed."
    from crossformer_seg.checkpoint import save_checkpoint
    from crossformer_seg.demo import make_demo_ade20k
    from crossformer_seg.segmentor import build_segmentor
    d = tmp_path_factory.mktemp('five')
    root = make_demo_ade20k(d / 'demo', n_train=1, n_val=5, seed=3)
    return d, root, save_checkpoint(demo_classes_model(), d / 'tiny_fpn.safetensors', {'config': 'tiny_fpn'})


def demo_classes_model(seed=0):
    "`tiny_fpn` from `seed` whose classifier picks among the 8 demo classes only: a confusion matrix that is not trivial."
    from crossformer_seg.demo import DEMO_CLASSES
    from crossformer_seg.segmentor import build_segmentor
    torch.manual_seed(seed)
    model = build_segmentor('tiny_fpn').eval()
    with torch.no_grad():
        seg = model.decode_head.conv_seg
        seg.weight.normal_(0, 1)
        off = torch.ones(seg.bias.shape, dtype=torch.bool); off[[k - 1 for k in DEMO_CLASSES]] = False  # ids are 1-based
        seg.bias[off] -= 100
    return model


def test_two_processes_write_the_one_process_json(five):
    d, root, ckpt = five
    args = ['--config', 'tiny_fpn', '--checkpoint', ckpt, '--data', root, '--img-scale', 1024, 256]   # half scale: quicker
    code, out, err = run_test(*args, '--out', d / 'one.json')
    assert (code, err) == (0, ''), err
    r = launch(*args, '--out', d / 'two.json', '--show-dir', d / 'show')
    assert r.returncode == 0, r.stderr[-4000:]
    one, two = (json.loads((d / f).read_text()) for f in ('one.json', 'two.json'))
    assert one['images'] == 5 and 0 < one['mIoU'] < 1 and sum(c['IoU'] is not None for c in one['per_class']) >= 8
    assert two == one                                            # every number, exactly
    summary = [l for l in r.stdout.splitlines() if l.startswith('aAcc ')]
    assert len(summary) == 1 and '5 images' in summary[0] and '2 processes' in summary[0], r.stdout   # rank 0 only
    assert sorted(os.listdir(d / 'show')) == [f'ADE_val_{i:08d}_overlay.jpg' for i in range(1, 6)]  # both shards


@slow
def test_two_processes_stop_together_on_a_bad_label(five, tmp_path):
    "A bad label in process 1's shard: both processes exit 2 (none waits forever), one error line, no JSON."
    import shutil
    from PIL import Image
    d, root, ckpt = five
    bad = shutil.copytree(root, tmp_path / 'demo')
    lab = bad / 'annotations' / 'validation' / 'ADE_val_00000002.png'   # image 2 of 5: process 1's first
    a = np.array(Image.open(lab)); a[3, 4] = 200; Image.fromarray(a).save(lab)
    r = launch('--config', 'tiny_fpn', '--checkpoint', ckpt, '--data', bad, '--out', tmp_path / 'eval.json',
               '--img-scale', 512, 128, timeout=240)
    assert r.returncode != 0
    line = f'error: label {lab}: has values [200] above 150 (ADE20K labels are 0..150, 255 = ignore)'
    assert r.stderr.count(line) == 1, r.stderr[-4000:]
    assert [l for l in r.stderr.splitlines() if l.startswith('error: ')] == [line]
    assert not (tmp_path / 'eval.json').exists()


# fastai's validation loop under two processes: the metric must drop DistributedDL's padding repeat

def _logit_items(n, C=3, seed=0):
    "Validation items: (logits C x 8 x 8, labels of their own size with some 255)."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in torch.randint(6, 14, (2,), generator=g))
        y = torch.randint(0, C, (h, w), generator=g)
        y[torch.rand(h, w, generator=g) < 0.1] = 255
        out.append((torch.randn(C, 8, 8, generator=g), y))
    return out


def _learner(items, C=3):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    from crossformer_seg.metrics import miou_metrics
    from crossformer_seg.segmentor import SegLoss

    class PassThrough(torch.nn.Module):
        def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(()))
        def forward(self, x): return x + self.w

    dls = DataLoaders(DataLoader(items, bs=1), DataLoader(items, bs=1), device='cpu')
    return Learner(dls, PassThrough(), loss_func=SegLoss(), metrics=miou_metrics(C))


def _validate_rank(rank, world, port, out, n):
    "One process of the two: fastai's `DistributedDL` over the validation set, `learn.validate`, values to a file."
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from fastai.distributed import DistributedDL
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        class CPUDistributedDL(DistributedDL):
            def _broadcast(self, t, rank): return list(t)   # fastai's goes through CUDA; unshuffled indices agree anyway
        learn = _learner(_logit_items(n))
        ddl = CPUDistributedDL(learn.dls.valid)
        with learn.no_bar(), learn.no_logging(): vals = learn.validate(dl=ddl)
        Path(out, f'rank{rank}.json').write_text(json.dumps(dict(vals=[float(v) for v in vals[1:]], n_padded=ddl.n_padded,
                                                                  batches=len(ddl))))
    finally: dist.destroy_process_group()


def test_fastai_metric_two_processes_equal_one(tmp_path):
    from crossformer_seg.heads import resize
    from crossformer_seg.metrics import segmentation_metrics
    n = 5
    torch.multiprocessing.spawn(_validate_rank, args=(2, free_port(), str(tmp_path), n), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    assert ranks[0]['n_padded'] == 6 and ranks[0]['batches'] == ranks[1]['batches'] == 3   # item 0 is repeated on rank 1
    items = _logit_items(n)
    learn = _learner(items)
    with one_thread(), learn.no_bar(), learn.no_logging(): one = [float(v) for v in learn.validate()[1:]]
    assert ranks[0]['vals'] == ranks[1]['vals'] == one
    preds = [resize(x[None], y.shape).argmax(1)[0] for x, y in items]
    ref = segmentation_metrics(preds, [y for _, y in items], 3)
    assert one == [ref['mIoU'], ref['mAcc'], ref['aAcc']]
    padded = segmentation_metrics(preds + preds[:1], [y for _, y in items] + [items[0][1]], 3)
    assert [padded['mIoU'], padded['mAcc'], padded['aAcc']] != one   # counting the repeat would have shown


# `--mode slide --aug-test` with a tiny_upernet checkpoint on the demo data

@pytest.fixture(scope='module')
def upernet(tmp_path_factory):
    "The demo dataset (2 validation images), one small demo image in the same layout, a `tiny_upernet` checkpoint."
    from PIL import Image
    from crossformer_seg.checkpoint import save_checkpoint
    from crossformer_seg.demo import demo_sample, make_demo_ade20k
    from crossformer_seg.segmentor import build_segmentor
    d = tmp_path_factory.mktemp('upernet')
    root = make_demo_ade20k(d / 'demo', n_train=1, n_val=2, seed=5)
    img, lbl = demo_sample(5, 'validation', 0)
    small = d / 'small'
    for kind, a, ext in (('images', img[-64:, :96], '.jpg'), ('annotations', lbl[-64:, :96], '.png')):  # 96 x 64, bottom left
        (small / kind / 'validation').mkdir(parents=True)
        Image.fromarray(np.ascontiguousarray(a)).save(small / kind / 'validation' / f'ADE_val_00000001{ext}', quality=95)
    torch.manual_seed(1)
    return d, root, small, save_checkpoint(build_segmentor('tiny_upernet'), d / 'tiny_upernet.safetensors', {'config': 'tiny_upernet'})


def test_slide_aug_test_upernet_small_image(upernet):
    "slide + 6 scales + flip, for real, on a 96 x 64 demo image: the largest scale (448 x 672) takes two windows."
    import crossformer_seg.metrics as M
    d, _, small, ckpt = upernet
    code, out, err = run_test('--config', 'tiny_upernet', '--checkpoint', ckpt, '--data', small, '--mode', 'slide',
                              '--aug-test', '--img-scale', 1024, 256, '--out', d / 'small.json')
    assert (code, err) == (0, ''), err
    js = json.loads((d / 'small.json').read_text())
    assert (js['mode'], js['aug_test'], js['flip'], js['ratios'], js['images']) == ('slide', True, True, list(M.AUG_TEST_RATIOS), 1)
    assert js['config'] == 'tiny_upernet' and len(js['per_class']) == 150 and 0 <= js['mIoU'] <= 1


@slow
def test_slide_aug_test_upernet(upernet):
    "The paper's test on the demo split: 6 scales x 2 flips of sliding windows at 2048 x 512 (minutes on one CPU core)."
    d, root, _, ckpt = upernet
    code, out, err = run_test('--config', 'tiny_upernet', '--checkpoint', ckpt, '--data', root, '--mode', 'slide',
                              '--aug-test', '--out', d / 'full.json')
    assert (code, err) == (0, ''), err
    js = json.loads((d / 'full.json').read_text())
    assert (js['mode'], js['aug_test'], js['images']) == ('slide', True, 2) and 0 <= js['mIoU'] <= 1


@slow
def test_memory_does_not_grow_with_the_split():
    "Peak and resident memory for 4x the images stay put (a loop keeping predictions grows 1.4 MiB per image here)."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import eval_memory
    small, large = (eval_memory.measure(n, ratio=0.5) for n in (3, 12))
    assert (small['images'], large['images']) == (3, 12)
    print({k: small[k] for k in ('maxrss_mib', 'py_peak_mib')}, {k: large[k] for k in ('maxrss_mib', 'py_peak_mib')}, large['rss_mib'])
    assert large['maxrss_mib'] - small['maxrss_mib'] < 4, (small, large)
    assert large['rss_mib'][-1] - large['rss_mib'][2] < 4, large['rss_mib']   # resident after image 3 vs image 12
