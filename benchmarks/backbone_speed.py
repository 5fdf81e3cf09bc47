"""Backbone speed, as ratios measured in one run (no absolute claims, no assertions).

Times the CrossFormer segmentation backbone (fused `scaled_dot_product_attention` path and the explicit softmax
path) against timm's Swin-T and ResNet-50 feature extractors at the same input, on the same device, and prints
time ratios. Usage: `python benchmarks/backbone_speed.py [--variant s] [--size 512 512] [--batch 1] [--device cpu]`.
"""
import argparse, time
import torch, timm
from crossformer_seg.backbone import crossformer_backbone

def bench(model, x, reps, warmup=2):
    "Median seconds per forward of `model` on `x` (no grad)."
    with torch.inference_mode():
        for _ in range(warmup): model(x)
        ts = []
        for _ in range(reps):
            if x.is_cuda: torch.cuda.synchronize()
            t0 = time.perf_counter(); model(x)
            if x.is_cuda: torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--variant', default='s', choices='tsbl')
    p.add_argument('--size', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args()
    dev = torch.device(a.device)
    x = torch.randn(a.batch, 3, *a.size, device=dev)
    models = {
        f'crossformer_{a.variant} (sdpa)': crossformer_backbone(a.variant, use_sdpa=True),
        f'crossformer_{a.variant} (explicit)': crossformer_backbone(a.variant, use_sdpa=False),
        'swin_tiny (timm)': timm.create_model('swin_tiny_patch4_window7_224', features_only=True, img_size=tuple(a.size)),
        'resnet50 (timm)': timm.create_model('resnet50', features_only=True),
    }
    times = {k: bench(m.eval().to(dev), x, a.reps) for k, m in models.items()}
    base = times['resnet50 (timm)']
    print(f'device {dev}, input {a.batch}x3x{a.size[0]}x{a.size[1]}, median of {a.reps} forwards, threads {torch.get_num_threads()}')
    for k, t in times.items():
        print(f'{k:28s} {t * 1e3:9.1f} ms   {t / base:5.2f}x resnet50   {t / times["swin_tiny (timm)"]:5.2f}x swin_tiny')
    k_s, k_e = f'crossformer_{a.variant} (sdpa)', f'crossformer_{a.variant} (explicit)'
    print(f'explicit / sdpa attention path: {times[k_e] / times[k_s]:.2f}')

if __name__ == '__main__': main()
