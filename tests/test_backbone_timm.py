"""timm conformance of the backbone that needs more than one process: `features_only` models train under DDP as
they are (no `find_unused_parameters`), because they hold no parameter that the forward pass leaves unused."""
import tempfile
from pathlib import Path
import pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp
import timm
import crossformer_seg.backbone  # noqa: F401  (registers crossformer_* with timm)

S_SEGMENTATION_BACKBONE_PARAMS = 29_886_858   # counted on the original S segmentation backbone (tests/data/reference)

def test_features_only_is_the_segmentation_backbone():
    fm = timm.create_model('crossformer_s', features_only=True)
    assert sum(p.numel() for p in fm.parameters()) == S_SEGMENTATION_BACKBONE_PARAMS
    assert not any(n.startswith(('model.norm.', 'model.head.')) for n, _ in fm.named_parameters())

def _ddp_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)   # same initial weights on both ranks (DDP also broadcasts rank 0's)
        model = timm.create_model('crossformer_s', features_only=True)
        ddp = torch.nn.parallel.DistributedDataParallel(model)   # find_unused_parameters=False, the default
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)                  # a different batch on each rank
        for _ in range(2):   # DDP reports parameters without gradient when the next iteration starts
            loss = sum(f.square().mean() for f in ddp(torch.randn(1, 3, 64, 96, generator=g)))
            opt.zero_grad(); loss.backward(); opt.step()
        torch.save({'no_grad': [n for n, p in model.named_parameters() if p.grad is None],
                    'weights': {n: p.detach().clone() for n, p in model.named_parameters()}}, Path(out_dir) / f'{rank}.pt')
    finally: dist.destroy_process_group()

def test_ddp_step_without_find_unused_parameters():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, str(Path(d) / 'init'), d), nprocs=2, join=True)
        r0, r1 = (torch.load(Path(d) / f'{r}.pt') for r in (0, 1))
    assert r0['no_grad'] == [] and r1['no_grad'] == []
    # gradients were averaged over both ranks: the weights stay identical after two steps on different batches
    for n, w in r0['weights'].items(): torch.testing.assert_close(w, r1['weights'][n], rtol=0, atol=0, msg=n)
