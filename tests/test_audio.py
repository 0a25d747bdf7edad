"""Audio loading and the frontend's edge cases (parity of the features themselves: test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from funasr_nano_mlx.audio import (
    FRAME_LENGTH,
    apply_lfr,
    fbank,
    features,
    features_mx,
    load_audio,
    samples_for_frames,
)
from funasr_nano_mlx.errors import UserError


def test_lfr_closed_form_equals_funasr_for_every_length():
    from funasr.frontends.wav_frontend import apply_lfr as funasr_apply_lfr

    rng = np.random.default_rng(0)
    for frames in range(1, 200):
        feats = rng.standard_normal((frames, 80)).astype(np.float32)
        expected = funasr_apply_lfr(torch.from_numpy(feats), 7, 6).numpy()
        np.testing.assert_array_equal(apply_lfr(feats), expected)


@pytest.mark.parametrize("samples", [FRAME_LENGTH, FRAME_LENGTH + 1, 961, 3 * 16000 + 17])
def test_device_frontend_equals_numpy(samples):
    """The MLX-ops frontend (used on a GPU) against the numpy one: only FFT and sum rounding differ
    (measured 1.7e-4 on log-mel values of ~10-20; the tolerance against the official fbank is 2e-3)."""
    wave = (0.1 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    ours = np.array(features_mx(wave))
    assert ours.shape == features(wave).shape
    assert np.abs(ours - features(wave)).max() < 5e-4


@pytest.mark.parametrize("frames", [1, 2, 50, 128, 129, 167, 168])
def test_samples_for_frames_is_the_fewest(frames):
    """The warm-up sizes its clips by it, to land on a kernel's boundary (128 and 129 frames take different ones)."""
    noise = np.random.default_rng(frames).normal(0, 0.1, samples_for_frames(frames)).astype(np.float32)
    assert len(features(noise)) == frames
    assert frames == 1 or len(features(noise[:-1])) == frames - 1


def test_one_frame_minimum():
    assert fbank(np.zeros(FRAME_LENGTH, np.float32)).shape == (1, 80)
    with pytest.raises(UserError, match="25 ms"):
        fbank(np.zeros(FRAME_LENGTH - 1, np.float32))


@pytest.mark.parametrize("suffix", ["flac", "ogg", "mp3"])
def test_formats_rates_and_channels(tmp_path, clips, suffix):
    """Any common format at 22.05 kHz stereo decodes to nearly the same 16 kHz mono signal
    (lossy codecs change samples a little: the bound is on correlation, not equality)."""
    import soxr

    mono = clips["1s"]
    stereo = np.stack([mono, mono], axis=1)
    path = tmp_path / f"clip.{suffix}"
    sf.write(str(path), soxr.resample(stereo, 16000, 22050), 22050)
    loaded = load_audio(path)
    assert abs(len(loaded) - len(mono)) <= 1200  # codec padding and priming, under 75 ms
    n = min(len(loaded), len(mono))
    lag = int(np.argmax(np.correlate(loaded[:n], mono[:4000], mode="valid")[:1200]))
    correlation = np.corrcoef(loaded[lag : lag + n - 1200], mono[: n - 1200])[0, 1]
    assert correlation > 0.95, correlation
