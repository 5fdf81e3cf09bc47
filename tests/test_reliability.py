"""Reliability: no bad input stops a batch job or passes silently, NaN is caught, checkpoints are verified, Ctrl-C is clean.

One test per case of issue 9's "What was seen" (each failed before the fix), then the acceptance runs: `predict` over ten
images of which three are bad in different ways, a damaged and an original checkpoint, file modes, a killed save, Ctrl-C.
The two long ones (13 model forwards; a subprocess that imports the package) are marked `slow`: `CFSEG_SLOW=1 pytest ...`.

The NaN-producing image is honest: a real `tiny_fpn` checkpoint with finite weights, loaded from disk by `predict`,
whose classifier overflows float32 on one picture only. One channel of the decode head's first ReLU gets a gain of
1e20 and a threshold placed between the largest value that channel reaches on the good pictures and on the bad one
(measured through the same test pipeline), and the classifier reads that channel with weight 1e25: on the good
pictures the ReLU gives exactly 0 and the logits are unchanged, on the bad one it gives ~1e19 and the logits
overflow to inf (and NaN after the resize). This is how an unstable model behaves: fine on most inputs, inf on some.
"""
import contextlib, io, os, signal, stat, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossformer_seg.core import command_main, NonFiniteError, UsageError
from crossformer_seg.checkpoint import save_checkpoint, load_checkpoint, read_checkpoint, CONTENT_HASH_KEY
from crossformer_seg.segmentor import build_segmentor, inference, predict_labels, slide_logits
from crossformer_seg.heads import ConvModule
from crossformer_seg.data import read_image, ade20k_items, ADEPair, _ItemImage
from crossformer_seg.demo import make_demo_ade20k
import crossformer_seg.inference as inf

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A `tiny_fpn` model and its checkpoint written by `save_checkpoint`."
    torch.manual_seed(0)
    model = build_segmentor('tiny_fpn').eval()
    return model, save_checkpoint(model, tmp_path_factory.mktemp('ck')/'tiny_fpn.safetensors', {'config': 'tiny_fpn'})

def predict(*argv):
    "`crossformer-seg predict ARGV` in-process: (exit code, stdout, stderr)."
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try: code = command_main(inf.predict_arguments, inf.run_predict, [str(a) for a in argv])
        except SystemExit as x: code = x.code
    return code, o.getvalue(), e.getvalue()

def strip(path, h, w, seed, fmt=None, mode='RGB', **kw):
    "A smooth random picture `w` wide and `h` high (the test pipeline makes a wide strip 2048 x 32: a cheap forward)."
    g = np.random.default_rng(seed)
    a = np.asarray(Image.fromarray(g.integers(0, 256, (2, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC))
    Image.fromarray(a).convert(mode).save(path, format=fmt, **kw)
    return path

def flip_payload(src, dst, n=1, seed=0):
    "`src` copied to `dst` with `n` bytes of its tensor data (after the safetensors header) inverted."
    b = bytearray(Path(src).read_bytes()); start = 8 + int.from_bytes(b[:8], 'little')
    for i in np.random.default_rng(seed).choice(np.arange(start, len(b)), n, replace=False): b[i] ^= 0xFF
    Path(dst).write_bytes(bytes(b)); return Path(dst)


# --- "What was seen", one test each ------------------------------------------------------------------------------

def test_thin_image_named_and_good_images_written(tiny, tmp_path):
    "A 20000 x 1 image beside a good one: named with the size rule, the good one written (after it, in name order), exit 1."
    d = tmp_path/'in'; d.mkdir()
    Image.new('RGB', (20000, 1)).save(d/'a_thin.png'); strip(d/'b.png', 6, 400, 1)
    code, out, err = predict('--config', 'tiny_fpn', '--checkpoint', tiny[1], d, '--out', tmp_path/'out')
    assert code == 1
    assert err.splitlines() == [f"error: cannot segment {d/'a_thin.png'}: the image is 20000x1, too wide for the pipeline: resized "
                                "to fit 2048x512 it would be 2048x0; both sides of the resized image must be >= 1 pixel, so the long "
                                "side may be at most 4096 times the short one"]
    assert sorted(os.listdir(tmp_path/'out')) == ['b.png', 'b_overlay.jpg']

def test_thin_image_in_data_loader_names_the_file(tmp_path):
    "The data block's item reading refuses the same image by name and rule (training: ratio 0.5, long side <= 2048 x short)."
    Image.new('RGB', (3000, 1)).save(tmp_path/'t.jpg')
    get_x = _ItemImage((2048, 512), (0.5, 2.0))
    with pytest.raises(ValueError, match=r'image .*t\.jpg: is 3000x1, too wide .* at most 2048 times the short one'):
        get_x(ADEPair(tmp_path/'t.jpg', tmp_path/'t.png', 'training'))
    assert get_x(ADEPair(tmp_path/'t.jpg', tmp_path/'t.png', 'validation')).shape == (3, 1, 3000)   # the test pipeline takes it

def test_nan_checkpoint_refused_by_predict_and_warned_by_api(tiny, tmp_path):
    "An all-NaN checkpoint: `predict` exits 2 naming it (before writing anything); the Python API warns."
    sd = {k: v.clone().fill_(float('nan')) if v.is_floating_point() else v for k, v in tiny[0].state_dict().items()}
    ck = save_checkpoint(sd, tmp_path/'nan.safetensors')
    strip(tmp_path/'a.png', 6, 400, 1)
    code, out, err = predict('--config', 'tiny_fpn', '--checkpoint', ck, tmp_path/'a.png', '--out', tmp_path/'out')
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path/'out').exists()
    assert f'checkpoint {ck} has NaN or infinite values in' in err
    with pytest.warns(RuntimeWarning, match='NaN or infinite values'): load_checkpoint(build_segmentor('tiny_fpn'), ck)
    with pytest.raises(NonFiniteError): load_checkpoint(build_segmentor('tiny_fpn'), ck, nonfinite='error')

def test_one_nan_input_pixel_raises(tiny):
    "One NaN pixel no longer gives all-zero labels: a clear error naming the image of the batch."
    x = torch.randn(2, 3, 64, 64); x[1, 0, 5, 5] = float('nan')
    with pytest.raises(NonFiniteError, match=r'non-finite values \(1 NaN, 0 inf\) in image 1 of the batch of 2'):
        predict_labels(tiny[0], x)

def test_nan_logits_raise(tiny):
    "Logits that are NaN (broken weights) raise instead of becoming class 0 everywhere."
    m = build_segmentor('tiny_fpn').eval()
    with torch.no_grad(): m.decode_head.conv_seg.bias.fill_(float('nan'))
    with pytest.raises(NonFiniteError, match='logits'): predict_labels(m, torch.randn(1, 3, 64, 64))

def test_flipped_payload_bytes_refused(tiny, tmp_path):
    "100 flipped payload bytes (and one) no longer load silently: the file is named as damaged."
    for n in (1, 100):
        bad = flip_payload(tiny[1], tmp_path/f'flip{n}.safetensors', n)
        with pytest.raises(ValueError, match=f'checkpoint {bad} is damaged'): load_checkpoint(build_segmentor('tiny_fpn'), bad)

def test_saved_checkpoint_mode_follows_umask(tiny, tmp_path):
    "0644 under umask 022, also over an existing 0644 file (was 0600: mkstemp's mode survived the rename)."
    old = os.umask(0o022)
    try:
        p = save_checkpoint(tiny[0], tmp_path/'m.safetensors'); assert stat.S_IMODE(p.stat().st_mode) == 0o644
        save_checkpoint(tiny[0], p); assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o027); save_checkpoint(tiny[0], tmp_path/'g.safetensors')
        assert stat.S_IMODE((tmp_path/'g.safetensors').stat().st_mode) == 0o640
    finally: os.umask(old)

def test_killed_save_leaves_no_lasting_temporary(tiny, tmp_path):
    "A writer killed with SIGKILL mid-write leaves its hidden temporary; the next save to that path removes it."
    p = tmp_path/'k.safetensors'
    code = ('import sys, time\nfrom crossformer_seg.core import atomic_write\n'
            f'with atomic_write({str(p)!r}) as t:\n    open(t, "wb").write(b"x" * 10**6); print("writing", flush=True); time.sleep(120)')
    pr = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert pr.stdout.readline().strip() == 'writing'
        pr.send_signal(signal.SIGKILL); pr.wait(30)
    finally: pr.kill()
    left = [x.name for x in tmp_path.iterdir()]
    assert left == [f'.k.safetensors.{pr.pid}.tmp']                 # the killed save's full-size temporary
    save_checkpoint(tiny[0], p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ['k.safetensors']
    assert read_checkpoint(p).meta[CONTENT_HASH_KEY]

@pytest.mark.parametrize('kind', ['file', 'under_file', 'read_only'])
def test_bad_out_refused_before_the_model_is_built(tiny, tmp_path, monkeypatch, kind):
    "`--out` a file, under a file, or read-only: one `error:` line, exit 2, and no model was built."
    monkeypatch.setattr(inf, 'load_segmentor', lambda *a, **k: pytest.fail('model built before the --out check'))
    (tmp_path/'f').write_text('x'); (tmp_path/'ro').mkdir()
    out = {'file': tmp_path/'f', 'under_file': tmp_path/'f'/'sub', 'read_only': tmp_path/'ro'/'sub'}[kind]
    if kind == 'read_only':
        (tmp_path/'ro').chmod(0o555)
        if os.access(tmp_path/'ro', os.W_OK): out = Path('/sys')/'sub'   # root ignores permissions: a folder no one may write
    strip(tmp_path/'a.png', 6, 400, 1)
    code, out_, err = predict('--config', 'tiny_fpn', '--checkpoint', tiny[1], tmp_path/'a.png', '--out', out)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f'error: --out {out}: ')
    assert {'file': 'is a file, not a folder', 'under_file': f"{tmp_path/'f'} is a file", 'read_only': 'is not writable'}[kind] in err

@pytest.mark.parametrize('make, msg', [
    (lambda x: (x * 50 + 120).clamp(0, 255).to(torch.uint8), 'crossformer_seg.inference.preprocess_image normalises a uint8 image'),
    (lambda x: x.long(), 'must be a float tensor'), (lambda x: x > 0, 'must be a float tensor'),
    (lambda x: x.numpy(), 'must be a torch.Tensor'), (lambda x: x[:0], 'empty batch')])
def test_model_input_validated(tiny, make, msg):
    "uint8 / int / bool / numpy / batch of 0 into `inference`, `predict_labels`, `slide_logits`: one clear ValueError each."
    x = torch.randn(1, 3, 64, 64)
    for f in (inference, predict_labels, slide_logits):
        with pytest.raises(ValueError, match=msg): f(tiny[0], make(x))

def test_float64_input_is_cast(tiny):
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(inference(tiny[0], x.double()), inference(tiny[0], x))

@pytest.mark.parametrize('kw, msg', [(dict(ratios=[0]), 'ratios must be positive finite numbers, got 0'),
                                     (dict(ratios=[1e-3]), 'ratio 0.001 makes the 64x64 image 0x0'),
                                     (dict(out_size=(0, 0)), r'out_size must be two positive ints \(h, w\), got \(0, 0\)')])
def test_inference_sizes_and_ratios(tiny, kw, msg):
    with pytest.raises(ValueError, match=msg): inference(tiny[0], torch.randn(1, 3, 64, 64), **kw)

def test_data_root_that_is_a_file(tmp_path):
    (tmp_path/'root').write_text('x')
    with pytest.raises(FileNotFoundError, match=f"ADE20K root folder {tmp_path/'root'} is a file, not a folder$"): ade20k_items(tmp_path/'root')

def test_save_checkpoint_bad_path_and_value(tiny, tmp_path):
    (tmp_path/'f').write_text('x')
    with pytest.raises(UsageError, match=f"cannot write checkpoint {tmp_path/'f'/'m.safetensors'}: folder {tmp_path/'f'}: is a file"):
        save_checkpoint(tiny[0], tmp_path/'f'/'m.safetensors')
    with pytest.raises(TypeError, match="only tensors can be saved; 'n' is a int"): save_checkpoint({'w': torch.ones(1), 'n': 3}, tmp_path/'x')
    assert sorted(os.listdir(tmp_path)) == ['f']

def test_demo_negative_count(tmp_path):
    with pytest.raises(ValueError, match='n_train must be an int >= 1, got -3'): make_demo_ade20k(tmp_path/'d', n_train=-3)
    assert not (tmp_path/'d').exists()


# --- acceptance --------------------------------------------------------------------------------------------------

def blow_up_on(model, good, bad):
    "Make `model` overflow float32 on picture `bad` only (see the module docstring); returns the channel used."
    bn, acts = model.decode_head.scale_heads[0][0].bn, []
    hook = bn.register_forward_hook(lambda m, i, o: acts.append(o.detach().amax(dim=(0, 2, 3))))
    for im in [*good, bad]: inf.segment_image(model, im)               # the predict pipeline, pre-ReLU maxima per channel
    hook.remove()
    good_max, bad_max = torch.stack(acts[:-1]).amax(0), acts[-1]
    k = int((bad_max - good_max).argmax())
    assert bad_max[k] > good_max[k] + 0.05, 'no channel separates the pictures'
    t, g = float(good_max[k] + bad_max[k]) / 2, 1e20
    with torch.no_grad():
        bn.bias[k] = g * (bn.bias[k] - t); bn.weight[k] *= g              # ReLU(g * (y - t)): 0 below t, ~1e19 above
        for head in model.decode_head.scale_heads[1:]:                      # the other levels add nothing on channel k
            last = [mod for mod in head if isinstance(mod, ConvModule)][-1].bn
            last.weight[k] = 0.; last.bias[k] = 0.
        model.decode_head.conv_seg.weight[:, k] = 1e25                     # 1e19 x 1e25 > 3.4e38: inf
    return k

@pytest.mark.slow
def test_predict_ten_images_three_bad(tiny, tmp_path):
    "10 images, 3 bad in different ways (20000 x 1, truncated, NaN logits): 7 outputs written, 3 named with reasons, exit 1."
    d = tmp_path/'in'; d.mkdir()
    good = [strip(d/'g1.png', 6, 400, 1), strip(d/'g2.bmp', 6, 400, 1, 'BMP'), strip(d/'g3.png', 5, 390, 2),
            strip(d/'g4.tif', 5, 390, 2, 'TIFF'), strip(d/'g5.png', 7, 420, 3), strip(d/'g6.webp', 7, 420, 3, 'WEBP', lossless=True),
            strip(d/'g7.png', 6, 410, 4, mode='L')]
    g = np.random.default_rng(9)
    Image.fromarray(np.where(g.random((6, 400, 1)) < 0.5, 0, 255).repeat(3, 2).astype(np.uint8)).save(d/'nan_maker.png')
    Image.new('RGB', (20000, 1), (90, 120, 30)).save(d/'thin.png')
    strip(d/'trunc.jpg', 60, 400, 5, 'JPEG'); (d/'trunc.jpg').write_bytes((d/'trunc.jpg').read_bytes()[:700])
    model = build_segmentor('tiny_fpn').eval(); load_checkpoint(model, tiny[1])
    distinct = {read_image(p).tobytes(): read_image(p) for p in good}                # 4 distinct pictures in 7 files
    k = blow_up_on(model, list(distinct.values()), read_image(d/'nan_maker.png'))
    ck = save_checkpoint(model, tmp_path/'unstable.safetensors', {'config': 'tiny_fpn'})
    assert all(torch.isfinite(v).all() for v in read_checkpoint(ck).state_dict.values() if v.is_floating_point())   # finite weights
    t0 = time.time()
    code, out, err = predict('--config', 'tiny_fpn', '--checkpoint', ck, d, '--out', tmp_path/'out')
    print(f'predict over 10 images: {time.time() - t0:.1f} s'); print(err)
    assert code == 1
    written = sorted(os.listdir(tmp_path/'out'))
    assert written == sorted(f'{p.stem}{x}' for p in good for x in ('.png', '_overlay.jpg'))
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"error: cannot segment {d/'nan_maker.png'}: the model's output (logits) has non-finite values (")
    assert lines[0].endswith('; nothing written for it')
    assert lines[1].startswith(f"error: cannot segment {d/'thin.png'}: the image is 20000x1, too wide for the pipeline")
    assert lines[2].startswith(f"error: cannot read {d/'trunc.jpg'}: corrupt or truncated")
    assert out.splitlines()[-1] == (f"7 of 10 images segmented into {tmp_path/'out'}; 3 failed: "
                                    f"{d/'nan_maker.png'}, {d/'thin.png'}, {d/'trunc.jpg'}")
    # on a good picture the blow-up channel stayed exactly 0: without its classifier weights the labels are the same
    with torch.no_grad(): model.decode_head.conv_seg.weight[:, k] = 0.
    assert np.array_equal(np.asarray(Image.open(tmp_path/'out'/'g1.png')), inf.segment_image(model, read_image(good[0])))

def test_original_format_checkpoints_still_load(tiny, tmp_path):
    "No hash to check: an MMSegmentation-style torch file and a safetensors file of another producer load as before."
    torch.save({'state_dict': tiny[0].state_dict(), 'meta': {'iter': 80000}}, tmp_path/'mmseg.pth')
    assert load_checkpoint(build_segmentor('tiny_fpn'), tmp_path/'mmseg.pth').ok
    assert CONTENT_HASH_KEY not in read_checkpoint(ROOT/'tests/data/tiny/weights_backbone.safetensors').meta
    assert load_checkpoint(build_segmentor('tiny_fpn').backbone, ROOT/'tests/data/tiny/weights_backbone.safetensors').ok

@pytest.mark.slow
def test_ctrl_c_during_predict(tiny, tmp_path):
    "SIGINT while predict runs: one line on stderr, exit 130, finished images complete, no partial or temporary file."
    d = tmp_path/'in'; d.mkdir()
    for i in range(8): strip(d/f'{i}.png', 6, 400, i)
    out = tmp_path/'out'
    pr = subprocess.Popen([str(BIN/'crossformer-seg'), 'predict', '--config', 'tiny_fpn', '--checkpoint', str(tiny[1]), str(d),
                           '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = pr.stdout.readline()                                          # the first image is done
        assert '->' in first, first + pr.stderr.read()
        pr.send_signal(signal.SIGINT)
        rest, err = pr.communicate(timeout=120)
    finally: pr.kill()
    assert pr.returncode == 130 and err == 'interrupted\n', err
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith('.')], names               # no temporary left
    stems = {n.split('.')[0].removesuffix('_overlay') for n in names}
    assert 1 <= len(stems) < 8 and names == sorted(f'{s}{x}' for s in stems for x in ('.png', '_overlay.jpg')), names
    for n in names: Image.open(out/n).load()                                  # every file written is whole
