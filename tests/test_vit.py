"""Foundation-model ViT: parity with plain-torch timm / HF ViTs, weight files, the extractor."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from asign_jax.config import CHOICES, base_config
from asign_jax.errors import ConfigError, DataError
from asign_jax.features.encoders import make_extractor
from asign_jax.features.extract import adaptive_avg_pool
from asign_jax.features.vit import ARCHS, ViT, param_shapes, pooled_and_tokens, resample_matrix
from asign_jax.features.vit_extractor import ViTExtractor
from asign_jax.features.vit_weights import load_vit_weights, random_state_dict


def _small(name, **kw):
    """The arch ``name`` shrunk (width 32, depth 2, 4 heads, 3x3 training grid), every option
    (MLP kind, registers, class-token position embedding, LayerScale, output, keys) kept."""
    a = ARCHS[name]
    hidden = 96 if a.mlp == "swiglu" else 64
    return dataclasses.replace(a, width=32, depth=2, heads=4, mlp_hidden=hidden,
                               input_size=3 * a.patch, **kw)


def test_arch_table_matches_config_and_published_sizes():
    assert CHOICES["features.arch"] == tuple(ARCHS)
    n = {k: sum(int(np.prod(s)) for s in param_shapes(a).values()) / 1e6
         for k, a in ARCHS.items() if k in ("uni", "phikon", "virchow2")}
    # published parameter counts: UNI 303 M (ViT-L/16), Phikon 86 M (ViT-B/16), Virchow2 632 M
    assert abs(n["uni"] - 303.4) < 1 and abs(n["phikon"] - 85.8) < 1
    assert abs(n["virchow2"] - 631.2) < 1
    s = param_shapes(ARCHS["virchow2"])
    assert s[("pos_embed",)] == (1, 261, 1280)            # 256 patches + class + 4 registers
    assert s[("blocks_0", "mlp", "fc2", "kernel")] == (3416, 1280)   # packed SwiGLU
    assert ARCHS["virchow2"].feature_dim == 2560 and ARCHS["uni2_h"].feature_dim == 1536
    # H-optimus-1 is H-optimus-0's architecture (its parity case covers both)
    assert dataclasses.replace(ARCHS["h_optimus_1"], hf_repo="", licence="") == \
        dataclasses.replace(ARCHS["h_optimus_0"], hf_repo="", licence="")


# ------------------------------------------------------------------ plain-torch references

def _torch_vit(arch):
    """timm ``VisionTransformer`` semantics and key names (or HF ``ViTModel`` ones)."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    d, p = arch.width, arch.patch

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(d, arch.mlp_hidden)
            h = arch.mlp_hidden // 2 if arch.mlp == "swiglu" else arch.mlp_hidden
            self.fc2 = nn.Linear(h, d)

        def forward(self, x):
            x = self.fc1(x)
            if arch.mlp == "swiglu":
                a, b = x.chunk(2, dim=-1)
                x = F.silu(a) * b
            else:
                x = F.gelu(x)
            return self.fc2(x)

    class LS(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * self.gamma

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, n, _ = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, arch.heads, d // arch.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = (q @ k.transpose(-2, -1)) * (d // arch.heads) ** -0.5
            return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))

    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(d, eps=arch.eps)
            self.attn = Attn()
            self.norm2 = nn.LayerNorm(d, eps=arch.eps)
            self.mlp = Mlp()
            self.ls1 = LS() if arch.layerscale else nn.Identity()
            self.ls2 = LS() if arch.layerscale else nn.Identity()

        def forward(self, x):
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))

    class PE(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, d, p, p)

    class TimmViT(nn.Module):
        def __init__(self):
            super().__init__()
            g0 = arch.grid
            self.patch_embed = PE()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            if arch.reg_tokens:
                self.reg_token = nn.Parameter(torch.zeros(1, arch.reg_tokens, d))
            n = g0 * g0 + (arch.n_prefix if arch.cls_pos_embed else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
            self.blocks = nn.Sequential(*[Blk() for _ in range(arch.depth)])
            self.norm = nn.LayerNorm(d, eps=arch.eps)

        def forward(self, x):                       # timm forward_features
            x = self.patch_embed.proj(x)
            b, _, gh, gw = x.shape
            x = x.flatten(2).transpose(1, 2)
            npre = arch.n_prefix if arch.cls_pos_embed else 0
            pre, grid = self.pos_embed[:, :npre], self.pos_embed[:, npre:]
            g0 = arch.grid
            grid = grid.reshape(1, g0, g0, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
            toks = [self.cls_token.expand(b, -1, -1)]
            if arch.reg_tokens:
                toks.append(self.reg_token.expand(b, -1, -1))
            if arch.cls_pos_embed:
                x = torch.cat(toks + [x], 1) + torch.cat([pre, grid], 1)
            else:
                x = torch.cat(toks + [x + grid], 1)
            return self.norm(self.blocks(x))

    class HFViT(nn.Module):
        """transformers ViTModel layout; interpolate_pos_encoding = plain bicubic."""

        def __init__(self):
            super().__init__()
            t = TimmViT()
            self.t = t

        def forward(self, x):
            t = self.t
            x = t.patch_embed.proj(x)
            b, _, gh, gw = x.shape
            x = x.flatten(2).transpose(1, 2)
            g0 = arch.grid
            grid = t.pos_embed[:, 1:].reshape(1, g0, g0, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
            x = torch.cat([t.cls_token.expand(b, -1, -1), x], 1) + \
                torch.cat([t.pos_embed[:, :1], grid], 1)
            return t.norm(t.blocks(x))

        def hf_state_dict(self):
            out = {}
            for k, v in self.t.state_dict().items():
                v = v.clone()
                if k == "cls_token":
                    out["embeddings.cls_token"] = v
                elif k == "pos_embed":
                    out["embeddings.position_embeddings"] = v
                elif k.startswith("patch_embed.proj."):
                    out["embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
                elif k.startswith("norm."):
                    out["layernorm." + k.split(".")[-1]] = v
                else:
                    _, i, rest = k.split(".", 2)
                    name, leaf = rest.rsplit(".", 1)
                    pre = f"encoder.layer.{i}."
                    if name == "attn.qkv":
                        for j, n in enumerate(("query", "key", "value")):
                            out[f"{pre}attention.attention.{n}.{leaf}"] = v.chunk(3)[j]
                    else:
                        out[pre + {"norm1": "layernorm_before", "norm2": "layernorm_after",
                                   "attn.proj": "attention.output.dense",
                                   "mlp.fc1": "intermediate.dense",
                                   "mlp.fc2": "output.dense"}[name] + "." + leaf] = v
            out["pooler.dense.weight"] = torch.zeros(d, d)    # ignored, as transformers has it
            return out

    model = HFViT() if arch.keys == "hf" else TimmViT()
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(0.3 * torch.randn_like(prm))
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(d))
    return model.eval()


def _torch_outputs(arch, model, x):
    import torch
    with torch.no_grad():
        y = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    cls, patches = y[:, 0], y[:, arch.n_prefix:]
    if arch.output == "cls":
        return cls.numpy()
    if arch.output == "mean":
        return patches.mean(1).numpy()
    return torch.cat([cls, patches.mean(1)], -1).numpy()     # Virchow2's embedding


def _state_dict(arch, model):
    sd = model.hf_state_dict() if arch.keys == "hf" else model.state_dict()
    return {k: v.numpy() for k, v in sd.items()}


@pytest.mark.parametrize("name", [n for n in ARCHS if n not in ("tiny_test", "h_optimus_1")] +
                         ["mean_rule", "cls_pos_registers"])
def test_vit_matches_torch(name, tmp_path):
    torch = pytest.importorskip("torch")
    if name == "mean_rule":              # the mean-of-patch-tokens output, GELU, registers
        arch = _small("uni", output="mean", reg_tokens=2)
    elif name == "cls_pos_registers":    # registers with position embeddings and cls only
        arch = _small("virchow2", output="cls")
    else:
        arch = _small(name)
    model = _torch_vit(arch)
    path = tmp_path / "w.pth"
    torch.save(model.hf_state_dict() if arch.keys == "hf" else model.state_dict(), path)
    variables = load_vit_weights(path, arch, name)
    fwd = jax.jit(ViT(arch).apply)
    rng = np.random.default_rng(0)
    # the training grid (3x3), a larger (5x5: interpolated up) and, once, a smaller one (2x2)
    for g in (3, 5, 2) if name == "uni2_h" else (3, 5):
        x = rng.normal(size=(2, g * arch.patch, g * arch.patch, 3)).astype(np.float32)
        ref = _torch_outputs(arch, model, x)
        cls, patches = fwd(variables, x)
        ours, toks = pooled_and_tokens(arch, cls, patches, adaptive_avg_pool, 1)
        assert ours.shape == ref.shape == (2, arch.feature_dim)
        assert 0.05 < np.abs(ref).mean() < 50
        np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)
        # a 1x1 token grid is the mean of the patch tokens ([cls, mean] for cls_mean)
        if arch.output != "cls":
            np.testing.assert_allclose(np.asarray(toks[:, 0]), ref, atol=1e-4, rtol=1e-4)


def test_resample_matrix_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F
    x = np.random.default_rng(0).normal(size=(7,)).astype(np.float32)
    for n_out in (3, 5, 7, 11, 16):
        for aa in (True, False):
            ref = F.interpolate(torch.from_numpy(x)[None, None, None].expand(1, 1, 2, 7),
                                size=(2, n_out), mode="bicubic", antialias=aa,
                                align_corners=False)[0, 0, 0].numpy()
            np.testing.assert_allclose(resample_matrix(7, n_out, aa) @ x, ref, atol=1e-5)


# ------------------------------------------------------------------ files and errors

def test_weight_files_and_one_line_errors(tmp_path):
    arch = _small("uni2_h")
    sd = random_state_dict(arch)
    np.savez(tmp_path / "w.npz", **sd)
    a = load_vit_weights(tmp_path / "w.npz", arch, "uni2_h")
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    b = load_vit_weights(tmp_path / "w.safetensors", arch, "uni2_h")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)

    renamed = dict(sd)
    renamed["blocks.1.mlp.fc_1.weight"] = renamed.pop("blocks.1.mlp.fc1.weight")
    np.savez(tmp_path / "renamed.npz", **renamed)
    with pytest.raises(DataError) as e:
        load_vit_weights(tmp_path / "renamed.npz", arch, "uni2_h")
    msg = str(e.value)
    assert "\n" not in msg and "'uni2_h'" in msg and "renamed.npz" in msg
    assert "blocks.1.mlp.fc1.weight" in msg and "blocks.1.mlp.fc_1.weight" in msg
    missing = dict(sd)
    del missing["reg_token"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(DataError, match=r"uni2_h.*missing.npz.*1 missing keys.*reg_token"):
        load_vit_weights(tmp_path / "missing.npz", arch, "uni2_h")
    # a UNI (GELU, no registers) checkpoint given for uni2_h: named as a mismatch
    with pytest.raises(DataError, match=r"'uni2_h'.*(missing|shape)"):
        load_vit_weights(tmp_path / "w.npz", dataclasses.replace(arch, reg_tokens=0),
                         "uni2_h")
    with pytest.raises(DataError, match="does not exist"):
        load_vit_weights(tmp_path / "nope.bin", arch, "uni2_h")


def test_safetensors_bf16_without_torch_reader(tmp_path):
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    arch = _small("phikon")
    hf = _state_dict(arch, _torch_vit(arch))
    t = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in hf.items()}
    save_file(t, str(tmp_path / "model.safetensors"))
    v = load_vit_weights(tmp_path / "model.safetensors", arch, "phikon")
    want = t["embeddings.position_embeddings"].float().numpy()
    np.testing.assert_array_equal(v["params"]["pos_embed"], want)


# ------------------------------------------------------------------ the extractor

def _cfg(tmp_path, arch="tiny_test", **kw):
    c = base_config()
    c.features.encoder = "vit"
    c.features.arch = arch
    c.features.batch_size = 3
    c.features.spot_input = c.features.region_input = c.features.global_input = 32
    c.features.token_grid = 2
    for k, v in kw.items():
        c.features[k] = v
    return c


def test_vit_extractor_encodes_caches_and_refuses(tmp_path, monkeypatch):
    import cv2
    arch = ARCHS["tiny_test"]
    np.savez(tmp_path / "tiny.npz", **random_state_dict(arch, seed=1))
    c = _cfg(tmp_path, weights=str(tmp_path / "tiny.npz"))
    ex = make_extractor(c.features)
    assert isinstance(ex, ViTExtractor) and ex.feature_dim == 128
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (5, 40, 40, 3)).astype(np.uint8)
    f, t = ex.encode(x, 40, tokens=True)         # 40 px -> 32 px (a multiple of 16): 2x2 grid
    assert f.shape == (5, 128) and t.shape == (5, 4, 128) and t.dtype == np.float16
    small = np.stack([cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in x])
    norm = (small / 255.0 - np.array(arch.mean)) / np.array(arch.std)
    cls, patches = ViT(arch).apply(ex.variables, norm.astype(np.float32))
    want, _ = pooled_and_tokens(arch, cls, patches, adaptive_avg_pool, 2)
    np.testing.assert_allclose(f, np.asarray(want), atol=1e-5)      # batch padding: same rows
    # Virchow2-style tokens: [cls, pooled patch token]; their mean is the feature
    np.testing.assert_allclose(t.astype(np.float32).mean(1), f, atol=2e-2)
    bf = make_extractor(_cfg(tmp_path, weights=str(tmp_path / "tiny.npz"),
                             dtype="bfloat16").features).encode(x, 32, False)[0]
    assert np.abs(bf - f).max() < 0.1 * np.abs(f).max()

    # section features + cache keyed by the weights' bytes
    image = rng.integers(0, 255, (96, 96, 3)).astype(np.uint8)
    c.data.spot_size, c.data.region_size, c.data.global_size = 32, 48, 96
    args = ("S1", image, np.array([[20.0, 20.0], [60.0, 70.0]]), np.array([[0, 0], [48, 48]]),
            np.array([[0, 0]]), c.data)
    out = ex.section_features(*args, cache_dir=tmp_path / "cache")
    assert out["spot_feats"].shape == (2, 128) and out["global_tokens"].shape == (1, 4, 128)
    monkeypatch.setattr(ex, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = ex.section_features(*args, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again["spot_feats"], out["spot_feats"])
    np.savez(tmp_path / "tiny.npz", **random_state_dict(arch, seed=2))   # other weights
    other = make_extractor(c.features)
    assert other.cache_key(*args[:5], c.data) != ex.cache_key(*args[:5], c.data)

    with pytest.raises(ConfigError, match="features.weights"):
        make_extractor(_cfg(tmp_path).features)
    with pytest.raises(ConfigError, match="features.arch='vit_h'"):
        make_extractor(_cfg(tmp_path, arch="vit_h", weights="x.npz").features)
