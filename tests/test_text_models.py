"""Text-conditional networks: caption embeddings (B, T, D) as the condition, a null caption for guidance."""

import pytest
import torch

from diffusion_curriculum import samplers
from diffusion_curriculum.losses import Denoiser
from diffusion_curriculum.models import create_model
from diffusion_curriculum.models.layers import TextEmbedder
from diffusion_curriculum.schedules import make_schedule

TEXT_DIM = 12
NETS = {
    "DiT-tiny/2": {"depth": 2, "hidden_size": 64, "num_heads": 4},
    "UNet-small": {},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its (partly zero) init so that all paths are live."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def text_net(name: str, tokens: int, perturb: bool = True, **kw):
    model = create_model(
        name, input_size=16, in_channels=1, text_dim=TEXT_DIM, text_tokens=tokens, **NETS[name], **kw
    )
    # Zero-initialised output layers make every net output 0 at first.
    return _perturb(model) if perturb else model


def _inputs(batch: int, tokens: int):
    return torch.randn(batch, 1, 16, 16), torch.rand(batch) * 1000, torch.randn(batch, tokens, TEXT_DIM)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("tokens", [1, 4])
def test_output_shape_and_condition_attribute(name, tokens):
    model = text_net(name, tokens).eval()
    assert model.condition == "text" and model.num_classes == 0
    x, t, y = _inputs(3, tokens)
    with torch.no_grad():
        assert model(x, t, y).shape == x.shape
        assert model(x, t).shape == x.shape
        if tokens == 1:  # a pooled embedding may come without its token axis
            assert torch.equal(model(x, t, y[:, 0]), model(x, t, y))


@pytest.mark.parametrize("name", NETS)
def test_wrong_caption_shape_is_rejected(name):
    model = text_net(name, 4)
    x, t, y = _inputs(2, 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 12\).*got \(2, 3, 12\)"):
        model(x, t, y[:, :3])
    with pytest.raises(ValueError, match="got"):
        model(x, t, y[:, 0])  # (B, D) is only a pooled caption's form


def test_condition_attribute_of_every_kind():
    kinds = {"class": {"num_classes": 3}, "text": {"text_dim": 4}, "none": {}}
    for kind, kw in kinds.items():
        for name in NETS:
            assert create_model(name, input_size=16, in_channels=1, **kw).condition == kind


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("tokens", [1, 4])
def test_caption_changes_the_output(name, tokens):
    model = text_net(name, tokens).eval()
    x, t, y = _inputs(1, tokens)
    x, t = x.repeat(2, 1, 1, 1), t.repeat(2)
    with torch.no_grad():
        out = model(x, t, torch.cat([y, torch.randn_like(y)]))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", NETS)
def test_dit_reads_caption_tokens_unet_only_their_mean(name):
    # Reordering the tokens keeps their mean: only the DiT, which attends to each token, may notice.
    # In float64, so that the mean's summation order (float32 rounding, ~1e-6 after the net) cannot
    # pass for a difference; the DiT's differs by ~1e-3.
    model = text_net(name, 4).eval().double()
    x, t, y = (v.double() for v in _inputs(2, 4))
    with torch.no_grad():
        same = torch.allclose(model(x, t, y), model(x, t, y.flip(1)), rtol=0, atol=1e-9)
    assert same == (name == "UNet-small")


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("fixed_null", [True, False])
def test_force_drop_ids_is_exactly_the_null_caption(name, fixed_null):
    null = torch.randn(4, TEXT_DIM) if fixed_null else None
    model = text_net(name, 4, text_null=null, class_dropout=0.0)
    x, t, y = _inputs(3, 4)
    drop = torch.tensor([True, False, True])
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            uncond = model(x, t, None)
            assert torch.equal(model(x, t, y, force_drop_ids=torch.ones(3, dtype=torch.bool)), uncond)
            mixed = model(x, t, y, force_drop_ids=drop)
            cond = model(x, t, y)
        torch.testing.assert_close(mixed[drop], uncond[drop], rtol=0, atol=1e-6)
        torch.testing.assert_close(mixed[~drop], cond[~drop], rtol=0, atol=1e-6)
        assert not torch.allclose(cond[0], uncond[0])


@pytest.mark.parametrize("name", NETS)
def test_caption_dropout_only_in_training(name):
    model = text_net(name, 2, class_dropout=1.0)
    x, t, y = _inputs(3, 2)
    with torch.no_grad():
        model.train()
        assert torch.equal(model(x, t, y), model(x, t, None))
        model.eval()
        assert not torch.allclose(model(x, t, y), model(x, t, None))


def test_caption_dropout_rate():
    embedder = TextEmbedder(TEXT_DIM, 8, tokens=2, dropout=0.25).train()
    y = torch.randn(4000, 2, TEXT_DIM)
    dropped = (embedder.resolve(y, 4000) == embedder.null).all(dim=(1, 2)).float().mean()
    assert 0.2 < dropped < 0.3


@pytest.mark.parametrize("name", NETS)
def test_fixed_null_is_a_buffer_learned_null_a_parameter_and_checkpoints_cross(name):
    null = torch.randn(4, TEXT_DIM)
    fixed = text_net(name, 4, text_null=null).eval()
    learned = text_net(name, 4).eval()
    params = dict(fixed.named_parameters())
    assert "text_embed.null" not in params and torch.equal(fixed.state_dict()["text_embed.null"], null)
    assert "text_embed.null" in dict(learned.named_parameters())
    assert learned.text_embed.null.requires_grad and learned.text_embed.null.std() < 0.1
    # Same keys either way: a sampler that rebuilds the net without the null still loads the checkpoint.
    assert fixed.state_dict().keys() == learned.state_dict().keys()
    learned.load_state_dict(fixed.state_dict())
    x, t, y = _inputs(2, 4)
    with torch.no_grad():
        assert torch.equal(learned(x, t, None), fixed(x, t, None))
        assert torch.equal(learned(x, t, y), fixed(x, t, y))


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="num_classes=10.*text_dim=12.*not both"):
        create_model("DiT-tiny/2", input_size=16, in_channels=1, num_classes=10, text_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="not both"):
        create_model("UNet-small", input_size=16, in_channels=1, num_classes=10, text_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="text_null is given but text_dim is 0"):
        create_model("DiT-tiny/2", input_size=16, in_channels=1, text_null=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"null caption embedding must have shape \(4, 12\)"):
        text_net("DiT-tiny/2", 4, text_null=torch.zeros(1, TEXT_DIM))


def test_class_and_unconditional_nets_have_no_text_weights():
    for kw in ({"num_classes": 10}, {}):
        for name in NETS:
            model = create_model(name, input_size=16, in_channels=1, **kw)
            assert not [key for key in model.state_dict() if "text" in key]
            assert model.null_class == kw.get("num_classes", 0)


@pytest.mark.parametrize("name", NETS)
def test_every_parameter_gets_gradient(name):
    model = text_net(name, 4).train()
    x, t, y = _inputs(4, 4)
    drop = torch.tensor([True, False, False, False])  # the learned null must be reachable too
    (model(x, t, y, force_drop_ids=drop) - x).pow(2).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guidance_with_a_real_net_is_the_cfg_combination(kind):
    # Ho & Salimans 2022: D_null + s (D_y - D_null), with D_null the y=None prediction of the same net.
    schedule = make_schedule("vp")
    if kind == "class":
        net = _perturb(create_model("DiT-tiny/2", input_size=16, in_channels=1, num_classes=5, depth=2))
        y = torch.tensor([0, 3, 4])
    else:
        net = text_net("DiT-tiny/2", 4)
        y = torch.randn(3, 4, TEXT_DIM)
    # x0 prediction: eps's division by alpha would magnify the batched calls' float32 rounding at high t.
    denoiser = Denoiser(net.eval(), schedule, "x0")
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 900])
    with torch.no_grad():
        guided = samplers.guided_x0_fn(denoiser, y, scale=2.5)(x, t)
        cond, uncond = denoiser(x, t, y), denoiser(x, t, None)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
