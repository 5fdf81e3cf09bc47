"""Training: schedules, weight decay groups, data order, exact resume after SIGKILL, 2 processes = 1, the CLI's errors, the demo."""
import json, os, random, re, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossformer_seg.core import run_command
from crossformer_seg.demo import make_demo_ade20k
from crossformer_seg.data import ade20k_dls, IterSampler
from crossformer_seg.recipes import RECIPES, lr_at, no_decay_names, param_groups
from crossformer_seg.run_folder import find_checkpoints
from crossformer_seg.segmentor import build_segmentor
from crossformer_seg.checkpoint import save_checkpoint
from crossformer_seg import train

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_WAIT_POLICY': 'PASSIVE'}   # CPU threads that share cores must not busy-wait
slow = pytest.mark.slow   # runs only with CFSEG_SLOW=1 (tests/conftest.py)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_ade20k(tmp_path_factory.mktemp('data')/'demo', n_train=8, n_val=2)


# --- schedules -------------------------------------------------------------------------------------------------------

def mmcv_lr(base_lr, it, max_iters, power, warmup_iters=0, warmup_ratio=1e-6, min_lr=0.):
    "The mmcv formulas, written out independently of the library."
    lr = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it < warmup_iters: lr = lr * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))
    return lr

@pytest.mark.parametrize('name', ['fpn', 'upernet'])
def test_schedule_matches_mmcv_formulas(name):
    r = RECIPES[name]
    expect = dict(fpn=dict(base=1e-4, iters=80_000, power=0.9, warm=0), upernet=dict(base=6e-5, iters=160_000, power=1.0, warm=1500))[name]
    assert (r.lr, r.max_iters, r.power, r.warmup_iters, r.min_lr) == (expect['base'], expect['iters'], expect['power'], expect['warm'], 0.)
    for it in (0, 1, 750, 1499, 1500, 80_000, r.max_iters - 1):
        want = mmcv_lr(expect['base'], it, expect['iters'], expect['power'], expect['warm'])
        got = lr_at(r, it)
        assert abs(got - want) <= 1e-12 * abs(want), (name, it, got, want)
    if name == 'upernet':
        assert lr_at(r, 0) == pytest.approx(6e-5 * 1e-6, rel=1e-12) and lr_at(r, 1500) == pytest.approx(6e-5 * (1 - 1500 / 160_000), rel=1e-12)
    else:
        assert lr_at(r, 80_000) == 0.


def test_optimizer_steps_at_the_schedule(demo):
    "The rate torch's AdamW uses at each step, in every parameter group, is the schedule's (warm-up, then poly)."
    from fastai.callback.core import Callback
    from crossformer_seg.learner import seg_learner
    class RecordLR(Callback):
        order = 100
        def before_fit(self): self.lrs = []
        def after_step(self): self.lrs.append([g['lr'] for g in self.learn.opt.opt.param_groups])
    dls = ade20k_dls(demo, bs=2, crop_size=(64, 64), seed=0, device='cpu')
    learn = seg_learner('tiny_upernet', dls, recipe='upernet', max_iters=5, warmup_iters=3, total_batch=2, eval_interval=0, cbs=RecordLR())
    with learn.no_bar(), learn.no_logging(): learn.fit_iters()
    want = [mmcv_lr(6e-5, it, 5, 1.0, 3) for it in range(5)]
    assert len(learn.record_lr.lrs) == 5 and all(len(g) == 2 for g in learn.record_lr.lrs)
    for got, w in zip(learn.record_lr.lrs, want): assert all(abs(x - w) <= 1e-12 * w for x in got), (got, w)


def test_upernet_no_decay_parameters():
    "Exactly the LayerNorms of the embedding, of every block and of every merging get weight decay 0 (names containing 'norm')."
    model = build_segmentor('upernet_crossformer_s')
    expected = ['backbone.patch_embed.norm.weight', 'backbone.patch_embed.norm.bias']
    for i, depth in enumerate((2, 2, 6, 2)):
        for j in range(depth):
            expected += [f'backbone.layers.{i}.blocks.{j}.{n}.{w}' for n in ('norm1', 'norm2') for w in ('weight', 'bias')]
        if i < 3: expected += [f'backbone.layers.{i}.downsample.norm.weight', f'backbone.layers.{i}.downsample.norm.bias']
    names = no_decay_names(model, RECIPES['upernet'])
    assert sorted(names) == sorted(expected) and len(names) == 56
    groups = param_groups(model, RECIPES['upernet'])
    assert [g['weight_decay'] for g in groups] == [0.01, 0.]
    ids = {id(p) for p in groups[1]['params']}
    by_name = dict(model.named_parameters())
    assert ids == {id(by_name[n]) for n in expected}
    # norms that are not named 'norm' keep their decay, as mmcv's name match does
    decayed = {id(p) for p in groups[0]['params']}
    assert id(by_name['backbone.layers.0.blocks.0.attn.pos.pos1.0.weight']) in decayed
    assert id(by_name['decode_head.bottleneck.bn.weight']) in decayed
    assert no_decay_names(model, RECIPES['fpn']) == []


# --- data order ------------------------------------------------------------------------------------------------------

def test_looking_at_a_batch_changes_nothing(demo):
    "Issue 8: one_batch() and show_batch() used to advance the epoch, changing every later augmentation."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    def epoch_batches(look):
        dls = ade20k_dls(demo, bs=2, crop_size=(64, 64), seed=3, device='cpu')
        if look:
            dls.train.one_batch(); dls.train.show_batch(max_n=1); plt.close('all')
        return [xb for xb, _ in dls.train] + [xb for xb, _ in dls.train]   # two epochs
    a, b = epoch_batches(False), epoch_batches(True)
    assert len(a) == len(b) == 8 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_iteration_order_is_split_and_worker_independent(demo):
    "The images and augmentations of an iteration do not depend on workers, accumulation split or resume point."
    def batches(num_workers, bs, accum, start, stop):
        dls = ade20k_dls(demo, bs=bs, crop_size=(64, 64), seed=5, device='cpu', num_workers=num_workers)
        dls.train.sampler = IterSampler(len(dls.train.dataset), 5, bs, accum=accum)
        dls.train.iter_range = (start, stop)
        return torch.cat([xb for xb, _ in dls.train])
    ref = batches(0, 4, 1, 0, 3)                          # 3 iterations of 4 images: crosses the 8-image epoch
    assert torch.equal(batches(2, 2, 2, 0, 3), ref)       # 2 workers, 2 micro-batches of 2
    assert torch.equal(batches(0, 4, 1, 1, 3), ref[4:])   # resumed at iteration 1: nothing skipped is loaded


# --- the command line ------------------------------------------------------------------------------------------------

def train_args(**kw):
    import argparse
    p = argparse.ArgumentParser(); train.train_arguments(p)
    a = p.parse_args([])
    for k, v in kw.items(): setattr(a, k, v)
    return a

def cli(capsys, **kw):
    "Exit code and stderr lines of `run_train` (the CLI's error handling)."
    rc = run_command(train.run_train, train_args(**kw))
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip() and 'Warning' not in l and 'warnings.warn' not in l]
    return rc, err

def small(demo, work_dir, **kw):
    return {**dict(config='tiny_fpn', data=str(demo), work_dir=str(work_dir), iters=2, batch_size=2, total_batch=2, crop_size=[64, 64],
                   eval_interval=0, checkpoint_interval=2, num_workers=0, device='cpu'), **kw}

def test_help_documents_every_flag():
    r = subprocess.run([PY, '-m', 'crossformer_seg.train', '--help'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    import argparse
    p = argparse.ArgumentParser(); train.train_arguments(p)
    flags = [a.option_strings[0] for a in p._actions if a.option_strings and a.dest != 'help']
    assert len(flags) >= 27
    help_text = ' '.join(r.stdout.split())
    for f in flags: assert f in help_text, f
    for a in p._actions: assert a.help, a.dest
    p = argparse.ArgumentParser(); train.demo_arguments(p)
    assert all(a.help for a in p._actions)

def test_bad_config(capsys, tmp_path, demo):
    rc, err = cli(capsys, **small(demo, tmp_path/'w', config='fpn_crossformer_xl'))
    assert rc == 2 and len(err) == 1 and err[0].startswith('error: --config fpn_crossformer_xl: unknown config'), err
    assert not (tmp_path/'w').exists()

def test_missing_data_root(capsys, tmp_path, demo):
    rc, err = cli(capsys, **small(demo, tmp_path/'w', data=str(tmp_path/'nowhere')))
    assert rc == 2 and err == [f'error: --data {tmp_path/"nowhere"}: no such folder'], err
    (tmp_path/'empty').mkdir()
    rc, err = cli(capsys, **small(demo, tmp_path/'w', data=str(tmp_path/'empty')))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f'error: --data {tmp_path/"empty"}:') and 'images' in err[0], err
    assert not (tmp_path/'w').exists()

def test_resume_without_complete_checkpoint(capsys, tmp_path, demo):
    run = tmp_path/'run'; run.mkdir()
    (run/'run.json').write_text(json.dumps(small(demo, run)))
    (run/'.iter_2.12345.tmp').mkdir(); (run/'iter_4').mkdir(); (run/'iter_4'/'model.safetensors').write_bytes(b'x')
    before = sorted(p.name for p in run.iterdir())
    rc, err = cli(capsys, resume=str(run))
    assert rc == 2 and err == [f'error: --resume {run}: the run folder holds no complete checkpoint'], err
    rc, err = cli(capsys, resume=str(run/'iter_4'))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f'error: --resume {run/"iter_4"}:') and 'not a complete checkpoint' in err[0], err
    rc, err = cli(capsys, resume=str(tmp_path/'nothing'))
    assert rc == 2 and err == [f'error: --resume {tmp_path/"nothing"}: no such folder'], err
    assert sorted(p.name for p in run.iterdir()) == before

@pytest.fixture(scope='module')
def finished_run(demo, tmp_path_factory):
    "A finished 2-iteration tiny_fpn run (in-process)."
    work = tmp_path_factory.mktemp('finished')/'run'
    assert run_command(train.run_train, train_args(**small(demo, work, log_interval=1))) == 0
    return work

def test_resume_of_another_config(capsys, tmp_path, finished_run):
    before = sorted(p.name for p in finished_run.iterdir())
    rc, err = cli(capsys, resume=str(finished_run), config='tiny_upernet')
    assert rc == 2 and err == [f'error: --resume {finished_run}: that run trains tiny_fpn, not tiny_upernet'], err
    rc, err = cli(capsys, resume=str(finished_run), lr=0.5)
    assert rc == 2 and len(err) == 1 and err[0].startswith('error: --lr 0.5: the run being resumed') and '0.0001' in err[0], err
    assert sorted(p.name for p in finished_run.iterdir()) == before

def test_work_dir_holding_another_run(capsys, tmp_path, demo, finished_run):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    rc, err = cli(capsys, **small(demo, finished_run))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f'error: --work-dir {finished_run} holds a run of tiny_fpn'), err
    rc, err = cli(capsys, **small(demo, finished_run, config='tiny_upernet'), auto_resume=True)
    assert rc == 2 and len(err) == 1 and 'holds a run of tiny_fpn, not tiny_upernet' in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before

def test_pretrained_that_does_not_fit(capsys, tmp_path, demo):
    bad = save_checkpoint(build_segmentor('tiny_upernet'), tmp_path/'upernet.safetensors')
    rc, err = cli(capsys, **small(demo, tmp_path/'w', pretrained=str(bad)))
    assert rc == 2 and err[-1].startswith(f'error: --pretrained {bad} does not fit tiny_fpn:') and 'missing' in err[-1], err
    assert err[0].startswith(f'checkpoint {bad} does not fit model')   # the load report comes first
    assert not (tmp_path/'w').exists()
    rc, err = cli(capsys, **small(demo, tmp_path/'w', pretrained=str(tmp_path/'none.pth')))
    assert rc == 2 and err == [f'error: --pretrained {tmp_path/"none.pth"}: no such file'], err

def test_pretrained_backbone_and_finished_run(capsys, tmp_path, demo, finished_run):
    "An ImageNet-style backbone checkpoint loads into the backbone (report printed); the finished run is complete."
    names = sorted(p.name for p in finished_run.iterdir() if p.name != 'tb')   # tb/: only where tensorboard is installed
    assert names == ['best.safetensors', 'eval_iter_2.json', 'final.safetensors', 'iter_2', 'log.csv', 'run.json'], names
    run = json.loads((finished_run/'run.json').read_text())
    assert run['config'] == 'tiny_fpn' and run['iters'] == 2 and run['schedule']['lr'] == 1e-4 and run['model']['backbone']['embed_dim'] == 32
    bb = build_segmentor('tiny_fpn').backbone.state_dict()
    torch.save({'model': {**bb, 'head.weight': torch.zeros(1000, 256), 'head.bias': torch.zeros(1000)}}, tmp_path/'imagenet.pth')
    rc = run_command(train.run_train, train_args(**small(demo, tmp_path/'w', iters=1, checkpoint_interval=1, amp='bf16'),
                                                 pretrained=str(tmp_path/'imagenet.pth')))
    out = capsys.readouterr().out
    assert rc == 0 and 'pretrained: loaded' in out and 'into model.backbone' in out, out   # (with bf16 autocast on the CPU)
    assert json.loads((tmp_path/'w'/'run.json').read_text())['amp'] == 'bf16'


def test_non_finite_loss_stops_with_one_line(capsys, tmp_path, demo):
    "A learning rate of 1e12 blows the weights up after the first step: the run stops at iteration 2, iter_1 stays."
    rc, err = cli(capsys, **small(demo, tmp_path/'w', iters=6, checkpoint_interval=1, lr=1e12))
    assert rc == 1 and err == [f'error: loss is nan at iteration 2; training stopped; the last complete checkpoint is '
                               f'{tmp_path/"w"/"iter_1"}: resume with --resume {tmp_path/"w"}'], err
    assert [n for n, _ in find_checkpoints(tmp_path/'w')] == [1] and not (tmp_path/'w'/'final.safetensors').exists()
    assert train.find_resume(tmp_path/'w')[0] == tmp_path/'w'/'iter_1'   # the resume point: the last good checkpoint


# --- exact resume after SIGKILL ----------------------------------------------------------------------------------------

def train_cmd(demo, work, iters, extra=()):
    return ['--config', 'tiny_fpn', '--data', str(demo), '--work-dir', str(work), '--iters', str(iters), '--batch-size', '2',
            '--total-batch', '4', '--crop-size', '64', '64', '--eval-interval', '2', '--checkpoint-interval', '2',
            '--num-workers', '2', '--device', 'cpu', '--log-interval', '1', *extra]

def launch(args, prelude='', **kw):
    code = f'{prelude}\nfrom crossformer_seg.train import main\nraise SystemExit(main({args!r}))'
    return subprocess.Popen([PY, '-c', code], text=True, env=ENV, cwd=ROOT, **{'stdout': subprocess.PIPE, 'stderr': subprocess.STDOUT, **kw})

def wait_for(work, n, p):
    while not (work/f'iter_{n}').is_dir():
        assert p.poll() is None, 'the run ended early'
        time.sleep(0.02)
    return time.time()

def finish(p, timeout=900):
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out

KILL_IN_WRITE = '''
import os, signal, crossformer_seg.run_folder as L
_orig = L._save_tensors
def _save_then_die(tensors, path):
    _orig(tensors, path)
    if '.iter_{n}.' in str(path): os.kill(os.getpid(), signal.SIGKILL)   # optimizer file written, state.json not yet
L._save_tensors = _save_then_die
'''

def assert_same_result(a, b, n):
    fa, fb = load_file(str(a/'final.safetensors')), load_file(str(b/'final.safetensors'))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), 'final weights differ'
    oa, ob = (load_file(str(r/f'iter_{n}'/'optimizer.safetensors')) for r in (a, b))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), 'optimizer state differs'
    sa, sb = (json.loads((r/f'iter_{n}'/'state.json').read_text()) for r in (a, b))
    assert sa['optimizer'] == sb['optimizer'] and sa['iteration'] == sb['iteration'] == n

def one_go(demo, tmp_path_factory, n):
    "Run A: `n` iterations in one go (2 data-loader workers), checkpoints every 2; its run folder."
    work = tmp_path_factory.mktemp(f'run_a{n}')/'run'
    rc, out = finish(launch(train_cmd(demo, work, n)))
    assert rc == 0, out
    return work

@pytest.fixture(scope='module')
def run_a(demo, tmp_path_factory): return one_go(demo, tmp_path_factory, 4)

def test_resume_after_kill_inside_checkpoint_write(demo, tmp_path, run_a):
    "Run B is SIGKILLed while writing iter_4 (after its optimizer file), resumed from iter_2: same weights and optimizer as A."
    work = tmp_path/'run_b'
    rc, out = finish(launch(train_cmd(demo, work, 4), KILL_IN_WRITE.format(n=4)))
    assert rc == -signal.SIGKILL, out
    assert [n for n, _ in find_checkpoints(work)] == [2] and not (work/'final.safetensors').exists()
    assert any(p.name.startswith('.iter_4.') for p in work.iterdir())           # the half-written folder, under its temporary name
    rc, out = finish(launch(['--resume', str(work)]))
    assert rc == 0 and 'resuming' in out and 'at iteration 2' in out, out
    assert not any(p.name.startswith('.iter_') for p in work.iterdir())         # the leftover was cleaned up
    assert_same_result(run_a, work, 4)
    log = (work/'log.csv').read_text().splitlines()
    assert [l.split(',')[0] for l in log[1:]] == ['1', '2', '2', '3', '4', '4']  # the log continues where the checkpoint was

@pytest.mark.parametrize('group', [False, True], ids=['process', 'group'])
def test_sigterm_stops_like_ctrl_c(demo, tmp_path, run_a, group):
    "SIGTERM once iter_2 is written, to the process or to its process group (data workers too, as a scheduler sends it): one line, exit 143, the resume ends where A ends."
    work = tmp_path/'run_b'
    p = launch(train_cmd(demo, work, 4), stderr=subprocess.PIPE, start_new_session=True)
    wait_for(work, 2, p)
    if group: os.killpg(p.pid, signal.SIGTERM)
    else: p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip() and 'Warning' not in l and 'warnings.warn' not in l]
    assert p.returncode == 143 and len(lines) == 1, (p.returncode, err[-3000:])
    assert re.fullmatch(rf'terminated \(SIGTERM\) after [234] iterations; the last complete checkpoint is {re.escape(str(work))}/iter_[24]: '
                        rf'resume with --resume {re.escape(str(work))}', lines[0]), lines
    assert not (work/'final.safetensors').exists() and not any(q.name.startswith('.iter_') for q in work.iterdir())
    rc, out = finish(launch(['--resume', str(work)]))
    assert rc == 0, out
    assert_same_result(run_a, work, 4)

@pytest.fixture(scope='module')
def run_a12(demo, tmp_path_factory): return one_go(demo, tmp_path_factory, 12)   # for the slow tests

@slow
@pytest.mark.parametrize('trial', range(4))
def test_resume_after_kill_at_a_random_moment(demo, tmp_path, run_a12, trial):
    "SIGKILL at a random moment after the first checkpoint (before the end), then resume to 2N = 12: identical to A."
    work, rng = tmp_path/'b', random.Random(trial)
    p, start = launch(train_cmd(demo, work, 12)), time.time()
    k = rng.choice([2, 4, 6, 8])
    t0 = start if k == 2 else wait_for(work, k - 2, p)
    t1 = wait_for(work, k, p)
    # a random moment after iter_k, within the time the last checkpoint took (measured just now, so that a change of the
    # machine's load does not push the kill past the end of the run: 2 iterations are left after iter_10)
    delay = rng.uniform(0, t1 - t0)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL); p.communicate()
    done, partial = [n for n, _ in find_checkpoints(work)], sorted(q.name for q in work.glob('.iter_*'))
    assert not (work/'final.safetensors').exists(), 'killed too late: the run had finished'
    rc, out = finish(launch(['--resume', str(work)]))
    assert rc == 0, out
    print(f'trial {trial}: SIGKILL {delay:.1f} s after iter_{k} was written; complete checkpoints {done}, '
          f'half-written {partial or "none"}; resumed to 12: identical')
    assert_same_result(run_a12, work, 12)

@slow
def test_resume_after_kill_inside_each_checkpoint_write(demo, tmp_path, run_a12):
    "The kill lands inside the write of iter_4, iter_8 and iter_12 in turn; each resume ends where A ends."
    for n in (4, 8, 12):
        work = tmp_path/f'b{n}'
        assert finish(launch(train_cmd(demo, work, 12), KILL_IN_WRITE.format(n=n)))[0] == -signal.SIGKILL
        assert [k for k, _ in find_checkpoints(work)][-1] == n - 2
        rc, out = finish(launch(['--resume', str(work)]))
        assert rc == 0, out
        assert_same_result(run_a12, work, 12)


# --- two processes = one -----------------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_two_processes_equal_one(demo, tmp_path):
    "accelerate launch, 2 CPU processes x batch 1 (SyncBN, gloo) == 1 process x batch 2: weights after 4 iterations."
    common = ['--config', 'tiny_fpn', '--data', str(demo), '--iters', '4', '--total-batch', '2', '--crop-size', '64', '64',
              '--dropout', '0', '--drop-path', '0', '--eval-interval', '0', '--checkpoint-interval', '4', '--num-workers', '0',
              '--log-interval', '1']
    acc = [str(Path(PY).parent/'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(free_port()), '-m', 'crossformer_seg.train']
    r2 = subprocess.run(acc + common + ['--batch-size', '1', '--work-dir', str(tmp_path/'two'), '--check-ranks'],
                        capture_output=True, text=True, env={**ENV, 'ACCELERATE_USE_CPU': '1'}, timeout=900)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert 'check-ranks: weights bit-identical on all 2 processes after each of 4 steps' in r2.stdout, r2.stdout[-2000:]
    assert '2 process(es) x 1 x 1 accumulation' in r2.stdout
    r1 = subprocess.run([PY, '-m', 'crossformer_seg.train'] + common + ['--batch-size', '2', '--work-dir', str(tmp_path/'one'), '--device', 'cpu'],
                        capture_output=True, text=True, env=ENV, timeout=900)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    a, b = load_file(str(tmp_path/'two'/'final.safetensors')), load_file(str(tmp_path/'one'/'final.safetensors'))
    keys = [k for k in a if a[k].is_floating_point()]
    rel = lambda ks: (torch.cat([(a[k].double() - b[k].double()).flatten() for k in ks]).norm() /
                      torch.cat([b[k].double().flatten() for k in ks]).norm()).item()
    # Adam divides each gradient by its own magnitude: where the gradient is mathematically zero (softmax ignores a
    # per-head shift of the position bias and the key bias), float noise of 1e-12 becomes a step of up to lr. Those
    # tensors are compared by the size of a step; all others tensor by tensor.
    degenerate = [k for k in keys if '.attn.pos.' in k or k.endswith('attn.qkv.bias')]
    per_tensor = {k: rel([k]) for k in keys if k not in degenerate}
    worst = max(per_tensor, key=per_tensor.get)
    print(f'2 processes vs 1 after 4 iterations: all weights {rel(keys):.1e} relative (L2); worst tensor {worst} '
          f'{per_tensor[worst]:.1e}; {len(degenerate)} zero-gradient tensors within '
          f'{max((a[k] - b[k]).abs().max().item() for k in degenerate):.1e} absolute ({max(rel([k]) for k in degenerate):.1e} relative)')
    # per tensor: float noise of the batch split (1 x 2 against 2 x 1 images), seen up to 1.2e-5 on a LayerNorm bias
    assert rel(keys) <= 1e-5 and per_tensor[worst] <= 3e-5, (rel(keys), worst, per_tensor[worst])
    assert all((a[k] - b[k]).abs().max() <= 8e-4 for k in degenerate)   # 4 steps of lr 1e-4 each way
    init = build_segmentor('tiny_fpn').state_dict()
    assert sum(not torch.equal(a[k], init[k]) for k in keys) > 100   # it did train
    for r in ('two', 'one'):
        ev = json.loads((tmp_path/r/'eval_iter_4.json').read_text()); assert 0 <= ev['mIoU'] <= 1


# --- the demo ------------------------------------------------------------------------------------------------------------

@slow
def test_demo_learns_within_ten_minutes(tmp_path):
    t0 = time.time()
    r = subprocess.run([PY, '-c', 'from crossformer_seg.train import demo_arguments, run_demo; from crossformer_seg.core import command_main; '
                        f'raise SystemExit(command_main(demo_arguments, run_demo, ["--work-dir", {str(tmp_path/"demo")!r}]))'],
                       capture_output=True, text=True, env=ENV, timeout=1200)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r'demo: validation mIoU ([0-9.]+) over the (\d+) classes', r.stdout)
    print(f'demo: {wall:.0f} s, {m.group(0) if m else r.stdout[-500:]}')
    assert m and float(m.group(1)) >= 0.5 and int(m.group(2)) >= 8, r.stdout[-2000:]
    assert (tmp_path/'demo'/'predictions.png').stat().st_size > 10_000
    assert wall <= 600, wall
