"""CrossFormer++ against the official code's numbers (`tests/data/crossformerpp`, made by its `make_reference.py` from the
official `models/crossformer_backbone_seg.py`), its parameter counts and checkpoint layouts, and the two ++ segmentors
through the same chain as v1: odd sizes, `crossformer-seg train` on the demo data, `test`, `predict`, `complexity`, `export`."""
import importlib.util, json
from pathlib import Path
import pytest
import torch, timm
from safetensors.torch import load_file
from crossformer_seg.backbone import CrossFormer, crossformer_backbone, progressive_group_sizes
from crossformer_seg.segmentor import build_segmentor, SEG_CONFIGS
from crossformer_seg.checkpoint import load_checkpoint, save_checkpoint
from crossformer_seg.demo import make_demo_ade20k
from crossformer_seg.cli import main as cli
from crossformer_seg import train

REF = Path(__file__).parent / 'data' / 'crossformerpp'
META = json.loads((REF / 'meta.json').read_text())
PP_CONFIGS = ('fpn_crossformerpp_s', 'upernet_crossformerpp_s')
TINY_PP = ('tiny_fpn_pp', 'tiny_upernet_pp')

def _reference_module():
    "The reference script, for its weight and input rules (importing it loads no official code)."
    spec = importlib.util.spec_from_file_location('cfpp_reference', REF / 'make_reference.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod
MR = _reference_module()
STORED = load_file(REF / 'reference.safetensors')

def _our_kwargs(official):
    "The official constructor arguments as ours: the ++ grouping; `img_size` only feeds `group_resolution`."
    kw = {k: v for k, v in official.items() if k not in ('in_chans', 'num_classes', 'use_checkpoint', 'img_size', 'patch_norm')}
    img = official.get('img_size', 224)
    return dict(kw, lsda_layout='pp', group_resolution=(img[0] if isinstance(img, list) else img) // 4)

def _official_weights(case):
    "The case's random weights under the official names (the reference rule), checked against the official key list."
    shapes = {k: torch.Size(s) for k, s in META['cases'][case]['state_dict']}
    return MR.random_state_dict(shapes)

def _compare(outs, sizes_meta, label): MR.check_outputs(outs, sizes_meta, STORED, label)

@pytest.mark.parametrize('config', PP_CONFIGS)
@pytest.mark.parametrize('use_sdpa', (True, False))
def test_segmentor_backbones_equal_official(config, use_sdpa):
    "Our ++ segmentors' backbones, with the official S2 weights (strict), give the official four stage maps at 224 and 512."
    sd = _official_weights('s2_seg')
    m = build_segmentor(config).backbone.eval().set_attention_path(use_sdpa)
    m.load_state_dict(sd, strict=True)   # the official segmentation backbone's names and shapes, nothing more or less
    assert sum(p.numel() for p in m.parameters()) == META['param_counts']['s2_seg']
    for hw, sm in META['cases']['s2_seg']['sizes'].items():
        x = MR.make_input(*sm['input']['shape'][2:])
        assert abs(x.double().sum().item() - sm['input']['sum_float64']) < 1e-6 * sm['input']['abs_sum_float64']
        with torch.no_grad(): _compare(m(x), sm, f'{config} {hw}')

@pytest.mark.parametrize('case', [c for c in META['cases'] if c != 's2_seg'])
def test_options_equal_official(case):
    "The ++ options one by one on a small trunk: ACL, the grouping (non-square fallback included), adaptive interval, every group_type."
    info = META['cases'][case]
    m = CrossFormer(**_our_kwargs(info['kwargs'])).eval()
    m.load_state_dict(_official_weights(case), strict=True)
    assert m.block_group_sizes == info['block_group_size']
    for hw, sm in info['sizes'].items():
        with torch.no_grad(): _compare(m(MR.make_input(*sm['input']['shape'][2:])), sm, f'{case} {hw}')

def test_kernels_off_equal_official():
    "With the CPU fast paths off (the plain PyTorch that CUDA runs) the ++ trunk still gives the official maps."
    from crossformer_seg import kernels
    info = META['cases']['pp_tiny_adaptive']
    m = CrossFormer(**_our_kwargs(info['kwargs'])).eval()
    m.load_state_dict(_official_weights('pp_tiny_adaptive'), strict=True)
    with kernels.fast_kernels(False), torch.no_grad():
        for hw, sm in info['sizes'].items(): _compare(m(MR.make_input(*sm['input']['shape'][2:])), sm, f'kernels off {hw}')

@pytest.mark.parametrize('use_sdpa', (True, False))
def test_training_step_fast_paths(use_sdpa):
    "One training step of the ++ trunk (ACL, padded ++ groups, stochastic depth) with the fast paths on and off: equal gradients."
    from crossformer_seg import kernels
    x = torch.randn(2, 3, 66, 98, generator=torch.Generator().manual_seed(0))
    sd = _official_weights('pp_tiny')
    grads = []
    for fast in (True, False):
        m = CrossFormer(**dict(_our_kwargs(META['cases']['pp_tiny']['kwargs']), drop_path_rate=0.2, use_sdpa=use_sdpa)).train()
        m.load_state_dict(sd, strict=True)
        with kernels.fast_kernels(fast):
            torch.manual_seed(0); outs = m(x)
            sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and any('ex_conv' in k for k in grads[0])
    scale = max(g.abs().max() for g in grads[1].values())
    for k, g in grads[1].items(): torch.testing.assert_close(grads[0][k], g, atol=1e-5 * scale, rtol=0, msg=k)

def test_stateless_where_the_official_code_is_not():
    "The official block keeps its LDA -> SDA fallback after a small input; ours gives the fresh-model output whatever ran before."
    info = META['cases']['pp_tiny']
    m = CrossFormer(**_our_kwargs(info['kwargs'])).eval()
    m.load_state_dict(_official_weights('pp_tiny'), strict=True)
    with torch.no_grad():
        m(MR.make_input(64, 96))
        _compare(m(MR.make_input(224, 224)), info['sizes']['224x224'], 'pp_tiny 224x224 after 64x96')

@pytest.mark.parametrize('v', 'SBLH')
def test_classifier_parameter_counts(v):
    "timm's crossformerpp_s/b/l/h have the official trunk's parameters plus the final norm and head (23.3/52.0/92.0/96.0 M)."
    m = timm.create_model(f'crossformerpp_{v.lower()}')
    counts = META['param_counts']['classification_224'][v]
    assert sum(p.numel() for p in m.parameters()) == counts['with_classifier']
    assert sum(p.numel() for n, p in m.named_parameters() if not n.startswith(('norm.', 'head.'))) == counts['trunk']
    kw = counts['kwargs']
    assert (m.embed_dim, [len(l.blocks) for l in m.layers], [l.blocks[0].attn.num_heads for l in m.layers]) == \
           (kw['embed_dim'], kw['depths'], kw['num_heads'])
    assert m.block_group_sizes == progressive_group_sizes(kw['group_size'], kw['depths'], 56, 'constant')
    assert [l.blocks[0].interval for l in m.layers] == kw['crs_interval']

def _classification_file(tmp_path, v='s'):
    "A synthetic ImageNet checkpoint in the released layout: {'model': trunk + norm + head} (official trunk names)."
    m = timm.create_model(f'crossformerpp_{v}')
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(t.shape, generator=g) for k, t in m.state_dict().items()}
    p = tmp_path / f'crossformerpp-{v}.pth'
    torch.save({'model': sd, 'epoch': 300}, p)
    return p, sd

def test_released_classification_layout_loads(tmp_path):
    "The released `.pth` layout: timm loads it whole; `load_checkpoint` puts its trunk into the ++ segmentors and reports the rest."
    path, sd = _classification_file(tmp_path)
    m = timm.create_model('crossformerpp_s', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(m.state_dict()['layers.2.blocks.2.ex_conv.weight'], sd['layers.2.blocks.2.ex_conv.weight'])
    for config in PP_CONFIGS:
        seg = build_segmentor(config)
        rep = load_checkpoint(seg, path, strict=False)
        assert rep.ok and rep.loaded == len(seg.backbone.state_dict()), rep
        assert torch.equal(seg.backbone.state_dict()['layers.2.blocks.5.ex_ln.weight'], sd['layers.2.blocks.5.ex_ln.weight'])

def test_official_segmentation_checkpoint_loads_strict(tmp_path):
    "An MMSegmentation-layout file of the official ++ UPerNet (`state_dict` with `backbone.` = the official trunk's names) loads strictly."
    seg = build_segmentor('upernet_crossformerpp_s')
    heads = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in seg.state_dict().items() if not k.startswith('backbone.')}
    sd = {**{f'backbone.{k}': v for k, v in _official_weights('s2_seg').items()}, **heads}
    torch.save({'meta': {'mmseg_version': '0.29.1'}, 'state_dict': sd}, tmp_path / 'upernet_crossformerpp_s.pth')
    rep = load_checkpoint(seg, tmp_path / 'upernet_crossformerpp_s.pth')   # strict by default
    assert rep.ok and rep.loaded == len(sd) and not rep.skipped
    assert torch.equal(seg.backbone.layers[2].blocks[14].ex_conv.weight, sd['backbone.layers.2.blocks.14.ex_conv.weight'])

@pytest.mark.parametrize('config', PP_CONFIGS + TINY_PP)
def test_eval_at_odd_sizes(config):
    torch.manual_seed(0)
    m = build_segmentor(config).eval()
    for size in ((33, 47), (97, 65), (161, 389)):
        with torch.no_grad(): out = m(torch.randn(1, 3, *size))
        assert out.shape == (1, 150, *size) and torch.isfinite(out).all()

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_ade20k(tmp_path_factory.mktemp('data') / 'demo', n_train=4, n_val=2)

def _train(demo, work, name, iters=2):
    return train.main(['--config', name, '--data', str(demo), '--work-dir', str(work), '--iters', str(iters), '--batch-size', '2',
                       '--total-batch', '2', '--crop-size', '64', '64', '--eval-interval', str(iters),
                       '--checkpoint-interval', str(iters), '--num-workers', '0', '--device', 'cpu', '--log-interval', '1'])

@pytest.mark.parametrize('config', PP_CONFIGS)
def test_train_test_predict(demo, tmp_path, config):
    "Two iterations of `crossformer-seg train` on the demo data, then `test` and `predict` on the result; the checkpoint reloads equal."
    assert _train(demo, tmp_path / 'w', config) == 0
    final = tmp_path / 'w' / 'final.safetensors'
    out = tmp_path / 'eval.json'
    assert cli(['test', '--config', config, '--checkpoint', str(final), '--data', str(demo), '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    assert res['config'] == config and 0 <= res['mIoU'] <= 1
    img = next((demo / 'images' / 'validation').iterdir())
    assert cli(['predict', '--checkpoint', str(final), '--out', str(tmp_path / 'pred'), str(img)]) == 0
    assert any((tmp_path / 'pred').rglob('*.png'))
    m, m2 = build_segmentor(config), build_segmentor(config)
    assert load_checkpoint(m, final).ok
    load_checkpoint(m2, save_checkpoint(m, tmp_path / 'again.safetensors'))
    x = torch.randn(1, 3, 45, 77)
    with torch.no_grad(): assert torch.equal(m.eval()(x), m2.eval()(x))

@pytest.mark.parametrize('config', PP_CONFIGS)
def test_complexity_command(config, capsys):
    "`crossformer-seg complexity` counts the ++ configs as the cache (and the complexity notebook's table) has them."
    from crossformer_seg.complexity import read_complexity_cache, paper_round
    rec = read_complexity_cache(Path(__file__).parents[1] / 'nbs' / 'complexity_cache.json')[config]
    assert cli(['complexity', '--config', config]) == 0
    gflops = rec['flops']['3x1024x1024']['original']['flops'] / 1e9
    assert f"Params {paper_round(rec['params'] / 1e6)}M  FLOPs {paper_round(gflops)}G" in capsys.readouterr().out

@pytest.mark.parametrize('config', TINY_PP + tuple(pytest.param(c, marks=pytest.mark.slow) for c in PP_CONFIGS))
def test_export_any_size(tmp_path, config):
    "ONNX with free B, H, W: every output equals PyTorch at the four check sizes (both heads; full size: slow, and benchmarks/bench_onnx.py)."
    from crossformer_seg.export import export_onnx, check_onnx, describe_check
    torch.manual_seed(0)
    m = build_segmentor(config).eval()
    aux = 'auxiliary_head' in SEG_CONFIGS[config]
    export_onnx(m, tmp_path / 'm.onnx', aux=aux)
    res = check_onnx(m, tmp_path / 'm.onnx')
    assert len(res) == 4 * (1 + aux) and all(r['ok'] for r in res), [describe_check(r) for r in res]
