"""timm conformance of the backbone. The checks of timm's own model tests (its `tests/test_models.py`: forward,
backward, default_cfgs, forward_features, forward_intermediates and its features variant, FX forward/backward,
TorchScript) restated for `crossformer_t`, `crossformer_s` and `crossformerpp_s` at the sizes timm's tests use; and, in more than one
process, that `features_only` models train under DDP as they are (no `find_unused_parameters`), because they hold no
parameter that the forward pass leaves unused."""
import math, tempfile
from pathlib import Path
import pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp
import timm
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_notrace_modules, get_notrace_functions
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names, NodePathTracer
import crossformer_seg.backbone  # noqa: F401  (registers crossformer_* with timm)

MODELS = ['crossformer_t', 'crossformer_s', 'crossformerpp_s']   # v1, and CrossFormer++ (ACL, the ++ grouping, G 4-4-14-7)
FWD, BWD, FEAT, FX = 224, 128, 96, 128   # input sizes of timm's tests (their targets, capped by the 224 default)
FX_KW = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)

@pytest.mark.parametrize('name', MODELS)
def test_forward_and_grad_checkpointing(name):
    m = timm.create_model(name).eval()
    x = torch.randn(1, 3, FWD, FWD)
    with torch.no_grad(): out = m(x)
    assert out.shape == (1, 1000) and not out.isnan().any()
    m.set_grad_checkpointing()
    torch.testing.assert_close(m(x), out, rtol=1e-4, atol=1e-5)

@pytest.mark.parametrize('name', MODELS)
def test_backward(name):
    m = timm.create_model(name, num_classes=42).train()
    out = m(torch.randn(2, 3, BWD, BWD))
    out.mean().backward()
    assert out.shape[-1] == 42 and all(p.grad is not None for p in m.parameters())

@pytest.mark.parametrize('name', MODELS)
def test_default_cfgs(name):
    m = timm.create_model(name).eval()
    assert m.num_classes >= 0 and m.num_features > 0 and m.head_hidden_size > 0
    cfg, sd = m.default_cfg, m.state_dict()
    spatial, feat = get_spatial_dim(m.output_fmt), get_channel_dim(m.output_fmt)
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        f = m.forward_features(x)
        pre = m.forward_head(f, pre_logits=True)
        assert tuple(f.shape[i] for i in spatial) == cfg['pool_size'] and f.shape[feat] == m.num_features
        assert pre.shape[1] == m.head_hidden_size
        m.reset_classifier(0)
        assert m.num_classes == 0 and m(x).shape == pre.shape
        m.reset_classifier(0, '')
        out = m(x)
        assert out.ndim == 4 and tuple(out.shape[i] for i in spatial) == cfg['pool_size']
        out = timm.create_model(name, num_classes=0, global_pool='').eval()(x)
        assert out.ndim == 4 and tuple(out.shape[i] for i in spatial) == cfg['pool_size']
    assert cfg['classifier'] + '.weight' in sd and cfg['first_conv'] + '.weight' in sd

def _check_maps(maps, channels, reductions, size, fmt='NCHW'):
    assert len(maps) == len(channels)
    for c, r, o in zip(channels, reductions, maps):
        assert o.shape[get_channel_dim(fmt)] == c and o.shape[0] == 1 and not o.isnan().any()
        assert all(o.shape[a] <= math.ceil(size / r) + 1 for a in get_spatial_dim(fmt))

@pytest.mark.parametrize('feature_cls', [None, 'getter'])
@pytest.mark.parametrize('name', MODELS)
def test_forward_features(name, feature_cls):
    m = timm.create_model(name, features_only=True, **({'feature_cls': feature_cls} if feature_cls else {})).eval()
    with torch.no_grad(): maps = m(torch.randn(1, 3, FEAT, FEAT))
    assert len(m.feature_info.channels()) >= 3
    _check_maps(maps, m.feature_info.channels(), m.feature_info.reduction(), FEAT, getattr(m, 'output_fmt', 'NCHW'))

@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    m = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(m.feature_info, len(m.feature_info))
    x = torch.randn(1, 3, FEAT, FEAT)
    out, maps = m.forward_intermediates(x, output_fmt='NCHW')
    _check_maps(maps, info.channels(), info.reduction(), FEAT)
    assert torch.allclose(out, m.forward_features(x))
    m.set_grad_checkpointing()
    assert torch.allclose(out, m.forward_intermediates(x, output_fmt='NCHW')[0], rtol=1e-4, atol=1e-5)

def _fx_model(m, train=False):
    "timm's tests' FX feature extractor returning the model's output (in train mode: the nodes feeding the output)."
    train_nodes, eval_nodes = get_graph_node_names(m, tracer_kwargs=FX_KW)
    train_return = [train_nodes[-1]]
    if train:
        nodes = list(reversed(NodePathTracer(**FX_KW).trace(m).nodes))
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes]
    return create_feature_extractor(m, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=FX_KW)

@pytest.mark.parametrize('name', MODELS)
def test_forward_fx(name):
    m = timm.create_model(name).eval()
    with torch.inference_mode():
        x = torch.randn(1, 3, FX, FX)
        out = m(x)
        fx_out = torch.cat(tuple(_fx_model(m)(x).values()))
    assert torch.all(fx_out == out)

@pytest.mark.parametrize('name', MODELS)
def test_backward_fx(name):
    m = timm.create_model(name, num_classes=42).train()
    n_params = sum(p.numel() for p in m.parameters())
    fx = _fx_model(m, train=True)
    out = torch.cat(tuple(fx(torch.randn(2, 3, FX, FX)).values()))
    out.mean().backward()
    assert out.shape[-1] == 42 and sum(p.grad.numel() for p in fx.parameters() if p.grad is not None) == n_params

@pytest.mark.parametrize('name', MODELS)
def test_torchscript_raises_the_stated_error(name):
    with timm.layers.set_layer_config(scriptable=True): m = timm.create_model(name).eval()
    with pytest.raises(RuntimeError, match='CrossFormer cannot be compiled by TorchScript'): torch.jit.script(m)
    fm = timm.create_model(name, features_only=True)
    with pytest.raises(RuntimeError, match='CrossFormer cannot be compiled by TorchScript'): torch.jit.script(fm)

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
