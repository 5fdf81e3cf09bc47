"""The baseline backbones (Swin, PVT v1, ResNet V1c) through the same commands as CrossFormer: eval forward at odd sizes,
`crossformer-seg train` on the demo data, `crossformer-seg test`, a checkpoint round trip, and `--pretrained` with an
ImageNet file in each family's published layout. Small members of each family (`tiny_{fpn,upernet}_{swin,pvt,resnet}`)."""
import json, re
from pathlib import Path
import pytest
import torch
from crossformer_seg.core import run_command
from crossformer_seg.demo import make_demo_ade20k
from crossformer_seg.segmentor import build_segmentor
from crossformer_seg.checkpoint import save_checkpoint, load_checkpoint
from crossformer_seg import train, metrics

FAMILIES = ('swin', 'pvt', 'resnet')
CONFIGS = [f'tiny_{h}_{f}' for f in FAMILIES for h in ('fpn', 'upernet')]

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_ade20k(tmp_path_factory.mktemp('data') / 'demo', n_train=4, n_val=2)

@pytest.mark.parametrize('name', CONFIGS)
def test_eval_forward_at_odd_sizes(name):
    torch.manual_seed(0)
    m = build_segmentor(name).eval()
    for size in ((33, 47), (97, 65), (64, 64)):
        with torch.no_grad(): out = m(torch.randn(1, 3, *size))
        assert out.shape == (1, 150, *size) and torch.isfinite(out).all()

def _train(demo, work, name, iters=2, **extra):
    argv = ['--config', name, '--data', str(demo), '--work-dir', str(work), '--iters', str(iters), '--batch-size', '2',
            '--total-batch', '2', '--crop-size', '64', '64', '--eval-interval', str(iters), '--checkpoint-interval', str(iters),
            '--num-workers', '0', '--device', 'cpu', '--log-interval', '1']
    for k, v in extra.items(): argv += [f'--{k.replace("_", "-")}', str(v)]
    return train.main(argv)

@pytest.mark.parametrize('family', FAMILIES)
def test_train_test_and_round_trip(demo, tmp_path, capsys, family):
    "Two iterations through `crossformer-seg train`, `crossformer-seg test` on the result, and the checkpoint reloads equal."
    name = f'tiny_fpn_{family}'
    assert _train(demo, tmp_path / 'w', name) == 0
    final = tmp_path / 'w' / 'final.safetensors'
    assert final.is_file()
    out = tmp_path / 'eval.json'
    from crossformer_seg.cli import main
    assert main(['test', '--config', name, '--checkpoint', str(final), '--data', str(demo), '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    assert res['config'] == name and 0 <= res['mIoU'] <= 1
    m = build_segmentor(name)
    rep = load_checkpoint(m, final)
    assert rep.ok and rep.loaded == len(m.state_dict())
    m2 = build_segmentor(name)
    load_checkpoint(m2, save_checkpoint(m, tmp_path / 'again.safetensors'))
    x = torch.randn(1, 3, 45, 77)
    with torch.no_grad(): assert torch.equal(m.eval()(x), m2.eval()(x))

def _published(family, bb_sd):
    "A synthetic ImageNet checkpoint of the backbone in its family's published layout (plus its classifier)."
    sd = {k[len('net.model.'):]: torch.randn_like(v.float()).to(v.dtype) for k, v in bb_sd.items() if k.startswith('net.model.')}
    if family == 'swin':     # Microsoft's files: patch merging at the end of the stage before
        sd = {re.sub(r'^layers\.(\d+)\.downsample', lambda m: f'layers.{int(m[1]) - 1}.downsample', k): v for k, v in sd.items()}
        sd['head.weight'] = torch.zeros(1000, 256)
    elif family == 'resnet':  # mmcv's ResNetV1c: stem.0 ... stem.7
        sd = {re.sub(r'^bn1\.', 'stem.7.', re.sub(r'^conv1\.(\d)\.', r'stem.\1.', k)): v for k, v in sd.items()}
        sd['fc.weight'] = torch.zeros(1000, 256)
    else: sd.update(cls_token=torch.zeros(1, 1, 256), **{'head.weight': torch.zeros(1000, 256)})
    return sd

@pytest.mark.parametrize('family', FAMILIES)
def test_pretrained_in_published_layout(demo, tmp_path, capsys, family):
    "`--pretrained FILE` with the family's published ImageNet layout: every backbone tensor loaded, the classifier skipped, the report printed."
    name = f'tiny_upernet_{family}'
    bb = build_segmentor(name).backbone.state_dict()
    sd = _published(family, bb)
    torch.save({'model': sd}, tmp_path / 'imagenet.pth')
    m = build_segmentor(name)
    rep = load_checkpoint(m, tmp_path / 'imagenet.pth', strict=False)
    assert rep.ok and rep.target == 'model.backbone' and rep.loaded == len([k for k in bb if k.startswith('net.model.')])
    assert len(rep.skipped) >= 1 and not rep.unexpected
    w = {k: v for k, v in m.backbone.state_dict().items() if 'patch_embed' in k or 'conv1' in k}
    assert w and any(torch.equal(v.float(), sd[k[len('net.model.'):]].float()) for k, v in w.items() if k[len('net.model.'):] in sd)
    assert _train(demo, tmp_path / 'w', name, iters=1, pretrained=tmp_path / 'imagenet.pth') == 0
    assert 'pretrained: loaded' in capsys.readouterr().out
