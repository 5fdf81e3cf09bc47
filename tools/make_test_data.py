"""Build the compact copy of `shared/reference/tiny` that ships in `tests/data/tiny/`.

A user's clone has no `shared/`, so the tests read this subset: the fp16 weights and inputs unchanged,
and for every large output tensor 4096 seeded-random elements (float32, exact) plus its float64 sum
and absolute sum. Small outputs (sample values, class sums, sample indices) are copied whole.
Run from the repository root: `python tools/make_test_data.py ../shared/reference/tiny`.
"""
import sys, shutil, json
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

N_SAMPLES = 4096

def compact(t, seed):
    g = torch.Generator().manual_seed(seed)
    flat = t.reshape(-1)
    idx = torch.randint(0, flat.numel(), (min(N_SAMPLES, flat.numel()),), generator=g)
    return {'idx': idx, 'val': flat[idx].clone(), 'sum': t.double().sum().reshape(1), 'abssum': t.double().abs().sum().reshape(1),
            'shape': torch.tensor(t.shape)}

def main(src, dst=Path('tests/data/tiny')):
    src = Path(src); dst.mkdir(parents=True, exist_ok=True)
    for f in ['weights_backbone', 'weights_fpn_heads', 'weights_upernet_heads', 'inputs']:
        shutil.copy(src/f'{f}.safetensors', dst/f'{f}.safetensors')
    shutil.copy(src/'README.md', dst/'REFERENCE_README.md')
    for f in sorted(src.glob('outputs_*.safetensors')):
        out = {}
        for i, (k, v) in enumerate(sorted(load_file(f).items())):
            if v.numel() > 64 * 150 * 2 and v.dtype == torch.float32:
                for sk, sv in compact(v, i).items(): out[f'{k}::{sk}'] = sv
            else: out[k] = v
        save_file(out, dst/f.name)
    (dst/'ORIGIN.md').write_text(
        "Copied from `shared/reference/tiny` (measured on the official CrossFormer v1 code, commit 4fbf750, with\n"
        "mmseg 0.12.0; see REFERENCE_README.md) by `tools/make_test_data.py`. Weights and inputs are the original\n"
        "fp16 files. Large output tensors `K` are stored as `K::idx` (4096 seeded flat indices), `K::val` (the exact\n"
        "float32 values there), `K::sum`/`K::abssum` (float64) and `K::shape`; small outputs are copied whole.\n")

if __name__ == '__main__': main(sys.argv[1])
