import pytest
import torch
from torch import nn

from debugger.capture import (
    ActivationCapture,
    capture,
    predictions_from_logits,
    reduce_activation,
    resolve_layer,
    run_capture,
    stream_capture,
)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        raise RuntimeError("boom")


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_resolve_layer_finds_dotted_names():
    net = TinyNet()
    assert resolve_layer(net, "features.0") is net.features[0]
    assert resolve_layer(net, "fc") is net.fc


def test_resolve_layer_unknown_name_lists_nearest():
    with pytest.raises(ValueError, match=r"Expected `layer` to be a layer.*'features\.1'"):
        resolve_layer(TinyNet(), "features.l")
    with pytest.raises(ValueError, match="Expected `layer`"):
        resolve_layer(TinyNet(), "")


def test_reduce_activation_exact_values():
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert torch.equal(reduce_activation(x, "mean"), torch.tensor([[1.5, 5.5]]))
    assert torch.equal(reduce_activation(x, "max"), torch.tensor([[3.0, 7.0]]))
    assert reduce_activation(x, "none", torch.float16).dtype == torch.float16
    flat = torch.ones(2, 5)
    assert reduce_activation(flat, "mean") is flat
    with pytest.raises(ValueError, match="Expected `reduce`"):
        reduce_activation(x, "sum")  # type: ignore[arg-type]


def test_capture_matches_manual_forward():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(2, 3, 6, 6)
    out, acts = capture(net, ["features.2", "fc"], x)
    expected_feat = net.features(x)
    torch.testing.assert_close(acts["features.2"], expected_feat)
    torch.testing.assert_close(acts["fc"], out)
    torch.testing.assert_close(out, net(x))


def test_hooks_removed_after_context_and_after_raising_forward():
    net = Exploding()
    with ActivationCapture(net, "conv") as cap:
        assert _hook_count(net) == 1
    assert _hook_count(net) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationCapture(net, "conv") as cap:
            net(torch.zeros(1, 3, 2, 2))
    assert _hook_count(net) == 0
    assert tuple(cap.activations["conv"].shape) == (1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        capture(net, "conv", torch.zeros(1, 3, 2, 2))
    assert _hook_count(net) == 0
    assert net.training


def test_unknown_layer_registers_nothing():
    net = TinyNet()
    with pytest.raises(ValueError, match="Nearest valid names"):
        ActivationCapture(net, ["fc", "nope"])
    with pytest.raises(ValueError, match="at least one layer"):
        ActivationCapture(net, [])
    assert _hook_count(net) == 0


def test_training_flags_and_grads_untouched():
    torch.manual_seed(0)
    net = TinyNet().train()
    net.features[1].eval()  # a caller's frozen BatchNorm must stay frozen, the rest must stay in train mode
    x = torch.randn(4, 3, 5, 5)
    net(x).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    running = net.features[1].running_mean.clone()
    flags = [m.training for m in net.modules()]
    data = [(x, torch.zeros(4, dtype=torch.long))]
    run_capture(net, "features.2", data, reduce="mean")
    capture(net, "fc", x)
    assert [m.training for m in net.modules()] == flags
    for p, g in zip(net.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    assert torch.equal(net.features[1].running_mean, running)


def test_eval_mode_is_used_during_capture():
    net = TinyNet().train()
    seen = []
    net.features[1].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    capture(net, "fc", torch.randn(2, 3, 4, 4))
    assert seen == [False]
    assert net.features[1].training


def test_stream_chunks_and_correctness_from_same_pass():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(7, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    chunks = list(stream_capture(net, ["fc"], [(x[:5], y[:5]), (x[5:], y[5:])], chunk_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1, 2]
    r = run_capture(net, "fc", [(x[:5], y[:5]), (x[5:], y[5:])], chunk_size=2, keep_logits=True)
    logits = net(x)
    torch.testing.assert_close(r.activations["fc"], logits)
    assert torch.equal(r.predictions, logits.argmax(1))
    assert torch.equal(r.correct, logits.argmax(1) == y)
    assert r.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_stream_reads_contract_dicts_and_keeps_concepts():
    net = TinyNet()
    batch = {
        "image": torch.randn(3, 3, 4, 4),
        "target": torch.tensor([0, 1, 2]),
        "concepts": torch.tensor([[1.0], [0.0], [1.0]]),
        "concept_masks": torch.zeros(3, 1, 4, 4, dtype=torch.bool),
    }
    r = run_capture(net, "features.2", [batch], reduce="max", dtype=torch.float16, keep_images=True)
    assert r.activations["features.2"].shape == (3, 4)
    assert r.activations["features.2"].dtype == torch.float16
    assert torch.equal(r.concepts, batch["concepts"])
    assert r.concept_masks.shape == (3, 1, 4, 4)
    assert torch.equal(r.images, batch["image"])


def test_segmentation_per_pixel_correctness():
    net = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1, 0, 0] = 1.0  # pixel (0, 0) predicts class 1, all others class 0 (ties go to argmax 0)
    x[0, 0, 1, 1] = 1.0
    y = torch.tensor([[[1, 1], [0, 0]]])
    r = run_capture(nn.Sequential(net), "0", [(x, y)])
    assert torch.equal(r.predictions, torch.tensor([[[1, 0], [0, 0]]]))
    assert torch.equal(r.correct, torch.tensor([[[True, False], [True, True]]]))


def test_works_under_callers_inference_mode():
    net = TinyNet()
    with torch.inference_mode():
        r = run_capture(net, "features.2", [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))], reduce="mean")
    assert r.activations["features.2"].shape == (2, 4)
    assert _hook_count(net) == 0


def test_empty_probe_set_and_bad_chunk_size():
    net = TinyNet()
    with pytest.raises(ValueError, match="Nearest valid names"):
        run_capture(net, "layer9", [(torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long))])
    with pytest.raises(ValueError, match="Expected `images`"):
        run_capture(net, "fc", [(torch.zeros(3, 2, 2), torch.zeros(1, dtype=torch.long))])
    with pytest.raises(ValueError, match="empty"):
        run_capture(net, "fc", [])
    with pytest.raises(ValueError, match="Expected `chunk_size`"):
        run_capture(net, "fc", [(torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long))], chunk_size=0)


def test_mismatched_target_shape_is_an_error():
    net = TinyNet()
    seg_targets = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="Expected predictions of shape"):
        run_capture(net, "fc", [(torch.zeros(2, 3, 4, 4), seg_targets)])
    assert _hook_count(net) == 0


def test_max_samples_and_binary_logits():
    net = TinyNet()
    data = [(torch.randn(5, 3, 2, 2), torch.zeros(5, dtype=torch.long))] * 2
    assert len(run_capture(net, "fc", data, max_samples=7, chunk_size=3)) == 7
    assert torch.equal(predictions_from_logits(torch.tensor([[0.3], [-1.0]])), torch.tensor([1, 0]))


def test_first_tensor_finds_the_tensor_in_common_output_forms_and_rejects_others():
    from debugger.capture import first_tensor, model_device

    t = torch.zeros(2, 3)
    assert first_tensor(t, "x") is t
    assert first_tensor((t, "aux"), "x") is t
    assert first_tensor({"out": t, "aux": 1}, "x") is t
    assert first_tensor({"logits": t}, "x") is t
    with pytest.raises(ValueError, match="Expected the head's output to be a Tensor"):
        first_tensor({"scores": t}, "the head's output")
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")


def test_first_tensor_error_says_what_the_output_holds_and_which_output_to_use():
    from debugger.capture import first_tensor

    with pytest.raises(ValueError, match=r"dict with keys \['aux', 'scores'\]; return the class scores first"):
        first_tensor({"scores": torch.zeros(1), "aux": 1}, "the model's output")
    with pytest.raises(ValueError, match=r"a tuple of \['str', 'Tensor'\]"):
        first_tensor(("aux", torch.zeros(1)), "the model's output")


def test_model_input_casts_floats_to_the_parameter_dtype_and_leaves_integers():
    from debugger.capture import model_input

    net = TinyNet().to(torch.bfloat16)
    x = torch.rand(2, 3, 4, 4)
    assert model_input(net, x).dtype == torch.bfloat16
    assert model_input(net, torch.ones(2, dtype=torch.long)).dtype == torch.long
    assert model_input(nn.ReLU(), x) is x  # no parameters: nothing to match
    copied = model_input(TinyNet(), x, copy=True)
    assert copied.dtype == torch.float32 and copied.data_ptr() != x.data_ptr()


def test_capture_and_stream_feed_float32_probes_to_a_bf16_model():
    net = TinyNet().to(torch.bfloat16)
    data = [(torch.randn(4, 3, 5, 5), torch.zeros(4, dtype=torch.long))]
    result = run_capture(net, "features", data, reduce="mean")
    assert result.activations["features"].dtype == torch.bfloat16 and len(result) == 4
    out, acts = capture(net, "fc", torch.randn(2, 3, 5, 5))
    assert out.dtype == torch.bfloat16 and acts["fc"].shape == (2, 3)
