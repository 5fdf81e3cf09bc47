"""Your own data: a folder dataset of image/mask pairs trains, tests and predicts through the CLI with its own class names and
colours; fine-tuning from a 150-class checkpoint re-initialises exactly the classifiers; colour masks equal index masks; the
mask checks' messages."""
import json, shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossformer_seg.cli import main
from crossformer_seg.checkpoint import save_checkpoint, checkpoint_metadata
from crossformer_seg.data import ADE20K_PALETTE, folder_dls, read_mask
from crossformer_seg.inference import load_pretrained
from crossformer_seg.segmentor import build_segmentor

NAMES = ('sky', 'tree', 'road')
COLOURS = ((70, 130, 230), (30, 140, 40), (200, 200, 60))
CLASSIFIERS = ['decode_head.conv_seg.weight', 'decode_head.conv_seg.bias', 'auxiliary_head.conv_seg.weight', 'auxiliary_head.conv_seg.bias']
TRAIN = ['train', '--config', 'tiny_upernet', '--iters', '2', '--batch-size', '2', '--total-batch', '2', '--crop-size', '64', '64',
         '--img-scale', '256', '64', '--num-workers', '0', '--device', 'cpu', '--log-interval', '1']


def make_folder(root, colour_masks=False, n_train=4, n_val=2, size=(64, 80), seed=0, classes_txt=True, from_one=False):
    "A 3-class folder dataset: sky over trees over road in bands at random heights, images in the class colours plus noise."
    rng, root = np.random.default_rng(seed), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if classes_txt: (root/'classes.txt').write_text(''.join(f'{n} {r} {g} {b}\n' for n, (r, g, b) in zip(NAMES, COLOURS)))
    pal = np.asarray(COLOURS, np.uint8)
    for split, n in (('train', n_train), ('val', n_val)):
        (root/'images'/split).mkdir(parents=True, exist_ok=True); (root/'masks'/split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size
            a, b = sorted(rng.integers(h // 5, 4 * h // 5, 2)); b = max(b, a + 4)
            m = np.zeros((h, w), np.uint8); m[a:b] = 1; m[b:] = 2
            img = np.clip(pal[m].astype(int) + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root/'images'/split/f'{split}_{i}.jpg', quality=95)
            Image.fromarray(pal[m] if colour_masks else m + from_one).save(root/'masks'/split/f'{split}_{i}.png')
    return root


def cli(capsys, *argv):
    "`crossformer-seg ARGV` in-process: (exit code, stdout, stderr)."
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope='module')
def own(tmp_path_factory): return make_folder(tmp_path_factory.mktemp('own')/'data')

@pytest.fixture(scope='module')
def trained(own, tmp_path_factory):
    "A 2-iteration tiny_upernet run on the folder dataset, through the CLI."
    work = tmp_path_factory.mktemp('run')/'run'
    assert main([*TRAIN, '--data', str(own), '--work-dir', str(work)]) == 0
    return work


def test_train_writes_self_describing_checkpoints(trained):
    run = json.loads((trained/'run.json').read_text())
    assert run['num_classes'] == 3 and run['dataset']['classes'] == list(NAMES) and run['dataset']['layout'] == 'folder'
    for f in ('final.safetensors', 'best.safetensors', 'iter_2/model.safetensors'):
        md = checkpoint_metadata(trained/f)
        assert md['classes'] == list(NAMES) and md['palette'] == [list(c) for c in COLOURS], f
        assert md['config']['num_classes'] == 3 and md['config']['decode_head']['type'] == 'UPerHead' and md['reduce_zero_label'] is False
    m = load_pretrained(trained/'final.safetensors')
    assert (m.classes, m.palette, m.num_classes, m.training) == (NAMES, COLOURS, 3, False)


def test_test_command_names_the_classes(capsys, own, trained, tmp_path):
    rc, out, err = cli(capsys, 'test', '--checkpoint', trained/'final.safetensors', '--data', own, '--out', tmp_path/'eval.json',
                       '--img-scale', 256, 64)
    assert rc == 0, err
    rows = [l.split('|')[1].strip() for l in out.splitlines() if l.startswith('|') and not set(l) <= set('|-: ')]
    assert rows[:4] == ['Class', *NAMES], out    # the per-class table, in the dataset's names
    js = json.loads((tmp_path/'eval.json').read_text())
    assert [r['class'] for r in js['per_class']] == list(NAMES) and js['images'] == 2


def test_predict_with_only_the_checkpoint_draws_in_the_class_colours(capsys, own, trained, tmp_path):
    rc, out, err = cli(capsys, 'predict', '--checkpoint', trained/'final.safetensors', own/'images'/'val', '--out', tmp_path/'out')
    assert rc == 0, err
    model = load_pretrained(trained/'final.safetensors')
    from crossformer_seg.inference import segment_image
    for stem in ('val_0', 'val_1'):
        lab = Image.open(tmp_path/'out'/f'{stem}.png')
        assert lab.mode == 'P' and lab.getpalette()[:9] == [c for rgb in COLOURS for c in rgb]
        rgb = np.asarray(lab.convert('RGB')).reshape(-1, 3)
        assert {tuple(c) for c in np.unique(rgb, axis=0).tolist()} <= set(COLOURS)
        img = Image.open(own/'images'/'val'/f'{stem}.jpg').convert('RGB')
        pred = segment_image(model, img, img_scale=(2048, 512))
        assert np.array_equal(np.asarray(lab), pred)
        # the overlay's right half is the image blended half-and-half with the class colours (JPEG: within a few levels)
        ov = np.asarray(Image.open(tmp_path/'out'/f'{stem}_overlay.jpg'), np.float32)
        w = img.size[0]
        def blend(colours): return 0.5 * np.asarray(img, np.float32) + 0.5 * np.asarray(colours, np.float32)[pred]
        ours, ade = (np.abs(ov[:, w:] - blend(c)).mean() for c in (COLOURS, ADE20K_PALETTE[:3]))
        assert ours < 8 and ours < ade / 3, (ours, ade)


def test_finetune_from_150_classes(capsys, own, tmp_path):
    torch.manual_seed(1)
    ade = save_checkpoint(build_segmentor('tiny_upernet'), tmp_path/'ade150.safetensors', {'config': 'tiny_upernet'})
    data = shutil.copytree(own, tmp_path/'noclasses'); (data/'classes.txt').unlink()   # and the names from --classes
    rc, out, err = cli(capsys, *TRAIN, '--data', data, '--classes', ','.join(NAMES), '--work-dir', tmp_path/'ft', '--pretrained', ade)
    assert rc == 0, err
    line = next(l for l in out.splitlines() if l.startswith('pretrained: '))
    assert 're-initialised 4 (another shape in the file): ' in line and 'problems' not in line, line
    assert sorted(line.split('re-initialised 4 (another shape in the file): ')[1].split(', ')) == sorted(CLASSIFIERS), line
    final = load_pretrained(tmp_path/'ft'/'final.safetensors')
    assert final.classes == NAMES and final.num_classes == 3
    from safetensors.torch import load_file
    sd = load_file(str(ade))   # the backbone came from the 150-class file (then trained 2 iterations: close, not equal)
    assert final.state_dict()['backbone.patch_embed.projs.0.weight'].shape == sd['backbone.patch_embed.projs.0.weight'].shape


def test_colour_masks_give_the_same_batches(own, tmp_path):
    rgb = make_folder(tmp_path/'rgb', colour_masks=True)
    assert Image.open(rgb/'masks'/'train'/'train_0.png').mode == 'RGB'
    kw = dict(bs=2, crop_size=(64, 64), img_scale=(256, 64), seed=3, device='cpu')
    a, b = folder_dls(own, **kw), folder_dls(rgb, **kw)
    for dl_a, dl_b in ((a.train, b.train), (a.valid, b.valid)):
        (xa, ya), (xb, yb) = dl_a.one_batch(), dl_b.one_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert set(a.train.one_batch()[1].unique().tolist()) <= {0, 1, 2, 255}


def test_reduce_zero_label_gives_the_same_batches(own, tmp_path):
    "Masks numbering the classes 1..3 with --reduce-zero-label read as the same dataset with 0..2."
    plus = make_folder(tmp_path/'plus', from_one=True)
    kw = dict(bs=2, crop_size=(64, 64), img_scale=(256, 64), seed=3, device='cpu')
    a, b = folder_dls(own, **kw), folder_dls(plus, reduce_zero_label=True, **kw)
    for dl_a, dl_b in ((a.train, b.train), (a.valid, b.valid)):
        (xa, ya), (xb, yb) = dl_a.one_batch(), dl_b.one_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    from crossformer_seg.train import resolve_run, _train_args
    run, _, _ = resolve_run(_train_args(config='tiny_upernet', data=str(plus), reduce_zero_label=True, work_dir=str(tmp_path/'w')))
    assert run['dataset']['reduce_zero_label'] is True and run['num_classes'] == 3


# --- mask checks: one line naming the file ---------------------------------------------------------------------------

@pytest.fixture
def bands():
    m = np.zeros((64, 80), np.uint8); m[20:] = 1; m[40:] = 2
    return m

def message(f, *a, **kw):
    with pytest.raises((ValueError, FileNotFoundError)) as e: f(*a, **kw)
    assert '\n' not in str(e.value)
    return str(e.value)

def test_values_at_or_above_the_class_count(tmp_path, bands):
    p = tmp_path/'m.png'; Image.fromarray(np.where(bands == 2, 9, bands).astype(np.uint8)).save(p)
    assert message(read_mask, p, None, 3) == f'mask {p}: has values 9 >= 3: the 3 classes are 0..2 (255 = ignore)'

def test_values_one_to_k_suggest_reduce_zero_label(tmp_path, bands):
    p = tmp_path/'m.png'; Image.fromarray(bands + 1).save(p)
    m = message(read_mask, p, None, 3)
    assert m.startswith(f'mask {p}: has values 3 >= 3') and m.endswith('its values are 1..3: if 0 means "unlabelled", use '
                                                                       '--reduce-zero-label (reduce_zero_label=True)'), m
    assert np.array_equal(read_mask(p, None, 3, reduce=True), bands)

def test_binary_mask_stored_as_0_255(tmp_path, bands):
    p = tmp_path/'m.png'; Image.fromarray(((bands > 0) * 255).astype(np.uint8)).save(p)
    m = message(read_mask, p, None, 2)
    assert m.startswith(f'mask {p}: holds only 0 and 255: a binary mask stored as 0/255?') and 'mask // 255' in m, m

def test_mask_and_image_sizes_differ(own, tmp_path):
    r = shutil.copytree(own, tmp_path/'size'); f = r/'masks'/'val'/'val_1.png'
    Image.fromarray(np.zeros((30, 80), np.uint8)).save(f)
    m = message(folder_dls, r)
    assert m == f"label {f} is 80x30 but image {r/'images'/'val'/'val_1.jpg'} is 80x64", m
    m = message(read_mask, f, r/'images'/'val'/'val_1.jpg', 3)
    assert m == f"mask {f}: is 80x30 but its image {r/'images'/'val'/'val_1.jpg'} is 80x64", m

def test_image_without_a_mask(own, tmp_path):
    r = shutil.copytree(own, tmp_path/'nomask'); (r/'masks'/'train'/'train_1.png').unlink()
    m = message(folder_dls, r)
    assert m == f"image {r/'images'/'train'/'train_1.jpg'} has no mask {r/'masks'/'train'/'train_1.png'}", m

def test_unknown_colour(tmp_path):
    r = make_folder(tmp_path/'rgb', colour_masks=True); f = r/'masks'/'val'/'val_0.png'
    a = np.asarray(Image.open(f)).copy(); a[3, 4] = (1, 2, 3); Image.fromarray(a).save(f)
    m = message(lambda: folder_dls(r, check='full'))
    assert m == f'mask {f}: has colour (1, 2, 3) that is no class colour of the class list', m

def test_bad_mask_stops_training_with_one_line(capsys, own, tmp_path):
    "Mask values are checked when a mask is read (here in the first iteration, which reads all 4 training images)."
    r = shutil.copytree(own, tmp_path/'bad'); f = r/'masks'/'train'/'train_3.png'
    Image.fromarray(np.full((64, 80), 7, np.uint8)).save(f)
    rc, out, err = cli(capsys, *TRAIN, '--data', r, '--work-dir', tmp_path/'w', '--total-batch', 4, '--batch-size', 4)
    assert rc == 2 and err.strip().splitlines() == [f'error: mask {f}: has values 7 >= 3: the 3 classes are 0..2 (255 = ignore)'], err

def test_missing_class_list(capsys, own, tmp_path):
    r = shutil.copytree(own, tmp_path/'nolist'); (r/'classes.txt').unlink()
    rc, out, err = cli(capsys, *TRAIN, '--data', r, '--work-dir', tmp_path/'w')
    assert rc == 2 and err.startswith(f'error: --data {r}: {r} has no classes.txt') and '--classes a,b,c' in err, err
    assert not (tmp_path/'w').exists()


def test_named_config_takes_the_checkpoints_class_count(capsys, own, trained, tmp_path):
    "`--config tiny_upernet` with a 3-class checkpoint builds 3 classifiers, as the checkpoint says."
    rc, out, err = cli(capsys, 'predict', '--config', 'tiny_upernet', '--checkpoint', trained/'final.safetensors',
                       own/'images'/'val'/'val_0.jpg', '--out', tmp_path/'out')
    assert rc == 0 and err == '', err
    assert Image.open(tmp_path/'out'/'val_0.png').getpalette()[:9] == [c for rgb in COLOURS for c in rgb]
