"""The CPU noise source of a node's DP-SGD (client/privacy/secret_gaussian.py).

Its bits are exactly AES-256-CTR's keystream, continued across draws and across a saved and restored state; Box-Muller
maps given words to the float64 formula's values, with no infinite or NaN draw at the extreme words; the draws pass
a Kolmogorov-Smirnov test, have the moments of N(0, std^2) and no correlation between a pair's halves or between
draws; two sources (and a forked copy of one) draw different noise, and the global seeds leave them alone; a
node's CPU optimizer noises through it, its draws made a few steps ahead being exactly the draws one at a time
would give, never more than the round's planned steps, and never reused at another scale.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from client.privacy.dp_optimizer import SecretNoise
from client.privacy.secret_gaussian import SecretGaussian, box_muller

KEY, NONCE = bytes(range(32)), bytes(range(100, 116))


def _source(key: bytes = KEY, nonce: bytes = NONCE, blocks: int = 0) -> SecretGaussian:
    source = SecretGaussian()
    source.set_state(torch.tensor(list(key + nonce + blocks.to_bytes(8, "little")), dtype=torch.uint8))
    return source


def _keystream(nbytes: int, nonce: bytes = NONCE) -> np.ndarray:
    encryptor = Cipher(algorithms.AES(KEY), modes.CTR(nonce)).encryptor()
    return np.frombuffer(encryptor.update(bytes(nbytes)), dtype=np.uint32)


def _expected(words: np.ndarray, n: int, std: float) -> np.ndarray:
    half = (n + 1) // 2
    u = words[:half].astype(np.float64) / 2.0 ** 32 + 2.0 ** -33
    radius = np.sqrt(-2 * np.log(u)) * std
    angle = 2 * math.pi * words[half:2 * half].astype(np.float64) / 2.0 ** 32
    return np.concatenate([radius * np.cos(angle), (radius * np.sin(angle))[:n - half]])


def test_draws_are_box_muller_of_the_aes_ctr_keystream_across_draws_and_a_restored_state():
    source = _source()
    stream = _keystream(16 * 400)
    offset, draws = 0, []
    for n, std in ((7, 1.0), (16, 0.5), (1, 2.0), (101, 3.0)):  # odd sizes: whole blocks are consumed each time
        got = source.normal_(torch.empty(n, dtype=torch.float64), std).numpy()
        words = 2 * ((n + 1) // 2)
        np.testing.assert_allclose(got, _expected(stream[offset:offset + words], n, std), rtol=1e-9, atol=1e-12)
        offset += -(-words // 4) * 4  # 4 words per AES block
        draws.append(got)
    state = source.get_state()
    after = source.normal_(torch.empty(33, dtype=torch.float64)).numpy()
    replay = SecretGaussian()
    replay.set_state(state)
    np.testing.assert_array_equal(replay.normal_(torch.empty(33, dtype=torch.float64)).numpy(), after)
    np.testing.assert_allclose(after, _expected(stream[offset:offset + 34], 33, 1.0), rtol=1e-9, atol=1e-12)


def test_the_counter_wraps_as_aes_ctr_does():
    top = (2 ** 128 - 1).to_bytes(16, "big")  # one block before the 128-bit counter wraps to 0
    source = _source(nonce=top)
    got = source.normal_(torch.empty(16, dtype=torch.float64)).numpy()  # 4 blocks: the last one, then 0, 1, 2
    np.testing.assert_allclose(got, _expected(_keystream(64, top), 16, 1.0), rtol=1e-9, atol=1e-12)
    restored = _source(nonce=top, blocks=1)  # a restored state past the wrap
    np.testing.assert_allclose(restored.normal_(torch.empty(8, dtype=torch.float64)).numpy(),
                               _expected(_keystream(64, top)[4:12], 8, 1.0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_muller_at_the_extreme_words_is_finite_and_reaches_beyond_torchs_24_bit_tail(dtype):
    words = np.array([0, 2 ** 32 - 1, 2 ** 31, 1, 0, 2 ** 30, 2 ** 31, 3 * 2 ** 30], dtype=np.uint32)
    out = np.empty(8, dtype=dtype)
    box_muller(words, 1.0, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _expected(words, 8, 1.0), rtol=2e-6, atol=2e-4)
    assert out[0] == pytest.approx(math.sqrt(2 * 33 * math.log(2)), rel=1e-6)  # 6.76: word 0, angle 0
    assert abs(out[1]) < 1e-3  # the largest word: radius 0 (never log 0, never above 1)
    assert math.sqrt(2 * 24 * math.log(2)) < out[0]  # torch's float normal stops at 5.77


def test_draws_are_standard_normal_and_uncorrelated():
    source = _source()
    x = source.normal_(torch.empty(1_000_001)).numpy().astype(np.float64)
    y = source.normal_(torch.empty(1_000_001)).numpy().astype(np.float64)
    assert stats.kstest(x, "norm").pvalue > 1e-3 and stats.kstest(y, "norm").pvalue > 1e-3
    for draws in (x, y):
        assert abs(draws.mean()) < 0.005 and abs(draws.std() - 1) < 0.005
        assert abs(stats.kurtosis(draws)) < 0.03 and abs(stats.skew(draws)) < 0.01
    half = 500_001
    assert abs(np.corrcoef(x[:half - 1], x[half:])[0, 1]) < 0.005  # a pair's cosine and sine
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.005 and abs(np.corrcoef(x, y)[0, 1]) < 0.005
    scaled = _source().normal_(torch.empty(200_000), 0.25).numpy()
    assert abs(scaled.std() - 0.25) < 0.003


def test_tiny_and_large_scales_stay_gaussian_in_float32():
    """The scale multiplies after the root: std^2 would underflow to zero noise (or overflow) in float32."""
    for std in (1e-25, 1e20):
        draws = _source().normal_(torch.empty(10_000), std).numpy().astype(np.float64)
        assert np.isfinite(draws).all() and abs(draws.std() / std - 1) < 0.05


def test_other_dtypes_shapes_and_devices():
    source = _source()
    for dtype in (torch.float16, torch.bfloat16):
        draws = source.normal_(torch.empty(4_000, dtype=dtype))
        assert draws.dtype == dtype and 0.9 < float(draws.float().std()) < 1.1
    grid = torch.zeros(50, 40).t()  # not contiguous: filled through a copy
    source.normal_(grid)
    assert (grid != 0).float().mean() > 0.99 and 0.9 < float(grid.std()) < 1.1
    assert source.normal_(torch.empty(0)).numel() == 0
    with pytest.raises(ValueError, match="CPU floating"):
        source.normal_(torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="CPU floating"):
        source.normal_(torch.empty(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="56 bytes"):
        source.set_state(torch.zeros(5, dtype=torch.uint8))


def test_sources_are_keyed_apart_and_global_seeds_leave_them_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    a = SecretGaussian().normal_(torch.empty(1_000))
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    b = SecretGaussian().normal_(torch.empty(1_000))
    assert not torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(p, q) for p, q in zip(np.random.get_state(), numpy_state))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_node_does_not_repeat_its_parents_noise():
    """A process forked after its noise source was made (a worker pool forking a prepared node) would share the
    key and counter: the child rekeys from the OS on its first draw. A torch generator repeats the parent's."""
    noise = SecretNoise([torch.zeros(64)])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its draw, through the pipe, then out without pytest's teardown
        os.close(read)
        os.write(write, noise.draw().numpy().tobytes())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = np.frombuffer(pipe.read(), dtype=np.float32)
    os.waitpid(pid, 0)
    parent = noise.draw().numpy()
    assert child.shape == parent.shape == (64,) and not np.array_equal(child, parent)


def test_a_nodes_cpu_optimizer_noises_from_the_keystream():
    params = [torch.zeros(10, 3), torch.zeros(3)]
    noise = SecretNoise(params, torch.Generator().manual_seed(1))  # a torch generator passed is not used on the CPU
    assert isinstance(noise.generator, SecretGaussian)
    state = noise.generator.get_state()
    drawn = noise.draw(0.5)
    replay = SecretGaussian()
    replay.set_state(state)
    torch.testing.assert_close(drawn, replay.normal_(torch.empty(33), 0.5), rtol=0, atol=0)


def _twin_of(noise: SecretNoise) -> SecretGaussian:
    twin = SecretGaussian()
    twin.set_state(noise.generator.get_state())
    return twin


def test_draws_made_ahead_are_the_draws_one_at_a_time_would_be_and_none_beyond_the_expected():
    noise = SecretNoise([torch.zeros(10, 3), torch.zeros(3)])
    twin = _twin_of(noise)
    noise.expect(11)  # 8 made at the first draw, 3 at the ninth
    for _ in range(11):
        torch.testing.assert_close(noise.draw(0.5), twin.normal_(torch.empty(33), 0.5), rtol=0, atol=0)
    assert torch.equal(noise.generator.get_state(), twin.get_state())  # exactly 11 drawn
    noise.draw(0.5)  # beyond the expected: one at a time
    twin.normal_(torch.empty(33), 0.5)
    assert torch.equal(noise.generator.get_state(), twin.get_state())


def test_a_draw_at_another_scale_drops_the_draws_made_ahead():
    noise = SecretNoise([torch.zeros(64)])
    twin = _twin_of(noise)
    noise.expect(4)
    first = noise.draw(1.0)
    torch.testing.assert_close(first, twin.normal_(torch.empty(64), 1.0), rtol=0, atol=0)
    for _ in range(3):  # the three made ahead at scale 1: dropped, never handed out at scale 2
        twin.normal_(torch.empty(64), 1.0)
    torch.testing.assert_close(noise.draw(2.0), twin.normal_(torch.empty(64), 2.0), rtol=0, atol=0)


def test_a_rounds_private_step_draws_exactly_its_planned_steps():
    """make_private tells the noise the round's steps (plan.steps_per_round): a round of two epochs draws exactly
    that many, each fresh, as one draw per step would."""
    from client.local_training import train_epochs
    from client.privacy.dp_training import DPPlan, make_private
    from tests.clipping_reference import CPU, dataset, model, n_inputs

    data = dataset("face_scatter", 24)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    net = model("face_scatter")
    step = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), loader,
                        DPPlan(1.0, 1 / len(loader), 2 * len(loader), 1.0), accountant="prv")
    twin = _twin_of(step.optimizer.noise)
    train_epochs(step.model, step.loader, step.optimizer, epochs=2, n_inputs=n_inputs("face_scatter"), device=CPU,
                 private=step)
    assert step.steps_taken() == 12
    for _ in range(12):
        twin.normal_(torch.empty(step.optimizer.noise.size), 1.0)
    assert torch.equal(step.optimizer.noise.generator.get_state(), twin.get_state())
