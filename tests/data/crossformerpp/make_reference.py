"""Make numerical reference data from the OFFICIAL CrossFormer++ segmentation backbone.

Usage (from the repository root)::

    python tests/data/crossformerpp/make_reference.py \
        --official path/to/crossformer_backbone_seg.py --out tests/data/crossformerpp

The official file (``models/crossformer_backbone_seg.py`` of ``cheerss/CrossFormer``,
commit a01b39ce93e9ccc79d8602b5cd05787f7b3bbe5f) is *not* part of this repository; pass
its path with ``--official``. It is imported by path after small stand-ins for its
mmcv / mmseg imports have been put into ``sys.modules`` (none of them is used in the
forward pass).

This module can be imported without the official code (the library's test imports
:func:`random_state_dict` and :func:`make_input` from it by path); the official code is
only loaded inside :func:`load_official`.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import sys
import types
import zlib

import torch

OFFICIAL_COMMIT = "a01b39ce93e9ccc79d8602b5cd05787f7b3bbe5f"
OFFICIAL_PATH = "models/crossformer_backbone_seg.py"
OFFICIAL_REPO = "cheerss/CrossFormer"

WEIGHT_SEED = 0
WEIGHT_GAIN = 1.0
# Stage maps with more elements than this are stored as channels [0, SUBSET_CHANNELS)
# (all spatial positions); smaller ones are stored in full.
FULL_MAX_NUMEL = 16384
SUBSET_CHANNELS = 8


# --------------------------------------------------------------------------------------
# deterministic weights and inputs (no dependency on the official code)
# --------------------------------------------------------------------------------------
def _is_norm_weight(name, shape):
    """True for 1-D ``...weight`` tensors, which in CrossFormer are exactly the LayerNorm weights.

    (Their names contain 'norm' or 'ln' -- norm1, norm2, ex_ln, patch_embed.norm,
    downsample.norm -- or lie under 'pos1.0' / 'pos2.0' / 'pos3.0', the LayerNorm at index
    0 of the DPB ``nn.Sequential``; :func:`_looks_like_norm` checks that by name.)
    """
    return name.endswith("weight") and len(shape) == 1


def _looks_like_norm(name):
    leaf = name.rsplit(".", 1)[0]
    return "norm" in leaf or "ln" in leaf or any(f"pos{k}.0" in leaf for k in (1, 2, 3))


def random_state_dict(state_dict_shapes, seed=WEIGHT_SEED, gain=WEIGHT_GAIN):
    """Deterministic float32 weights keyed by parameter name.

    ``state_dict_shapes``: mapping ``name -> shape`` (e.g. ``{k: v.shape for k, v in
    model.state_dict().items()}``).  Each tensor depends only on its name and shape, never
    on the order in which modules were created::

        g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        1-D '...weight' (LayerNorm weights)  -> 1 + 0.1 * randn(shape, generator=g)
        names ending in 'bias'                -> 0.02 * randn(shape, generator=g)
        every other tensor (Linear/Conv)      -> randn(shape, generator=g) * gain / sqrt(fan_in)
                                                 with fan_in = numel // shape[0]

    Default ``seed=0``, ``gain=1.0``.
    """
    out = {}
    for name, shape in state_dict_shapes.items():
        shape = tuple(int(s) for s in shape)
        g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith("bias"):
            t = 0.02 * r
        elif _is_norm_weight(name, shape):
            t = 1.0 + 0.1 * r
        else:
            numel = math.prod(shape)
            fan_in = max(1, numel // shape[0])
            t = r * (gain / math.sqrt(fan_in))
        out[name] = t.contiguous()
    return out


def input_seed(H, W):
    """Seed of the input image of size H x W: 1234 + H*10000 + W."""
    return 1234 + H * 10000 + W


def make_input(H, W):
    """``torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(1234 + H*10000 + W))``."""
    g = torch.Generator().manual_seed(input_seed(H, W))
    return torch.randn(1, 3, H, W, generator=g, dtype=torch.float32)


def check_outputs(outs, sizes_meta, stored, label='', tol=1e-4):
    """Assert that stage maps ``outs`` equal one stored reference entry (``meta['cases'][case]['sizes'][HxW]``).

    The stored channels elementwise and the whole map's min/max/mean/std, each within ``tol`` of the
    official map's range (max - min); ``stored`` is the loaded ``reference.safetensors``.
    """
    for i, o in enumerate(outs):
        st = sizes_meta["stages"][f"stage{i + 1}"]
        assert list(o.shape) == st["shape"], (label, i, tuple(o.shape))
        rng = st["max"] - st["min"]
        c0, c1 = st["stored_channels"]
        err = (o[:, c0:c1] - stored[st["key"]]).abs().max().item()
        assert err <= tol * rng, f"{label} stage {i + 1}: max |diff| {err:.3g} > {tol} of the range {rng:.3g}"
        o64 = o.double()
        for stat, v in (("mean", o64.mean()), ("std", o64.std()), ("min", o64.min()), ("max", o64.max())):
            assert abs(v.item() - st[stat]) <= tol * rng, (label, i, stat, v.item(), st[stat])


# --------------------------------------------------------------------------------------
# loading the official code with mmcv / mmseg stand-ins
# --------------------------------------------------------------------------------------
def _install_stubs():
    import torch.nn as nn
    from timm.layers import trunc_normal_ as timm_trunc_normal_

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    def _unused(*a, **k):
        raise NotImplementedError("mmcv/mmseg stand-in: not needed for the reference forward")

    mmseg = mod("mmseg")
    mmseg.utils = mod("mmseg.utils", get_root_logger=lambda *a, **k: logging.getLogger("official_crossformer"))
    mmcv = mod("mmcv")
    mmcv.runner = mod("mmcv.runner", load_checkpoint=_unused, BaseModule=nn.Module,
                      ModuleList=nn.ModuleList, _load_checkpoint=_unused)
    mmcv.cnn = mod("mmcv.cnn", build_norm_layer=_unused, constant_init=_unused, trunc_normal_init=_unused)
    mmcv.cnn.bricks = mod("mmcv.cnn.bricks")
    mmcv.cnn.bricks.transformer = mod("mmcv.cnn.bricks.transformer", FFN=_unused, build_dropout=_unused)
    mmcv.cnn.utils = mod("mmcv.cnn.utils")
    mmcv.cnn.utils.weight_init = mod("mmcv.cnn.utils.weight_init", trunc_normal_=timm_trunc_normal_)


def load_official(path):
    """Import the official file by path (after installing the stand-ins)."""
    import importlib.util
    _install_stubs()
    spec = importlib.util.spec_from_file_location("official_crossformer_backbone_seg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------
_COMMON = dict(patch_size=[4, 8, 16, 32], in_chans=3, num_classes=1000, mlp_ratio=4,
               qkv_bias=True, qk_scale=None, drop_rate=0.0, patch_norm=True,
               use_checkpoint=False, merge_size=[[2, 4], [2, 4], [2, 4]], use_acl=True)

S2_SEG = dict(_COMMON, img_size=[1024, 1024], embed_dim=64, depths=[2, 2, 18, 2],
              num_heads=[2, 4, 8, 16], group_size=[7, 7, 7, 7], crs_interval=[8, 4, 2, 1],
              drop_path_rate=0.2, adaptive_interval=False)

PP_TINY = dict(_COMMON, img_size=224, embed_dim=32, depths=[2, 2, 4, 2], num_heads=[1, 2, 4, 8],
               group_size=[7, 7, 7, 7], crs_interval=[8, 4, 2, 1], drop_path_rate=0.0,
               adaptive_interval=False)

CLS_GROUPS = dict(group_size=[4, 4, 14, 7], crs_interval=[4, 2, 1, 1])

CASES = {
    "s2_seg": (S2_SEG, [(224, 224), (512, 512)]),
    "pp_tiny": (PP_TINY, [(224, 224), (224, 320), (224, 448), (64, 96)]),
    "pp_tiny_adaptive": (dict(PP_TINY, adaptive_interval=True), [(224, 320), (512, 384)]),
    "pp_tiny_cls_groups": (dict(PP_TINY, **CLS_GROUPS), [(224, 224), (320, 256)]),
}
for _gt in ("linear", "linear_div", "alter", "7_14"):
    CASES[f"pp_tiny_{_gt}"] = (dict(PP_TINY, **CLS_GROUPS, group_type=_gt), [(224, 224)])

# classification hyper-parameters (configs/crossformer_pp/*_patch4_group_const_224.yaml)
CLS_HPARAMS = {
    "S": dict(embed_dim=64, depths=[2, 2, 18, 2], num_heads=[2, 4, 8, 16], drop_path_rate=0.2),
    "B": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], drop_path_rate=0.3),
    "L": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], drop_path_rate=0.5),
    "H": dict(embed_dim=128, depths=[6, 6, 18, 2], num_heads=[4, 8, 16, 32], drop_path_rate=0.5),
}


def _block_layout(model, H, W):
    """Per block: constructor group size plus the state after the forward (official attrs)."""
    out = []
    for i, layer in enumerate(model.layers):
        h, w = H // 4 // 2 ** i, W // 4 // 2 ** i
        blocks = []
        for blk in layer.blocks:
            gs = blk.group_size
            eff = max(h, w) if min(h, w) <= gs else gs
            size_div = blk.interval * eff if blk.lsda_flag == 1 else eff
            blocks.append(dict(
                group_size=int(gs), lsda_flag_after=int(blk.lsda_flag), interval_after=int(blk.interval),
                effective_group=int(eff), padded_hw=[int(math.ceil(h / size_div) * size_div),
                                                     int(math.ceil(w / size_div) * size_div)],
                extra_conv=bool(blk.use_extra_conv)))
        out.append(dict(hw=[h, w], blocks=blocks))
    return out


def _stats(t):
    t = t.double()
    return dict(min=t.min().item(), max=t.max().item(), mean=t.mean().item(), std=t.std().item())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import timm
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    text = open(args.official, encoding="utf-8").read()
    off = load_official(args.official)
    os.makedirs(args.out, exist_ok=True)

    tensors, meta_cases = {}, {}
    for case, (kwargs, sizes) in CASES.items():
        mc = dict(kwargs=kwargs, sizes={})
        for (H, W) in sizes:
            assert H % 32 == 0 and W % 32 == 0
            torch.manual_seed(0)
            model = off.CrossFormer(**kwargs)  # fresh model for every size (lsda_flag is mutated)
            shapes = {k: v.shape for k, v in model.state_dict().items()}
            assert all(_looks_like_norm(k) for k, v in shapes.items() if _is_norm_weight(k, v))
            model.load_state_dict(random_state_dict(shapes), strict=True)
            model = model.float().eval()
            x = make_input(H, W)
            with torch.no_grad():
                outs = model(x)
            sm = dict(input=dict(shape=[1, 3, H, W], seed=input_seed(H, W),
                                 sum_float64=x.double().sum().item(),
                                 abs_sum_float64=x.double().abs().sum().item()),
                      stages={}, layout=_block_layout(model, H, W))
            for i, o in enumerate(outs):
                assert torch.isfinite(o).all(), (case, H, W, i)
                key = f"{case}/{H}x{W}/stage{i + 1}"
                if o.numel() > FULL_MAX_NUMEL:
                    stored = o[:, :SUBSET_CHANNELS].contiguous()
                    channels = [0, SUBSET_CHANNELS]
                else:
                    stored = o.contiguous()
                    channels = [0, int(o.shape[1])]
                tensors[key] = stored.clone()
                sm["stages"][f"stage{i + 1}"] = dict(
                    key=key, shape=list(o.shape), stored_shape=list(stored.shape),
                    stored_channels=channels, full=channels[1] == o.shape[1], **_stats(o),
                    stored_stats=_stats(stored))
            mc["sizes"][f"{H}x{W}"] = sm
            print(case, f"{H}x{W}", [tuple(o.shape) for o in outs],
                  [f"[{o.min().item():.3f}, {o.max().item():.3f}]" for o in outs], flush=True)
        mc["block_group_size"] = [[int(b.group_size) for b in l.blocks] for l in model.layers]
        mc["state_dict"] = [[k, list(v.shape)] for k, v in model.state_dict().items()]  # the official names, in order
        meta_cases[case] = mc

    # parameter counts of the official trunk
    def count(kw):
        m = off.CrossFormer(**kw)
        return sum(p.numel() for p in m.parameters())

    pc = {"s2_seg": count(S2_SEG)}
    cls = {}
    for name, hp in CLS_HPARAMS.items():
        kw = dict(_COMMON, img_size=224, group_size=[4, 4, 14, 7], crs_interval=[4, 2, 1, 1],
                  adaptive_interval=False, group_type="constant", **hp)
        trunk = count(kw)
        C = hp["embed_dim"] * 8
        cls[name] = dict(kwargs=kw, trunk=trunk, with_classifier=trunk + 2 * C + C * 1000 + 1000)
    pc["classification_224"] = cls
    pc["note"] = ("trunk = sum(p.numel()) of the official CrossFormer (backbone, no head). A classifier "
                  "adds a final LayerNorm(C) and Linear(C, 1000) with C = embed_dim * 8: "
                  "with_classifier = trunk + 2*C + C*1000 + 1000.")

    meta = dict(
        description="Stage outputs (NCHW, float32) of the official CrossFormer++ backbone with random weights.",
        official=dict(repo=OFFICIAL_REPO, path=OFFICIAL_PATH, commit=OFFICIAL_COMMIT,
                      sha256_of_text=hashlib.sha256(text.encode("utf-8")).hexdigest(), chars=len(text)),
        versions=dict(torch=torch.__version__, timm=timm.__version__, python=sys.version.split()[0]),
        weights=dict(function="random_state_dict", seed=WEIGHT_SEED, gain=WEIGHT_GAIN,
                     rule=random_state_dict.__doc__.strip()),
        inputs=dict(rule="torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(1234 + H*10000 + W))"),
        storage=dict(file="reference.safetensors", key="{case}/{H}x{W}/stage{i}, i = 1..4",
                     rule=f"full tensor if numel <= {FULL_MAX_NUMEL}, else channels "
                          f"[0, {SUBSET_CHANNELS}) with all spatial positions; min/max/mean/std "
                          "are of the full official tensor, stored_stats of the stored slice"),
        tolerance_hint="abs error <= 1e-4 * (max - min) of the full official stage output",
        run=dict(threads=2, device="cpu", dtype="float32", mode="eval, torch.no_grad()",
                 fresh_model_per_size=True),
        param_counts=pc,
        cases=meta_cases,
    )
    save_file(tensors, os.path.join(args.out, "reference.safetensors"),
              metadata={"official_commit": OFFICIAL_COMMIT})
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("param counts:", json.dumps({k: (v if not isinstance(v, dict) else
                                           {n: (d["trunk"], d["with_classifier"]) for n, d in v.items()})
                                       for k, v in pc.items() if k != "note"}))


if __name__ == "__main__":
    main()
