import pytest
import torch
import torch.nn.functional as F

from dynconv.channel_select import is_channel_adaptive, select_channels
from dynconv.layers import STEM_MODES, DynamicConv2D
from dynconv.models import create_model


@pytest.mark.parametrize("c_in", [1, 2, 3, 5])
def test_dynamic_conv_equals_plain_conv_with_sliced_weight(c_in):
    torch.manual_seed(0)
    conv = DynamicConv2D(5, 8, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, c_in, 11, 13)
    expected = F.conv2d(x, conv.weight[:, :c_in], conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("c_in", [1, 2])
def test_unused_weight_slices_get_no_gradient(c_in):
    conv = DynamicConv2D(3, 4, 3, padding=1)
    conv(torch.randn(2, c_in, 8, 8)).square().sum().backward()
    assert conv.weight.grad[:, c_in:].abs().sum() == 0
    assert conv.weight.grad[:, :c_in].abs().sum() > 0


def test_dynamic_conv_rejects_too_many_channels():
    with pytest.raises(ValueError, match="accepts 1..3"):
        DynamicConv2D(3, 4, 3)(torch.randn(1, 4, 8, 8))


def test_dynamic_conv_loads_plain_conv_state_dict():
    plain = torch.nn.Conv2d(3, 4, 3)
    dyn = DynamicConv2D(3, 4, 3)
    dyn.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(dyn(x), plain(x))


@pytest.mark.parametrize("subset", [(0, 1, 2), (0, 2), (1,), (2,)])
def test_dynamic_resnet18_accepts_every_subset_at_any_size(subset):
    model = create_model("dynamic_resnet18", num_classes=7).eval()
    assert is_channel_adaptive(model)
    for size in (32, 45):
        x = select_channels(torch.randn(2, 3, size, size), subset, adaptive=True)
        assert x.shape[1] == len(subset)
        assert model(x).shape == (2, 7)


def test_plain_model_gets_absent_channels_zeroed():
    model = create_model("resnet18", num_classes=3)
    assert not is_channel_adaptive(model)
    x = torch.ones(1, 3, 4, 4)
    y = select_channels(x, (1,), adaptive=False)
    assert y.shape == x.shape and y[:, 1].eq(1).all() and y[:, [0, 2]].eq(0).all()


def test_unknown_model_lists_choices():
    from dynconv.errors import DynconvError

    with pytest.raises(DynconvError, match="dynamic_resnet18"):
        create_model("resnet1000")


STEP_COPIES = {"index.Tensor", "index_put.default", "index_put_.default", "_index_put_impl_.default",
               "lift_fresh.default", "lift_fresh_copy.default"}


@pytest.mark.parametrize("model_args", [dict(name="resnet18"),
                                        *(dict(name="dynamic_resnet18", stem_mode=m) for m in STEM_MODES)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_subset_step_makes_no_index_tensor_from_python_data(model_args, channels_last):
    """On CUDA, indexing with a Python list copies it to the device and waits for the GPU (a stream sync) on every
    call: a training step over a gathered subset (RB) indexes with device tensors made once instead."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dynconv.channel_select import forward_subset
    from dynconv.train.strategies.base import prepare

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(f"{func._overloadpacket.__name__}.{func._overloadname}")
            return func(*args, **(kwargs or {}))

    model_args = dict(model_args)
    model = create_model(model_args.pop("name"), num_classes=3, **model_args)
    prepare(model, channels_last=channels_last, compile=False)  # as training does (a 5-D depthwise bank included)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=fmt)
    forward_subset(model, x, (0, 2)).sum().backward()  # the first step may make its index tensors
    with Ops() as ops:
        forward_subset(model, x, (0, 2)).sum().backward()
    assert "index_select.default" in ops.names or not is_channel_adaptive(model)
    assert not ops.names & STEP_COPIES, sorted(ops.names & STEP_COPIES)
