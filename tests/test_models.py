"""Tests of ray_rthpo.models: shapes, parameter counts, BatchNorm detection, float64, torch.func."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from ray_rthpo.config import ModelConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.models import build_model, has_batchnorm

NAMES = ("mlp", "lenet", "resnet18")
SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 100), ((1, 8, 8), 10)]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("shape", "classes"), SHAPES)
def test_output_shape(name: str, shape: tuple[int, int, int], classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), shape, classes)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ("mlp", "lenet"))
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (3, 5, 7), (1, 4, 4)])
def test_tiny_inputs_still_work(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(ModelConfig(name=name), shape, 3)
    assert model(torch.randn(2, *shape)).shape == (2, 3)


def test_mlp_parameter_count_matches_paper() -> None:
    model = build_model(ModelConfig(name="mlp", hidden=(512, 256)), (1, 28, 28), 10)
    assert _count(model) == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_mlp_uses_configured_hidden_widths() -> None:
    model = build_model(ModelConfig(name="mlp", hidden=(7,)), (1, 2, 2), 3)
    assert _count(model) == 4 * 7 + 7 + 7 * 3 + 3


def test_lenet_classic_parameter_count() -> None:
    # The classic LeNet-5 on 28x28 (conv pad 2): 156 + 2416 + 48120 + 10164 + 850.
    model = build_model(ModelConfig(name="lenet"), (1, 28, 28), 10)
    assert _count(model) == 61706


def test_resnet18_cifar_parameter_count() -> None:
    model = build_model(ModelConfig(name="resnet18"), (3, 32, 32), 10)
    assert _count(model) == 11_173_962
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_has_batchnorm_only_for_resnet18() -> None:
    found = {name: has_batchnorm(build_model(ModelConfig(name=name), (1, 8, 8), 10)) for name in NAMES}
    assert found == {"mlp": False, "lenet": False, "resnet18": True}


@pytest.mark.parametrize("name", NAMES)
def test_float64_model(name: str) -> None:
    model = build_model(ModelConfig(name=name), (1, 8, 8), 10).double()
    out = model(torch.randn(3, 1, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (3, 10)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_initial_weights(name: str) -> None:
    def init(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(ModelConfig(name=name), (1, 8, 8), 10).state_dict()

    a, b, c = init(3), init(3), init(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


@pytest.mark.parametrize("name", ("mlp", "lenet"))
def test_forward_over_reverse_hvp(name: str) -> None:
    """jvp(grad(loss)) with functional_call gives the Hessian-vector product (checked vs double backward)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), (1, 8, 8), 10).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}

    def loss_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    g, hv = jvp(grad(loss_fn), (params,), (tangent,))
    assert g.keys() == params.keys() and hv.keys() == params.keys()

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    g2 = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), create_graph=True)
    dot = sum((gi * tangent[k]).sum() for gi, k in zip(g2, leaves, strict=True))
    hv2 = torch.autograd.grad(dot, list(leaves.values()))
    for (k, v), ref in zip(hv.items(), hv2, strict=True):
        assert torch.allclose(v, ref, atol=1e-10), k


def test_resnet18_functional_grad_with_buffers() -> None:
    """grad through functional_call works for the BatchNorm model when the buffers are arguments.

    In train mode BatchNorm updates its running buffers in place; torch.func only allows that when
    the buffers are inputs of the transformed function (not captured), so they are passed in.
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18"), (1, 8, 8), 10).train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 1])

    def loss_fn(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, (p, b), (x,)), y)

    g = grad(loss_fn)(params, buffers)
    assert g.keys() == params.keys()
    assert all(torch.isfinite(v).all() for v in g.values())
    assert int(buffers["bn1.num_batches_tracked"]) == 1


def test_unknown_model_name_raises() -> None:
    cfg = SimpleNamespace(name="x", hidden=(4,))
    with pytest.raises(ConfigError, match=r"model.name must be one of mlp, lenet, resnet18, but got 'x'\."):
        build_model(cfg, (1, 8, 8), 10)  # type: ignore[arg-type]


def test_model_config_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError):
        ModelConfig(name="vgg")
