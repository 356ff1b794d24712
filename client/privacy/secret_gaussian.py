"""Unit Gaussian noise for a node's DP-SGD on the CPU, drawn from a cryptographically secure keystream.

The random bits are AES-256 in counter mode (OpenSSL through ``cryptography``), keyed from the OS CSPRNG: nothing
the coordinator sends or knows determines them, and unlike a Mersenne Twister (torch's CPU generator) no number
of released values reveals the rest of the stream. Box-Muller turns each pair of 32-bit words into two normals,
vectorised with numpy's SIMD log, sqrt, cos and sin. The Mersenne Twister was most of torch's CPU normal's cost,
so this is both the stronger source and the faster one (docs/privacy.md#noise). ``u1`` takes 32 bits, so a
draw reaches 6.7 standard deviations (torch's float normal, 24 bits, stops at 5.8).

The state is (key, initial counter, blocks used); tests copy it to replay a node's draws. A forked copy (same
key, same counter) would repeat its parent's noise, so a draw in another process than the one that keyed the
stream first rekeys it from the OS.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SecretGaussian", "box_muller"]

_KEY, _NONCE, _BLOCK = 32, 16, 16  # AES-256 key, CTR initial counter block, AES block (bytes)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def box_muller(words: np.ndarray, std: float, out: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """``out`` (n floats) = std x N(0, 1) from ``words`` (2 x ceil(n / 2) uint32): the first half of each pair's
    words gives the radius from u1 = (w + 1/2) / 2^32 in (0, 1], the second the angle 2 pi w / 2^32;
    ``out[:h]`` are the cosines, ``out[h:]`` the sines (both halves of a pair are independent normals). Computed
    in place in ``out`` and ``scratch`` (ceil(n / 2) floats of out's dtype), so that a draw touches little memory
    besides its output: the step's other data stays in the caches."""
    n, dtype = out.size, out.dtype.type
    half = (n + 1) // 2
    radius, angle = out[:half], (scratch if scratch is not None else np.empty(half, dtype=dtype))[:half]
    np.multiply(words[:half], dtype(2.0 ** -32), out=radius, dtype=dtype)
    radius += dtype(2.0 ** -33)  # never 0 (log 0); rounds to at most 1 (radius 0)
    np.log(radius, out=radius)
    radius *= dtype(-2.0)
    np.sqrt(radius, out=radius)
    radius *= dtype(std)  # after the root: std^2 would under- or overflow float32 sooner
    np.multiply(words[half:2 * half], dtype(2.0 * math.pi * 2.0 ** -32), out=angle, dtype=dtype)
    sines = out[half:]
    np.sin(angle[:n - half], out=sines)
    sines *= radius[:n - half]
    np.cos(angle, out=angle)
    radius *= angle


class SecretGaussian:
    """Gaussian draws from an AES-256-CTR keystream keyed from the OS CSPRNG (CPU tensors of float32 or float64;
    other floating dtypes are drawn in float32 and converted)."""

    def __init__(self) -> None:
        self._rekey()

    def _rekey(self) -> None:
        self._set(secrets.token_bytes(_KEY), secrets.token_bytes(_NONCE), 0)

    def _set(self, key: bytes, nonce: bytes, blocks: int) -> None:
        self._key, self._nonce, self._blocks, self._pid = key, nonce, blocks, os.getpid()
        counter = (int.from_bytes(nonce, "big") + blocks) % (1 << 128)  # CTR's counter block after `blocks`
        self._cipher = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(_NONCE, "big"))).encryptor()
        self._buffer, self._scratch = bytearray(), {}

    def _words(self, count: int) -> np.ndarray:
        """The next ``count`` uint32 of the keystream (whole AES blocks are consumed, so the state stays a block
        count)."""
        if os.getpid() != self._pid:
            self._rekey()
        nbytes = -(-4 * count // _BLOCK) * _BLOCK
        if len(self._buffer) < nbytes + _BLOCK - 1:
            self._buffer = bytearray(nbytes + _BLOCK - 1)
        np.frombuffer(self._buffer, dtype=np.uint8, count=nbytes).fill(0)  # CTR XORs its keystream into zeros,
        self._cipher.update_into(memoryview(self._buffer)[:nbytes], self._buffer)  # in place (OpenSSL allows it)
        self._blocks += nbytes // _BLOCK
        return np.frombuffer(self._buffer, dtype=np.uint32, count=count)

    def normal_(self, out: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        """Fills the CPU tensor ``out`` with N(0, std^2) draws and returns it."""
        if out.device.type != "cpu" or not out.dtype.is_floating_point:
            raise ValueError(f"SecretGaussian draws into CPU floating tensors, not {out.device} {out.dtype}")
        if out.numel() == 0:
            return out
        half = (out.numel() + 1) // 2
        words = self._words(2 * half)
        direct = out.dtype in _NUMPY and out.is_contiguous()
        dtype = _NUMPY[out.dtype] if direct else np.float32
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.size < half:
            scratch = self._scratch[dtype] = np.empty(half, dtype=dtype)
        if direct:
            box_muller(words, std, out.view(-1).numpy(), scratch)
            return out
        flat = np.empty(out.numel(), dtype=np.float32)
        box_muller(words, std, flat, scratch)
        return out.copy_(torch.from_numpy(flat).view(out.shape))

    def get_state(self) -> torch.Tensor:
        """Key, initial counter and blocks used, as bytes in a uint8 tensor (like ``torch.Generator``'s)."""
        raw = self._key + self._nonce + self._blocks.to_bytes(8, "little")
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        """Continues the stream ``get_state`` described (the next draws are that stream's)."""
        raw = bytes(state.to(torch.uint8).tolist())
        if len(raw) != _KEY + _NONCE + 8:
            raise ValueError(f"a SecretGaussian state is {_KEY + _NONCE + 8} bytes, not {len(raw)}")
        self._set(raw[:_KEY], raw[_KEY:_KEY + _NONCE], int.from_bytes(raw[_KEY + _NONCE:], "little"))
