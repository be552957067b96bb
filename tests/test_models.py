"""Tests for the denoising networks (diffusion_curriculum.models)."""

from __future__ import annotations

import pytest
import torch
from dit_official import dit_reference_pos_embed, official_state
from torch import nn

from diffusion_curriculum.models import MODELS, count_parameters, create_model
from diffusion_curriculum.models.dit import (
    DiT,
    load_dit_checkpoint,
    official_dit_key,
    sincos_pos_embed_2d,
)
from diffusion_curriculum.models.layers import timestep_embedding

DIT_SIZES = ["tiny", "S", "B", "L", "XL"]
PATCHES = [2, 4, 8]
SMALL_NETS = ["DiT-tiny/2", "DiT-tiny/4", "UNet-small"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(batch: int, channels: int, size: int, num_classes: int = 10):
    x = torch.randn(batch, channels, size, size)
    t = torch.rand(batch) * 1000
    y = torch.randint(0, num_classes, (batch,))
    return x, t, y


def _perturb(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Move every parameter off its (partly zero) init so that all paths are live."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", ["tiny", "S", "B"])
@pytest.mark.parametrize("patch", PATCHES)
def test_dit_forward_shape(size, patch):
    model = create_model(f"DiT-{size}/{patch}", input_size=16, in_channels=3, num_classes=10).eval()
    x, t, y = _inputs(2, 3, 16)
    with torch.no_grad():
        assert model(x, t, y).shape == x.shape


@pytest.mark.parametrize("size", ["L", "XL"])
@pytest.mark.parametrize("patch", PATCHES)
def test_dit_large_shape_on_meta(size, patch):
    # Real construction of L/XL costs seconds and GBs; meta tensors check the wiring only.
    with torch.device("meta"):
        model = create_model(f"DiT-{size}/{patch}", input_size=32, in_channels=4, num_classes=10)
        x = torch.empty(2, 4, 32, 32)
        out = model(x, torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == x.shape


def test_dit_xl2_parameter_count_matches_paper():
    # The reference DiT-XL/2 (32x32x4 latents, 1000 classes, learned sigma) has 675,129,632 parameters
    # including its frozen 256x1152 position table.  Ours has no position parameters and predicts 4
    # instead of 8 channels per pixel: 675,129,632 - 256*1152 - (1152*16 + 16) = 674,816,272.
    with torch.device("meta"):
        model = create_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000)
    assert count_parameters(model) == 674_816_272


def test_registry_names():
    expected = {f"DiT-{s}/{p}" for s in DIT_SIZES for p in PATCHES} | {"UNet-small", "UNet-base"}
    assert set(MODELS) == expected


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_small_shape(size, channels):
    model = create_model("UNet-small", input_size=size, in_channels=channels, num_classes=10).eval()
    x, t, y = _inputs(2, channels, size)
    with torch.no_grad():
        assert model(x, t, y).shape == x.shape


def test_unet_base_shape_and_28_rejected():
    model = create_model("UNet-base", input_size=32, in_channels=3).eval()
    x, t, _ = _inputs(2, 3, 32)
    with torch.no_grad():
        assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match="28x28"):
        create_model("UNet-base", input_size=28, in_channels=1)


@pytest.mark.parametrize("name", SMALL_NETS)
def test_28x28_inputs(name):
    model = create_model(name, input_size=28, in_channels=1, num_classes=10).eval()
    x, t, y = _inputs(2, 1, 28)
    with torch.no_grad():
        assert model(x, t, y).shape == x.shape


def test_dit_rejects_indivisible_size_and_wrong_input():
    with pytest.raises(ValueError, match="28x28.*patch size 8"):
        create_model("DiT-tiny/8", input_size=28, in_channels=1)
    model = create_model("DiT-tiny/4", input_size=28, in_channels=1)
    with pytest.raises(ValueError, match="got"):
        model(torch.randn(2, 1, 32, 32), torch.rand(2))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="DiT-huge/2") as err:
        create_model("DiT-huge/2", input_size=32, in_channels=3)
    assert "DiT-tiny/4" in str(err.value) and "UNet-small" in str(err.value)


def test_create_model_overrides_configuration():
    model = create_model("DiT-tiny/4", input_size=16, in_channels=1, depth=2)
    assert len(model.blocks) == 2
    assert model.model_name == "DiT-tiny/4"


def test_count_parameters_excludes_buffers_and_frozen():
    model = create_model("DiT-tiny/4", input_size=16, in_channels=1)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.patch_embed.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.patch_embed.weight.numel()
    assert count_parameters(model, trainable_only=False) == total
    assert "pos_embed" not in model.state_dict()


# --------------------------------------------------------------------------- DiT internals


def test_timestep_embedding_properties():
    t = torch.tensor([0.0, 1.0, 500.0, 999.0])
    emb = timestep_embedding(t, 256)
    assert emb.shape == (4, 256)
    assert torch.allclose(emb[0, :128], torch.ones(128)) and torch.allclose(emb[0, 128:], torch.zeros(128))
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_sincos_pos_embed_is_distinct_per_position():
    emb = sincos_pos_embed_2d(64, 4, 5)
    assert emb.shape == (20, 64)
    assert torch.cdist(emb, emb).add(torch.eye(20)).min() > 0


def test_dit_patches_map_back_to_their_own_location():
    # With no transformer blocks the net is per-token, so an output patch may depend only on the
    # input patch at the same place: this checks patchify / pos-embed / unpatchify agree.
    model = _perturb(DiT(input_size=8, in_channels=2, patch_size=4, depth=0, hidden_size=32, num_heads=2))
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    out = model(x, torch.tensor([10.0]))
    for i in range(2):
        for j in range(2):
            (grad,) = torch.autograd.grad(
                out[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].sum(), x, retain_graph=True
            )
            mask = torch.zeros_like(grad, dtype=torch.bool)
            mask[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = True
            assert grad[~mask].abs().max() == 0
            assert grad[mask].abs().max() > 0


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("name", ["DiT-tiny/2", "DiT-tiny/4", "DiT-S/4", "UNet-small"])
def test_zero_output_at_init(name):
    model = create_model(name, input_size=16, in_channels=3, num_classes=10)
    x, t, y = _inputs(2, 3, 16)
    assert torch.count_nonzero(model(x, t, y)) == 0


def test_deterministic_with_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = _perturb(create_model("DiT-tiny/4", input_size=16, in_channels=1, num_classes=10))
        x, t, y = _inputs(4, 1, 16)
        outs.append(model.train()(x, t, y))
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("name", SMALL_NETS)
def test_labels_change_the_output(name):
    model = _perturb(create_model(name, input_size=16, in_channels=1, num_classes=10)).eval()
    x, t, _ = _inputs(1, 1, 16)
    x, t = x.repeat(2, 1, 1, 1), t.repeat(2)
    with torch.no_grad():
        out = model(x, t, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", SMALL_NETS)
def test_none_labels_mean_null_class(name):
    model = _perturb(create_model(name, input_size=16, in_channels=1, num_classes=10)).eval()
    assert model.num_classes == 10 and model.null_class == 10
    x, t, _ = _inputs(3, 1, 16)
    with torch.no_grad():
        null = model(x, t, torch.full((3,), model.null_class))
        assert torch.equal(model(x, t, None), null)
        assert torch.equal(model(x, t), null)
        assert not torch.allclose(model(x, t, torch.zeros(3, dtype=torch.long)), null)


@pytest.mark.parametrize("name", SMALL_NETS)
def test_class_dropout_only_in_training(name):
    model = _perturb(create_model(name, input_size=16, in_channels=1, num_classes=10, class_dropout=1.0))
    x, t, y = _inputs(3, 1, 16)
    with torch.no_grad():
        model.train()
        assert torch.equal(model(x, t, y), model(x, t, None))
        model.eval()
        assert not torch.allclose(model(x, t, y), model(x, t, None))


def test_class_dropout_rate_and_forced_drop():
    model = create_model("DiT-tiny/4", input_size=16, in_channels=1, num_classes=10, class_dropout=0.25)
    table = model.y_embed.table
    y = torch.zeros(4000, dtype=torch.long)
    model.train()
    dropped = (model.y_embed(y, 4000) == table.weight[10]).all(dim=1).float().mean()
    assert 0.2 < dropped < 0.3
    model.eval()
    forced = model.y_embed(y[:4], 4, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    assert torch.equal(forced[0], table.weight[10]) and torch.equal(forced[1], table.weight[0])


@pytest.mark.parametrize("name", SMALL_NETS)
def test_unconditional_ignores_labels(name):
    model = _perturb(create_model(name, input_size=16, in_channels=1, num_classes=0))
    assert model.num_classes == 0 and model.null_class == 0
    x, t, y = _inputs(2, 1, 16)
    with torch.no_grad():
        assert torch.equal(model(x, t, y), model(x, t, None))


def test_scalar_time_is_broadcast():
    model = _perturb(create_model("DiT-tiny/4", input_size=16, in_channels=1)).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor(250.0)), model(x, torch.full((3,), 250.0)))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", SMALL_NETS)
def test_every_parameter_gets_gradient_after_perturbation(name):
    model = _perturb(create_model(name, input_size=16, in_channels=1, num_classes=10)).train()
    x, t, y = _inputs(4, 1, 16)
    y[0] = model.null_class  # the null row must be reachable too
    (model(x, t, y) - x).pow(2).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", SMALL_NETS)
def test_training_from_default_init_reaches_every_parameter(name):
    # Zero-initialised gates/outputs block gradient to earlier layers at step 0; after a few steps
    # every parameter must be live (adaLN-Zero / ADM zero-init must not create dead weights).
    model = create_model(name, input_size=16, in_channels=1, num_classes=10, class_dropout=0.5).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, y = _inputs(8, 1, 16)
    first = None
    for _ in range(4):
        opt.zero_grad()
        loss = (model(x, t, y) - x).pow(2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient after training: {dead}"
    with torch.no_grad():
        assert (model(x, t, y) - x).pow(2).mean().item() < first


# --------------------------------------------------------------------------- official DiT weights


@pytest.mark.parametrize("dim,size", [(64, 4), (128, 8), (1152, 16)])
def test_pos_embed_is_dits_layout(dim, size):
    ours = sincos_pos_embed_2d(dim, size, size)
    ref = torch.from_numpy(dit_reference_pos_embed(dim, size)).float()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # Columns in the first half: tokens 0 and 1 (same row, next column) differ there, not in the second.
    assert torch.equal(ours[0, dim // 2 :], ours[1, dim // 2 :]) and not torch.equal(ours[0], ours[1])


def test_every_official_dit_key_maps_to_a_parameter_of_the_same_shape():
    state = official_state(learn_sigma=False)
    net = DiT(input_size=8, in_channels=4, patch_size=2, depth=2, hidden_size=64, num_heads=4, num_classes=10)
    own = net.state_dict()
    mapped = {official_dit_key(k): v for k, v in state.items() if k != "pos_embed"}
    assert set(mapped) == set(own)
    assert all(own[k].shape == v.shape for k, v in mapped.items())
    with pytest.raises(KeyError, match="not a key"):
        official_dit_key("blocks.0.norm1.weight")


def test_load_dit_checkpoint_from_a_file(tmp_path):
    state = official_state(learn_sigma=True)
    path = tmp_path / "DiT-tiny.pt"
    torch.save(state, path)
    net = load_dit_checkpoint(path, num_heads=4)
    assert (net.patch_size, net.grid, net.in_channels, net.num_classes) == (2, (4, 4), 4, 10)
    assert len(net.blocks) == 2
    torch.testing.assert_close(net.pos_embed[0], state["pos_embed"][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(net.blocks[1].mlp[2].weight, state["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(net.y_embed.table.weight, state["y_embedder.embedding_table.weight"])
    # Learned variance dropped: output row r of DiT is (patch cell r // 8, channel r % 8); the eps
    # channels 0..3 of every cell are kept, in order.
    rows = [r for r in range(2 * 2 * 8) if r % 8 < 4]
    torch.testing.assert_close(net.final.linear.weight, state["final_layer.linear.weight"][rows])
    torch.testing.assert_close(net.final.linear.bias, state["final_layer.linear.bias"][rows])
    x, t, y = _inputs(2, 4, 8)
    assert net(x, t, y).shape == x.shape


def test_load_dit_checkpoint_finds_registered_sizes_and_refuses_wrong_tables():
    state = official_state(depth=4, hidden=128, patch=4, channels=1, grid=4, classes=3)
    net = load_dit_checkpoint({"ema": state, "model": {}})  # a train.py checkpoint: its EMA weights
    assert net.model_name == "DiT-tiny/4" and net.blocks[0].attn.num_heads == 4
    bad = dict(state, pos_embed=torch.from_numpy(dit_reference_pos_embed(128, 4)[:, ::-1].copy())[None])
    with pytest.raises(ValueError, match="pos_embed"):
        load_dit_checkpoint(bad)
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.bias"):
        load_dit_checkpoint(dict(state, **{"blocks.0.attn.qkv.bias": torch.zeros(5)}))
