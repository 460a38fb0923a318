"""Student presets, EOT pooling, MFD masking and TinyCLIP weight inheritance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeclip.distill import students as S  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402
from edgeclip.tokenizer import tokenize  # noqa: E402


def test_presets_build_the_documented_shapes():
    assert {"micro", "tinyclip-8m-arch", "vit-t-16-arch", "procedural-teacher"} <= set(S.presets())
    tiny = S.load_arch("tinyclip-8m-arch")
    shared = Path(__file__).resolve().parents[2] / "shared/weights/tinyclip-vit-8m16-text3m"
    if (shared / "open_clip_config.json").is_file():  # the released config, when checked out beside us
        ref = json.loads((shared / "open_clip_config.json").read_text())
        assert tiny["embed_dim"] == ref["embed_dim"] == 512
        assert ref["vision_cfg"]["width"] == tiny["vision_width"] and ref["text_cfg"]["layers"] == 3
    assert tiny["embed_dim"] == 512
    assert (tiny["vision_width"], tiny["vision_layers"], tiny["patch_size"]) == (256, 10, 16)
    assert (tiny["text_width"], tiny["text_layers"], tiny["text_heads"]) == (256, 3, 4)
    assert tiny["hidden_act"] == "gelu"
    vt = S.clip_config(S.load_arch("vit-t-16-arch"))
    assert (
        vt.vision_config.hidden_size,
        vt.vision_config.num_hidden_layers,
        vt.vision_config.num_attention_heads,
    ) == (192, 12, 3)
    assert (
        vt.text_config.hidden_size,
        vt.text_config.num_hidden_layers,
        vt.text_config.num_attention_heads,
    ) == (384, 12, 6)
    assert vt.projection_dim == 512
    m = S.build_model(S.load_arch("micro"), seed=0)
    assert S.arch_of(m) == S.load_arch("micro")


def test_json_config_and_bad_architectures(tmp_path):
    arch = S.load_arch("micro")
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({**arch, "vision_layers": 3}))
    assert S.load_arch(str(p))["vision_layers"] == 3
    with pytest.raises(InputError, match="neither a preset"):
        S.load_arch("resnet-9000")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**arch, "vision_heads": 5}))
    with pytest.raises(InputError, match="not divisible"):
        S.load_arch(str(bad))
    (tmp_path / "short.json").write_text('{"embed_dim": 8}')
    with pytest.raises(InputError, match="lacks"):
        S.load_arch(str(tmp_path / "short.json"))


def test_text_pooling_lands_on_eot():
    m = S.build_model(S.load_arch("micro"), seed=0).eval()
    assert m.config.text_config.eos_token_id == S.EOT and m.config.text_config.pad_token_id == 0
    ids = torch.from_numpy(
        tokenize(["a red circle", "a photo of a small blue star in the top left"], 24)
    )
    captured = {}
    h = m.text_model.final_layer_norm.register_forward_hook(
        lambda mod, i, o: captured.setdefault("h", o)
    )
    with torch.no_grad():
        got = S.encode_text(m, ids)
    h.remove()
    eot = (ids == S.EOT).int().argmax(1)
    assert eot.tolist() == ids.argmax(1).tolist()  # the runtime's rule picks the same position
    want = m.text_projection(captured["h"][torch.arange(2), eot])
    torch.testing.assert_close(got, want)
    # padding after EOT does not change the embedding (causal mask)
    longer = torch.zeros(2, 24, dtype=torch.long)
    longer[:, :] = ids
    longer[0, eot[0] + 1 :] = 0
    with torch.no_grad():
        torch.testing.assert_close(S.encode_text(m, longer), got)


def test_mfd_masking_really_drops_tokens():
    m = S.build_model(S.load_arch("micro"), seed=0).eval()  # 32 px, patch 8: 16 patches
    x = torch.randn(3, 3, 32, 32)
    shapes = []
    h = m.vision_model.encoder.layers[0].register_forward_hook(
        lambda mod, i, o: shapes.append(tuple(i[0].shape))
    )
    with torch.no_grad():
        full = S.encode_image(m, x)
        masked = S.encode_image(m, x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
        ref = m.get_image_features(pixel_values=x).pooler_output
    h.remove()
    assert shapes[0] == (3, 17, 32)  # class token + 16 patches
    assert shapes[1] == (3, 5, 32)  # class token + 4 kept patches
    assert shapes[2] == (3, 17, 32)
    torch.testing.assert_close(full, ref)
    assert not torch.allclose(masked, full)


def test_mfd_keeps_class_token_and_positions():
    m = S.build_model(S.load_arch("micro"), seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    h = m.vision_model.pre_layrnorm.register_forward_hook(
        lambda mod, i, o: seen.setdefault("in", i[0])
    )
    with torch.no_grad():
        S.encode_image(m, x, mask_ratio=0.75, generator=torch.Generator().manual_seed(1))
        full = m.vision_model.embeddings(x)  # positional embeddings already added
    h.remove()
    kept = seen["in"]
    torch.testing.assert_close(kept[:, 0], full[:, 0])
    for b in range(
        2
    ):  # every kept token is one of the full sequence's patch tokens (pos added before)
        for tok in kept[b, 1:]:
            assert torch.isclose(full[b, 1:], tok).all(1).any()


def test_inherited_tensors_equal_teacher_slices():
    t = S.build_model(S.load_arch("micro-teacher"), seed=1)
    s = S.build_model(S.load_arch("micro"), seed=2)
    mapping = S.inherit_weights(s, t)
    ts, ss = t.state_dict(), s.state_dict()
    assert (
        mapping["vision_model.encoder.layers.1.mlp.fc1.weight"]
        == "vision_model.encoder.layers.2.mlp.fc1.weight"
    )
    assert (
        mapping["text_model.encoder.layers.1.mlp.fc1.weight"]
        == "text_model.encoder.layers.1.mlp.fc1.weight"
    )
    # vision: teacher 64 wide, 4 heads of 16; student 32 wide, 2 heads of 16
    tq = ts["vision_model.encoder.layers.2.self_attn.q_proj.weight"]
    torch.testing.assert_close(
        ss["vision_model.encoder.layers.1.self_attn.q_proj.weight"], tq[:32, :32]
    )
    # text: teacher 48 wide, 3 heads of 16 → student 32, 2 heads: rows of heads 0 and 1
    tv = ts["text_model.encoder.layers.0.self_attn.v_proj.weight"].numpy()
    sv = ss["text_model.encoder.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.array_equal(sv, np.concatenate([tv[0:16, :32], tv[16:32, :32]]))
    to = ts["text_model.encoder.layers.0.self_attn.out_proj.weight"].numpy()
    assert np.array_equal(
        ss["text_model.encoder.layers.0.self_attn.out_proj.weight"].numpy(), to[:32, :32]
    )
    assert np.array_equal(ss["text_model.embeddings.token_embedding.weight"].numpy(),
                          ts["text_model.embeddings.token_embedding.weight"].numpy()[:, :32])  # fmt: skip
    assert np.array_equal(
        ss["visual_projection.weight"].numpy(), ts["visual_projection.weight"].numpy()[:32, :32]
    )
    assert np.array_equal(ss["vision_model.embeddings.patch_embedding.weight"].numpy(),
                          ts["vision_model.embeddings.patch_embedding.weight"].numpy()[:32])  # fmt: skip
    assert ss["logit_scale"].item() == ts["logit_scale"].item()
    assert len(mapping) == len(ss)  # every student tensor inherited


def test_inherit_heads_sliced_when_head_width_differs():
    t_arch = {**S.load_arch("micro-teacher"), "text_width": 48, "text_heads": 2}  # head width 24
    t = S.build_model(t_arch, seed=1)
    s = S.build_model(S.load_arch("micro"), seed=2)  # text: 2 heads of 16
    S.inherit_weights(s, t)
    tk = t.state_dict()["text_model.encoder.layers.0.self_attn.k_proj.weight"].numpy()
    sk = s.state_dict()["text_model.encoder.layers.0.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(sk, np.concatenate([tk[0:16, :32], tk[24:40, :32]]))
    with pytest.raises(InputError, match="exceeds"):
        S.inherit_weights(t, s)


def test_import_edgeclip_does_not_import_the_distill_stage():
    import subprocess
    import sys

    code = "import sys, edgeclip; assert 'edgeclip.distill' not in sys.modules and 'torch' not in sys.modules"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(S.CONFIG_DIR.parents[2]),
    )
    assert r.returncode == 0, r.stderr
