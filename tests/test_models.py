"""Model contracts: shapes, masking, feature-stat buffers, Opacus compatibility, CCC, registry."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from shared_models.models.fusion_model import FusionNet
from shared_models.models.registry import MODELS, build_model, count_parameters, model_task
from shared_models.taxonomy import NUM_EMOTIONS
from shared_models.models.voice_models import VoiceCRNN, ccc, ccc_loss, reverse_within_length

torch.set_num_threads(1)

# Opacus hooks the first layer, whose input does not require grad; torch warns about that, harmlessly.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

NAMES = ["face_cnn", "face_resnet", "face_scatter", "face_scatter_lcn", "face_scatter_lcn_blur", "voice_crnn", "voice_stats", "voice_stats_norm", "fusion"]
VA_NAMES = ["voice_crnn", "fusion"]
S, MELS, FRAMES = 6, 128, 32


def make_inputs(task: str, batch: int, *, seed: int = 0, with_mask: bool = True) -> tuple[torch.Tensor, ...]:
    """Model inputs for ``task``; voice masks have padding in some rows (and a non-prefix row)."""
    g = torch.Generator().manual_seed(seed)
    face = torch.rand(batch, 1, 48, 48, generator=g)
    voice = torch.randn(batch, S, MELS, FRAMES, generator=g) * 20 - 50
    mask = torch.ones(batch, S, dtype=torch.bool)
    mask[0, 3:] = False
    if batch > 2:
        mask[2] = torch.tensor([False, True, False, True, True, False])
    if task == "face":
        return (face,)
    voice_args = (voice, mask) if with_mask else (voice,)
    return voice_args if task == "voice" else (face, *voice_args)


def logits_of(out):
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------
# shapes and gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,with_mask", [(n, True) for n in NAMES] + [(n, False) for n in VA_NAMES])
def test_output_shapes(name, with_mask):
    task = model_task(name)
    model = build_model(name).eval()
    out = model(*make_inputs(task, 3, with_mask=with_mask))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, NUM_EMOTIONS)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VA_NAMES)
def test_valence_arousal_head(name):
    model = build_model(name, valence_arousal=True).eval()
    logits, va = model(*make_inputs(model_task(name), 3))
    assert logits.shape == (3, NUM_EMOTIONS)
    assert va.shape == (3, 2)
    assert (va.abs() <= 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name):
    """Poisson sampling (DP-SGD) can draw an empty batch; the forward pass must survive it."""
    model = build_model(name).eval()
    inputs = tuple(t[:0] for t in make_inputs(model_task(name), 3))
    assert logits_of(model(*inputs)).shape == (0, NUM_EMOTIONS)


@pytest.mark.parametrize("name,va", [(n, False) for n in NAMES] + [(n, True) for n in VA_NAMES])
def test_backward_finite_grads_everywhere(name, va):
    torch.manual_seed(0)
    model = build_model(name, valence_arousal=va).train()
    out = model(*make_inputs(model_task(name), 4))
    y = torch.tensor([0, 3, 5, 6])
    if va:
        logits, pred_va = out
        loss = F.cross_entropy(logits, y) + ccc_loss(pred_va, torch.rand(4, 2) * 2 - 1)
    else:
        loss = F.cross_entropy(out, y)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", VA_NAMES)
def test_padded_segments_do_not_change_output(name):
    torch.manual_seed(0)
    model = build_model(name, valence_arousal=True).eval()
    inputs = make_inputs(model_task(name), 3)
    voice, mask = inputs[-2], inputs[-1]
    logits, va = model(*inputs)
    for fill in (torch.randn_like(voice) * 1e3, torch.full_like(voice, float("nan"))):
        changed = torch.where(mask[:, :, None, None], voice, fill)
        logits2, va2 = model(*inputs[:-2], changed, mask)
        assert torch.equal(logits, logits2)
        assert torch.equal(va, va2)


def test_padding_equals_trimmed_clip():
    """A clip padded to S segments gives the same output as the clip alone (both LSTM directions)."""
    torch.manual_seed(0)
    model = VoiceCRNN().eval()
    voice, mask = make_inputs("voice", 3)
    padded = model(voice, mask)
    torch.testing.assert_close(padded[0], model(voice[:1, :3])[0], atol=1e-5, rtol=1e-5)
    # Non-prefix mask: real segments 1, 3, 4 in order.
    torch.testing.assert_close(padded[2], model(voice[2:3, [1, 3, 4]])[0], atol=1e-5, rtol=1e-5)
    # Full mask == no mask.
    torch.testing.assert_close(model(voice[1:2], mask[1:2]), model(voice[1:2]))


def test_reverse_within_length_is_an_involution():
    x = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([3, 6])
    r = reverse_within_length(x, lengths)
    assert r[0, :, 0].tolist() == [2, 1, 0, 3, 4, 5]
    assert r[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]
    assert torch.equal(reverse_within_length(r, lengths), x)


# ---------------------------------------------------------------------------
# feature statistics buffers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VoiceCRNN, FusionNet])
def test_feature_stats_buffers_round_trip(cls):
    model = cls()
    assert torch.equal(model.feature_mean, torch.zeros(MELS))
    assert torch.equal(model.feature_std, torch.ones(MELS))
    state = model.state_dict()
    mean_keys = [k for k in state if k.endswith("feature_mean")]
    std_keys = [k for k in state if k.endswith("feature_std")]
    assert len(mean_keys) == 1 and len(std_keys) == 1
    assert not any(n.endswith(("feature_mean", "feature_std")) for n, _ in model.named_parameters())

    mean, std = torch.linspace(-60, -20, MELS), torch.linspace(5, 15, MELS)
    model.set_feature_stats(mean, std)
    other = cls()
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.feature_mean, mean)
    assert torch.equal(other.feature_std, std)

    # The loaded model behaves identically.
    model.eval()
    other.eval()
    inputs = make_inputs("voice" if cls is VoiceCRNN else "fusion", 2)
    torch.testing.assert_close(model(*inputs), other(*inputs))


def test_feature_stats_change_output_and_validate():
    torch.manual_seed(0)
    model = VoiceCRNN().eval()
    voice, mask = make_inputs("voice", 2)
    before = model(voice, mask)
    model.set_feature_stats(torch.full((MELS,), -50.0), torch.full((MELS,), 20.0))
    assert not torch.allclose(before, model(voice, mask))
    with pytest.raises(ValueError):
        model.set_feature_stats(torch.zeros(MELS), torch.zeros(MELS))
    with pytest.raises(ValueError):
        model.set_feature_stats(torch.zeros(3), torch.ones(3))


# ---------------------------------------------------------------------------
# Opacus
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_module_validator_strict(name):
    for va in ([False, True] if name in VA_NAMES else [False]):
        model = build_model(name, valence_arousal=va)
        assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_gradients_are_exact(name):
    """Opacus's per-sample gradients equal one-sample backward passes (checks the custom
    segment-layer grad samplers and that masking keeps rows aligned with samples)."""
    torch.manual_seed(0)
    model = build_model(name, dropout=0.0).train()
    reference = build_model(name, dropout=0.0).train()
    reference.load_state_dict(model.state_dict())
    gsm = GradSampleModule(model, loss_reduction="sum")
    inputs = make_inputs(model_task(name), 3)
    y = torch.tensor([1, 4, 6])
    F.cross_entropy(gsm(*inputs), y, reduction="sum").backward()
    for i in range(3):
        reference.zero_grad()
        F.cross_entropy(reference(*(t[i : i + 1] for t in inputs)), y[i : i + 1], reduction="sum").backward()
        for (pname, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
            torch.testing.assert_close(p.grad_sample[i], q.grad, atol=1e-5, rtol=1e-3, msg=f"{pname}, sample {i}")


@pytest.mark.parametrize("name", NAMES)
def test_make_private_step(name):
    torch.manual_seed(0)
    task = model_task(name)
    model = build_model(name).train()
    tensors = make_inputs(task, 8, seed=1) + (torch.randint(0, NUM_EMOTIONS, (8,)),)
    loader = DataLoader(TensorDataset(*tensors), batch_size=4, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, private_loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0,
        )
    batch = next(b for b in private_loader if len(b[-1]) > 0)  # Poisson sampling may draw empty batches
    before = [p.detach().clone() for p in private.parameters()]
    optimizer.zero_grad()
    F.cross_entropy(private(*batch[:-1]), batch[-1]).backward()
    for pname, p in private.named_parameters():
        assert p.grad_sample is not None, f"{pname} has no per-sample gradient"
        assert p.grad_sample.shape == (len(batch[-1]), *p.shape)
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, private.parameters()))


# ---------------------------------------------------------------------------
# CCC
# ---------------------------------------------------------------------------


def test_ccc_values():
    x = torch.randn(64, 2)
    x = x - x.mean(dim=0)  # zero mean, so negation keeps the means equal and CCC is exactly -1
    torch.testing.assert_close(ccc(x, x), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(ccc(x, -x), -torch.ones(2), atol=1e-5, rtol=0)
    assert (ccc(x + 3.0, -x) < -0.05).all()  # with a mean offset too, still strongly negative
    assert ccc(x[:, 0], x[:, 0]).shape == ()
    # CCC, unlike Pearson, penalises a shift.
    assert (ccc(x, x + 1.0) < 0.9).all()
    # Constant inputs: finite, no NaN.
    const = torch.zeros(16, 2)
    assert torch.isfinite(ccc(const, const)).all()
    assert torch.isfinite(ccc_loss(const, torch.randn(16, 2)))


def test_ccc_loss_is_differentiable():
    pred = torch.randn(32, 2, requires_grad=True)
    target = torch.randn(32, 2)
    loss = ccc_loss(pred, target)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert abs(ccc_loss(target, target).item()) < 1e-5


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------


def test_registry():
    assert set(MODELS) == set(NAMES)
    assert [model_task(n) for n in NAMES] == ["face"] * 5 + ["voice"] * 3 + ["fusion"]
    assert count_parameters(build_model("face_cnn")) < 500_000
    model = build_model("face_cnn", width=8)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_build_model_errors():
    with pytest.raises(ValueError, match="nope") as err:
        build_model("nope")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError):
        model_task("nope")
    with pytest.raises(ValueError, match="valence"):
        build_model("face_cnn", valence_arousal=True)


# ---------------------------------------------------------------------------
# face_scatter: fixed features, trained head
# ---------------------------------------------------------------------------


def test_face_scatter_trains_only_its_head_and_features_depend_on_each_face_alone():
    from shared_models.models.scatter_models import NUM_FEATURES, scatter_features

    model = build_model("face_scatter")
    assert list(model.state_dict()) == ["head.weight", "head.bias"]  # the transform never travels
    faces = torch.rand(5, 1, 48, 48)
    features = scatter_features(faces)
    assert features.shape == (5, NUM_FEATURES) and torch.isfinite(features).all()
    # Per-sample standardisation: a face's features do not change with the batch it is in.
    assert torch.allclose(scatter_features(faces[2:3]), features[2:3], atol=1e-5)
    assert torch.allclose(model(faces), model(features), atol=1e-5)  # raw faces or precomputed features


def test_voice_stats_features_ignore_masked_segments():
    model = build_model("voice_stats")
    x = torch.randn(2, 4, 128, 32)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    changed = x.clone()
    changed[0, 2:] = 1e3  # padding segments of clip 0: must not matter
    assert torch.allclose(model(x, mask)[0], model(changed, mask)[0])
    assert list(model.state_dict()) == ["feature_mean", "feature_std", "head.weight", "head.bias"]


def test_sequence_lstm_is_opacus_dplstm_at_a_fraction_of_the_dp_cost():
    """SequenceLSTM: DPLSTM's parameters, initialisation, outputs and gradients; loads DPLSTM state dicts."""
    from opacus.layers import DPLSTM

    from shared_models.models.voice_models import SequenceLSTM

    torch.manual_seed(3)
    reference = DPLSTM(10, 8, batch_first=True)
    torch.manual_seed(3)
    layer = SequenceLSTM(10, 8)
    for p, q in zip(reference.parameters(), layer.parameters()):
        assert torch.equal(p, q)  # same initial draws in the same order
    x = torch.randn(4, 6, 10, requires_grad=True)
    expected, _ = reference(x)
    got = layer(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    grads_ref = torch.autograd.grad((expected ** 2).sum(), [x, *reference.parameters()])
    grads = torch.autograd.grad((got ** 2).sum(), [x, *layer.parameters()])
    for g, e in zip(grads, grads_ref):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    fresh = SequenceLSTM(10, 8)
    fresh.load_state_dict(reference.state_dict())  # a DPLSTM checkpoint (keys l0.ih.weight, weight_ih_l0, ...)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=1e-6, rtol=1e-5)
