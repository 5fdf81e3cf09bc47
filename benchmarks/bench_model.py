"""Segmentor speed and memory as ratios to this machine's own fp32 GEMM rate, measured in one run.

For a named config (default `fpn_crossformer_s`): the eval forward at 1x3x512x512 and the training step at 2x3x512x512
(forward, `SegLoss`, backward, AdamW step), for each attention path, with and without gradient checkpointing. Reports
median times, the model's multiply-adds by the original's convention (conv/linear layers, the DPB MLP and the two
attention matmuls; LayerNorm, GELU, softmax, adds and interpolation not counted) in all and by kind (`MAC_PARTS`),
the rate of a 2048^3 fp32 matmul measured before and after, their ratios, and the peak resident memory of the
training step (each configuration runs in a fresh subprocess, so the peak is its own). Each process sets glibc's policy for large blocks as the
`crossformer-seg` commands do (`core.malloc_policy`): 'reuse', and 'release' for the gradient-checkpointing rows as
`train --grad-checkpointing` does. CPU numbers from a shared machine: look at the load line, and compare ratios, not
absolute times.

Usage: `python benchmarks/bench_model.py [--config fpn_crossformer_s] [--threads 2] [--paths sdpa explicit]
[--compile] [--bf16] [--profile] [--json bench.json]`; `--profile` adds three profiled steps per configuration, their self CPU
time by operator kind (`OP_PARTS`, the median of each); on the CPU `--compile` adds eval rows of `torch.compile(model)`
and `--bf16` eval and training rows under bf16 autocast (their shares still divide by the fp32 GEMM rate); `--device cuda` times bf16 autocast + SDPA (+ `torch.compile` with `--compile`) against fp32 eager
and reports train images/s and model FLOP utilisation against `--peak-tflops`.

The JSON records the CPU (`cpu_info`): the GEMM rate, and with it every ratio, follows the vector instructions (an
AVX-512 core multiplies about 1.6x as fast as with AVX2 here, the model gains less). To measure an AVX2 host on an
AVX-512 one, cap all three libraries: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
from collections import namedtuple
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# `--profile`: what each operator of a profiled step counts as (self CPU time); any other operator is 'other'
OP_PARTS = {
    'convolutions': ('aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_convolution', 'aten::_slow_conv2d_forward',
                     'aten::_slow_conv2d_backward'),
    'linear layers': ('mkldnn::_linear_pointwise', 'aten::mm', 'aten::addmm'),
    'attention products': ('aten::bmm', 'aten::baddbmm', 'aten::_scaled_dot_product_flash_attention_for_cpu',
                           'aten::_scaled_dot_product_flash_attention_for_cpu_backward'),
    'optimizer': ('aten::_fused_adamw_', 'Optimizer.step#AdamW.step', 'aten::_foreach_mul_', 'aten::_foreach_add_', 'aten::_foreach_addcdiv_'),
}
# the complexity module's operator counts behind each counted `OP_PARTS` kind (the rest: the DPB's ReLU, the final resize)
MAC_PARTS = {'convolutions': ('conv', 'conv_bias'), 'linear layers': ('linear',), 'attention products': ('bmm', 'matmul')}


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def median_time(fn, reps, warmup=1, device=torch.device('cpu')):
    "Median and all wall-clock seconds of `reps` calls of `fn` after `warmup` calls."
    for _ in range(warmup): fn()
    ts = []
    for _ in range(reps):
        _sync(device); t0 = time.perf_counter(); fn(); _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def gemm_rate(device, n=2048, reps=7, dtype=torch.float32):
    "Multiply-adds per second of an `n x n @ n x n` matmul (median of `reps`)."
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t, _ = median_time(lambda: a @ b, reps, warmup=2, device=device)
    return n ** 3 / t


def profile_parts(step, n=3, top=8):
    "Self CPU seconds by `OP_PARTS` of `n` profiled calls of `step` (the median of each part), their median wall time, and the `top` operators counted as 'other'."
    from torch.profiler import profile, ProfilerActivity
    part = {op: name for name, ops in OP_PARTS.items() for op in ops}
    runs = []
    for _ in range(n):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter(); step(); wall = time.perf_counter() - t0
        parts, other = dict.fromkeys([*OP_PARTS, 'other'], 0.), {}
        for e in prof.key_averages():
            s = e.self_cpu_time_total / 1e6
            parts[part.get(e.key, 'other')] += s
            if e.key not in part: other[e.key] = s
        runs.append((wall, parts, other))
    med = statistics.median
    other = {k: med([r[2].get(k, 0.) for r in runs]) for k in runs[0][2]}
    return dict(n=n, wall_s=med([r[0] for r in runs]), parts_s={k: med([r[1][k] for r in runs]) for k in runs[0][1]},
                top_other_s=dict(sorted(other.items(), key=lambda kv: -kv[1])[:top]))


def count_macs(model, x):
    "Multiply-adds of one eval forward of `model` at `x`'s size by the original's convention (the complexity module's count), and those of each `MAC_PARTS` kind."
    from crossformer_seg.complexity import count_params_flops
    c = count_params_flops(model, tuple(x.shape[1:]), convention='original')
    return c['flops'] * x.shape[0], {k: sum(c['flops_by_op'].get(o, 0) for o in ops) * x.shape[0] for k, ops in MAC_PARTS.items()}


def build(config, path, ckpt, device, train):
    from crossformer_seg.segmentor import build_segmentor
    torch.manual_seed(0)
    m = build_segmentor(config).to(device)
    m.backbone.set_attention_path(path == 'sdpa')
    m.set_grad_checkpointing(ckpt)
    return m.train(train)


def child(a):
    "One measurement in this fresh process: eval forward or training step; prints a JSON line."
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    from crossformer_seg.core import malloc_policy, fused_adamw
    from crossformer_seg.segmentor import SegLoss
    malloc_policy('release' if a.ckpt and a.mode == 'train' else 'reuse')   # as the commands set it
    m = build(a.config, a.path, a.ckpt, dev, a.mode == 'train')
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16)
    if a.compile: m = torch.compile(m)
    g = torch.Generator().manual_seed(0)
    if a.mode == 'eval':
        x = torch.randn(a.batch, 3, *a.size, generator=g).to(dev)
        def step():
            with torch.inference_mode(), amp: m(x)
    else:
        x = torch.randn(a.batch, 3, *a.size, generator=g).to(dev)
        y = torch.randint(0, 150, (a.batch, *a.size), generator=g).to(dev)
        # as `learner.adamw` makes it (that module is not imported: fastai's import alone adds ~0.12 GiB to the peak)
        params = list(m.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=fused_adamw(params))
        loss_fn = SegLoss()
        def step():
            with amp: loss = loss_fn(m(x), y)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(a.warmup): step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # the warm-up steps set the peak (AdamW state included)
    # a GEMM probe right before and after every timed step: on a shared machine the capacity changes by the second
    n, A, Bm = 2048, torch.randn(2048, 2048, device=dev), torch.randn(2048, 2048, device=dev)
    def probe():
        t, _ = median_time(lambda: A @ Bm, 3, warmup=1, device=dev)
        return n ** 3 / t
    ts, rates = [], []
    for _ in range(a.reps):
        g0 = probe()
        _sync(dev); t0 = time.perf_counter(); step(); _sync(dev)
        ts.append(time.perf_counter() - t0); rates.append((g0 + probe()) / 2)
    del A, Bm
    out = dict(time_s=statistics.median(ts), times_s=ts, gemm_rates=rates,
               peak_rss_gib=peak, peak_rss_gib_with_probes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    if a.profile and dev.type == 'cpu': out['profile'] = profile_parts(step)   # after the timed steps and the peak
    if dev.type == 'cuda': out['peak_cuda_gib'] = torch.cuda.max_memory_allocated() / 2 ** 30
    print('RESULT ' + json.dumps(out))


def run_child(a, **kw):
    args = [sys.executable, os.path.abspath(__file__), '--_child', '--config', a.config, '--threads', str(a.threads),
            '--device', a.device]
    for k, v in kw.items():
        if isinstance(v, bool):
            if v: args.append(f'--{k}')
        elif isinstance(v, (list, tuple)): args += [f'--{k}', *map(str, v)]
        else: args += [f'--{k}', str(v)]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(a.threads)})
    lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not lines: raise RuntimeError(f'benchmark child failed ({" ".join(args)}):\n{r.stderr[-3000:]}')
    return json.loads(lines[-1][7:])


# one measured configuration: a row of the table, a fresh child process
Config = namedtuple('Config', 'mode path ckpt compiled bf16', defaults=(False, False, False))

def yn(flag): return 'yes' if flag else 'no'

# environment variables that cap the vector instructions of ATen, oneDNN and MKL (to measure an AVX2 host on an AVX-512 one)
ISA_CAPS = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS')

def cpu_info():
    "The CPU's model name, ATen's vector capability (`AVX2`, `AVX512`, ...) and any `ISA_CAPS` set: the GEMM rate and the fastest layouts follow them."
    try: name = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '')
    except OSError: name = ''
    return dict(model=name, capability=torch.backends.cpu.get_cpu_capability(), isa_caps={k: os.environ[k] for k in ISA_CAPS if k in os.environ})


def loadavg():
    try: return os.getloadavg()
    except OSError: return (float('nan'),) * 3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='fpn_crossformer_s')
    p.add_argument('--size', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'))
    p.add_argument('--eval-batch', type=int, default=1)
    p.add_argument('--train-batch', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--paths', nargs='+', default=['sdpa', 'explicit'])
    p.add_argument('--eval-reps', type=int, default=7)
    p.add_argument('--train-reps', type=int, default=5)
    p.add_argument('--repeats', type=int, default=1, help='run every configuration this many times (fresh processes), report the median')
    p.add_argument('--no-ckpt', action='store_true', help='skip the gradient-checkpointing rows')
    p.add_argument('--device', default='cpu')
    p.add_argument('--compile', action='store_true', help='also time torch.compile of the segmentor (cpu: eval rows)')
    p.add_argument('--peak-tflops', type=float, default=989., help='cuda: dense bf16 peak for FLOP utilisation (H100 SXM: 989)')
    p.add_argument('--profile', action='store_true', help='cpu: also profile three more steps of each configuration by operator kind (`OP_PARTS`)')
    p.add_argument('--json', default=None, help='write the results here')
    # child-process arguments
    p.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--mode', default='eval', help=argparse.SUPPRESS)
    p.add_argument('--path', default='sdpa', help=argparse.SUPPRESS)
    p.add_argument('--ckpt', action='store_true', help=argparse.SUPPRESS)
    # (in a child process the same flag means: run this configuration under bf16 autocast)
    p.add_argument('--bf16', action='store_true', help='cpu: also time bf16 autocast rows of the first path (fast where the CPU has AMX; '
                   'not the reference arithmetic, and not counted in the fp32 shares of the GEMM rate)')
    p.add_argument('--batch', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--reps', type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument('--warmup', type=int, default=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child: return child(a)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == 'cuda': return main_cuda(a, dev)

    load0 = loadavg()
    gemm0 = gemm_rate(dev)
    from crossformer_seg.segmentor import build_segmentor
    macs, macs_by_part = count_macs(build_segmentor(a.config).eval(), torch.randn(a.eval_batch, 3, *a.size))
    rows = []
    configs = [Config(mode, pth) for mode in ('eval', 'train') for pth in a.paths]
    if not a.no_ckpt: configs += [Config('train', pth, ckpt=True) for pth in a.paths]
    if a.compile: configs += [Config('eval', pth, compiled=True) for pth in a.paths]   # inductor's C++ kernels; minutes to compile
    if a.bf16: configs += [Config(mode, a.paths[0], bf16=True) for mode in ('eval', 'train')]
    for mode, pth, ck, comp, bf in configs:
        batch = a.eval_batch if mode == 'eval' else a.train_batch
        reps = a.eval_reps if mode == 'eval' else a.train_reps
        res = [run_child(a, mode=mode, path=pth, ckpt=ck, batch=batch, reps=reps, size=a.size, compile=comp, bf16=bf,
                         warmup=2, profile=a.profile and k == 0) for k in range(a.repeats)]
        t = statistics.median(r['time_s'] for r in res)
        n_macs = macs * batch * (1 if mode == 'eval' else 3)
        ratios = [n_macs / x / g for r in res for x, g in zip(r['times_s'], r['gemm_rates'])]
        rows.append(dict(mode=mode, path=pth, grad_ckpt=ck, compiled=comp, bf16=bf, batch=batch, time_s=t,
                         times_s=[x for r in res for x in r['times_s']],
                         gemm_probe_rates=[x for r in res for x in r['gemm_rates']],
                         ratio_to_probe=statistics.median(ratios),
                         peak_rss_gib=statistics.median(r['peak_rss_gib'] for r in res), macs=n_macs,
                         **({'profile': res[0]['profile']} if 'profile' in res[0] else {})))
        print(f'  {mode:5s} {pth:8s} ckpt={ck!s:5s} compile={comp!s:5s} bf16={bf!s:5s} {t * 1e3:8.0f} ms  x probe GEMM {rows[-1]["ratio_to_probe"]:.2f}  '
              f'peak RSS {rows[-1]["peak_rss_gib"]:.2f} GiB  load {loadavg()[0]:.1f}', flush=True)
    gemm1 = gemm_rate(dev)
    load1 = loadavg()
    gemm = (gemm0 + gemm1) / 2
    for r in rows: r['macs_per_s'] = r['macs'] / r['time_s']; r['ratio_to_gemm'] = r['macs_per_s'] / gemm
    result = dict(config=a.config, size=list(a.size), threads=a.threads, device=str(dev), torch=torch.__version__, cpu=cpu_info(),
                  model_macs_eval_batch1=macs // a.eval_batch,
                  model_macs_by_part_eval_batch1={k: v // a.eval_batch for k, v in macs_by_part.items()}, gemm_macs_per_s_before=gemm0, gemm_macs_per_s_after=gemm1,
                  loadavg_before=load0, loadavg_after=load1, rows=rows)
    ci = result['cpu']
    print(f'\n{a.config} {a.size[0]}x{a.size[1]}, {a.threads} threads, torch {torch.__version__}, {ci["model"]} ({ci["capability"]}'
          + ''.join(f', {k}={v}' for k, v in ci['isa_caps'].items()) + '); '
          f'model {macs / a.eval_batch / 1e9:.2f} GMACs per image (original convention; train counts 3x)')
    print(f'fp32 GEMM 2048^3: {gemm0 / 1e9:.1f} GMAC/s before, {gemm1 / 1e9:.1f} after; '
          f'load average {load0[0]:.2f} before, {load1[0]:.2f} after')
    print('x GEMM: model MACs/s over the mean of the two whole-run GEMM rates; x probe: median over the timed steps of '
          'MACs/s over a GEMM probe taken right before and after that step')
    print(f'{"mode":6s}{"path":9s}{"ckpt":6s}{"comp":6s}{"bf16":6s}{"batch":>6s}{"median ms":>11s}{"GMAC/s":>9s}{"x GEMM":>8s}{"x probe":>9s}{"peak RSS GiB":>14s}')
    for r in rows:
        print(f'{r["mode"]:6s}{r["path"]:9s}{yn(r["grad_ckpt"]):6s}{yn(r["compiled"]):6s}{yn(r["bf16"]):6s}{r["batch"]:6d}{r["time_s"] * 1e3:11.0f}'
              f'{r["macs_per_s"] / 1e9:9.1f}{r["ratio_to_gemm"]:8.2f}{r["ratio_to_probe"]:9.2f}{r["peak_rss_gib"]:14.2f}')
    for r in rows:
        if 'profile' in r:
            pr = r['profile']
            print(f'profiled {r["mode"]} {r["path"]} ckpt={r["grad_ckpt"]}: {pr["wall_s"]:.2f} s; ' +
                  ', '.join(f'{k} {v:.2f}' for k, v in pr['parts_s'].items()) + ' s; other: ' +
                  ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in pr['top_other_s'].items()))
    if a.json:
        with open(a.json, 'w') as f: json.dump(result, f, indent=1)
    return result


def main_cuda(a, dev):
    "GPU: fp32 eager vs bf16 autocast (+ torch.compile) train throughput at `--train-batch`, and eval time."
    gemm = gemm_rate(dev, n=8192, dtype=torch.bfloat16)
    from crossformer_seg.segmentor import build_segmentor
    macs, _ = count_macs(build_segmentor(a.config).eval(), torch.randn(1, 3, *a.size))
    rows = []
    variants = [('fp32 eager', False, False), ('bf16 eager', True, False)] + ([('bf16 compile', True, True)] if a.compile else [])
    for name, bf16, comp in variants:
        for mode in ('eval', 'train'):
            batch = a.eval_batch if mode == 'eval' else a.train_batch
            r = run_child(a, mode=mode, path=a.paths[0], ckpt=False, batch=batch, reps=10, size=a.size, bf16=bf16,
                          compile=comp, warmup=3 if comp else 2)
            flops = 2 * macs * batch * (1 if mode == 'eval' else 3)
            rows.append(dict(variant=name, mode=mode, batch=batch, time_s=r['time_s'], images_per_s=batch / r['time_s'],
                             mfu=flops / r['time_s'] / (a.peak_tflops * 1e12), peak_cuda_gib=r.get('peak_cuda_gib')))
            print(f'{name:14s}{mode:6s} batch {batch:3d} {r["time_s"] * 1e3:8.1f} ms {batch / r["time_s"]:8.1f} img/s '
                  f'MFU {rows[-1]["mfu"]:.3f}', flush=True)
    base = next(r for r in rows if r['variant'] == 'fp32 eager' and r['mode'] == 'train')['images_per_s']
    for r in rows:
        if r['mode'] == 'train': print(f'{r["variant"]:14s} train speed-up over fp32 eager: {r["images_per_s"] / base:.2f}x')
    result = dict(config=a.config, device=torch.cuda.get_device_name(), bf16_gemm_macs_per_s=gemm, model_macs=macs, rows=rows)
    if a.json:
        with open(a.json, 'w') as f: json.dump(result, f, indent=1)
    return result


if __name__ == '__main__': main()
