"""ONNX deployment rows: onnxruntime latency of the exported FPN-S and UPerNet-S against PyTorch eager, in one run.

For each config (random weights, seed 0): `export.export_onnx` once, `export.check_onnx` at its four runs (argmax
agreement and largest logit difference per run), then the eval forward at 1x3x512x512 in fp32 with the same thread
count for both: `rounds` alternating rounds (eager, then onnxruntime, `reps` calls each, after a warm-up), and the
median seconds per call of each and their ratio (onnxruntime / eager, below 1: onnxruntime faster). A shared machine
moves both, alternation keeps the ratio fair; compare ratios, not seconds.

Usage: `python benchmarks/bench_onnx.py [--configs fpn_crossformer_s upernet_crossformer_s] [--threads 2]
[--rounds 9] [--reps 2] [--json benchmarks/bench_onnx_cpu.json]`
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import onnxruntime as ort
import torch
from crossformer_seg.export import export_onnx, check_onnx
from crossformer_seg.segmentor import build_segmentor
sys.path.insert(0, str(Path(__file__).parent))
from bench_model import cpu_info, loadavg   # the same record of the machine as the model benchmark

def timed(f, reps):
    "Median seconds of `reps` calls of `f`."
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def bench_config(name, threads, rounds, reps, size=(512, 512)):
    torch.manual_seed(0)
    model = build_segmentor(name).eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f'{name}.onnx'
        t0 = time.time(); export_onnx(model, path); export_s = time.time() - t0
        check = check_onnx(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()
    def eager():
        with torch.inference_mode(): return model(x)
    def onnx(): return sess.run(['logits'], {'image': xn})[0]
    eager(); onnx()   # warm-up: caches, oneDNN primitives, onnxruntime's allocations
    t_eager, t_ort = [], []
    for _ in range(rounds):
        t_eager.append(timed(eager, reps)); t_ort.append(timed(onnx, reps))
    e, o = statistics.median(t_eager), statistics.median(t_ort)
    return dict(config=name, size=list(size), export_s=round(export_s, 1),
                check=[dict(batch=r['batch'], size=list(r['size']), output=r['output'], argmax_agree=r['argmax_agree'],
                            max_abs_diff=r['max_abs_diff'], ok=r['ok']) for r in check],
                eager_s=e, onnxruntime_s=o, ratio_onnxruntime_to_eager=o / e, eager_rounds_s=t_eager, onnxruntime_rounds_s=t_ort)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--configs', nargs='+', default=['fpn_crossformer_s', 'upernet_crossformer_s'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=9)
    p.add_argument('--reps', type=int, default=2)
    p.add_argument('--json', help='write the run to this JSON file')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = dict(torch=torch.__version__, onnxruntime=ort.__version__, threads=a.threads, dtype='float32',
               cpu=cpu_info(), loadavg_before=list(loadavg()), rows=[])
    for name in a.configs:
        r = bench_config(name, a.threads, a.rounds, a.reps)
        out['rows'].append(r)
        worst = min(c['argmax_agree'] for c in r['check']), max(c['max_abs_diff'] for c in r['check'])
        print(f"{name}: export {r['export_s']:.0f} s; check: argmax >= {worst[0]:.4%}, max |diff| {worst[1]:.1e}; "
              f"eager {r['eager_s'] * 1e3:.0f} ms, onnxruntime {r['onnxruntime_s'] * 1e3:.0f} ms, "
              f"ratio {r['ratio_onnxruntime_to_eager']:.2f}", flush=True)
    out['loadavg_after'] = list(loadavg())
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1) + '\n')

if __name__ == '__main__': main()
