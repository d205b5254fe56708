"""MobileNetV3 backbone: block tables, output shapes at strides 4/8/16, weight loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reloc_ros.frontends.implicit.mobilenetv3 import (LARGE_BLOCKS, SMALL_BLOCKS, MobileNetV3, SqueezeExcite,
                                                      load_backbone_weights)

# (arch, output_stride, dilated) -> channels of the last block kept (paper Tables 1 and 2)
EXPECTED = {
    ("large", 4, False): 24, ("large", 8, False): 40, ("large", 16, False): 112, ("large", 16, True): 160,
    ("small", 4, False): 16, ("small", 8, False): 24, ("small", 16, False): 48, ("small", 16, True): 96,
}


@pytest.mark.parametrize("key", list(EXPECTED))
def test_output_shapes(key):
    arch, os_, dilated = key
    net = MobileNetV3(arch, os_, dilated).eval()
    y = net(torch.randn(2, 3, 96, 128))
    assert y.shape == (2, EXPECTED[key], 96 // os_, 128 // os_)
    assert net.out_channels == EXPECTED[key]


def test_full_tables_and_block_structure():
    assert len(LARGE_BLOCKS) == 15 and len(SMALL_BLOCKS) == 11
    assert [b[2] for b in LARGE_BLOCKS][-1] == 160 and [b[2] for b in SMALL_BLOCKS][-1] == 96
    # Large has SE in 8 blocks, Small in 9 (paper tables)
    assert sum(b[3] for b in LARGE_BLOCKS) == 8 and sum(b[3] for b in SMALL_BLOCKS) == 9
    net = MobileNetV3("large", 16, dilated=True)
    assert len(net.blocks) == 15
    ses = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    assert len(ses) == 8
    # SE squeeze width: expansion / 4 rounded to a multiple of 8 (e.g. 72 -> 24, 120 -> 32, 960 -> 240)
    assert [se.fc1.out_channels for se in ses][:3] == [24, 32, 32]
    assert ses[-1].fc1.out_channels == 240
    assert any(isinstance(m, nn.Hardswish) for m in net.modules())
    dil = [m.dilation[0] for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dil[-3:] == [2, 2, 2] and max(m.stride[0] for m in net.blocks[-1].modules()
                                         if isinstance(m, nn.Conv2d)) == 1


def test_bad_options_raise():
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV3("large", 32)
    with pytest.raises(ValueError, match="arch"):
        MobileNetV3("medium")
    with pytest.raises(ValueError, match="dilated"):
        MobileNetV3("large", 8, dilated=True)


def test_load_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    a, b = MobileNetV3("small", 8).eval(), MobileNetV3("small", 8).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01)
    save_file({f"backbone.{k}": v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    x = torch.randn(1, 3, 64, 64)
    for f in ("w.safetensors", "w.pt"):
        c = MobileNetV3("small", 8).eval()
        loaded = load_backbone_weights(c, tmp_path / f, strict=True)
        assert len(loaded) == len(a.state_dict())
        torch.testing.assert_close(c(x), a(x))
    assert not torch.allclose(b(x), a(x))
    with pytest.raises(ValueError, match="missing"):
        load_backbone_weights(MobileNetV3("large", 16), tmp_path / "w.pt", strict=True)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_backbone_weights(MobileNetV3("small", 8), tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(c, tmp_path / "missing.pt")
