"""Audio loading and the Kaldi fbank + LFR frontend (pure functions over numpy arrays).

The reference computes features with `torchaudio.compliance.kaldi.fbank` (or kaldi-native-fbank)
in float32. No library available here reproduces Kaldi's framing, replicate-padded pre-emphasis and
mel bank exactly while staying vectorized, so the ~40 lines below are written by hand; every constant
is Kaldi's default or the value FunASR's WavFrontend passes (spec section 2).
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import printable

SAMPLE_RATE = 16000
INT16_SCALE = 32768.0  # WavFrontend "upsacle_samples": fbank sees int16-range samples
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # Kaldi rounds the window up to a power of two
NUM_MEL_BINS = 80
LOW_FREQ, HIGH_FREQ = 20.0, SAMPLE_RATE / 2
PREEMPHASIS = 0.97
LOG_FLOOR = 1.1920929e-07  # float32 epsilon, Kaldi's floor before log
LFR_M, LFR_N = 7, 6  # low frame rate: stack 7 frames, hop 6 (60 ms per output frame)
# Telephone speech (8 kHz, content up to 4 kHz) is the least that stays intelligible; below it the
# consonants are gone, and resampling up to 16 kHz cannot bring them back.
MIN_SPEECH_RATE = 8000


# Files are read in blocks so that memory does not grow with a file's rate or channel count: only the
# 16 kHz mono result (230 MB per hour) is held whole, plus one block as stored. soxr's streaming
# resampler gives exactly soxr.resample's one-shot output (tests/test_bad_audio.py checks it).
READ_FRAMES = 1 << 16  # frames per read: 256 KB per channel in float32, 1.5 s at 44.1 kHz
# A decoder's frame count may differ from its header's by its priming and padding (libmpg123 on an MP3
# without gapless information: up to two MPEG frames); a larger shortfall means the file ends early.
FRAME_COUNT_SLACK = 2 * 1152
SALVAGE_FRAMES = 1024  # after a decoding error, the rest is read again in steps this small
# The result is allocated at the length the header declares, up to this many samples (12 hours at 16 kHz,
# 2.8 GB of address space, resident only as filled): a header that lies costs no more than this.
MAX_PREALLOCATED = 12 * 3600 * SAMPLE_RATE
# libsndfile logs "data : DECLARED (should be AVAILABLE)" when a WAV or AIFF sound chunk runs past the
# end of the file, and then reads what is there (libsndfile src/wav.c and src/aiff.c, the data and
# SSND chunk cases): the header's length is only in that log.
_SHORT_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# libmpg123 (libsndfile's MP3 decoder) prints this on the process's stderr when it opens a truncated
# MP3; we report the truncation ourselves, in one line.
_DECODER_NOISE = ("Xing stream size off",)
_STDERR_LOCK = threading.Lock()  # fd 2 is one per process: one redirection at a time


@dataclass
class Audio:
    """A file's 16 kHz mono samples, and what its user must know about how they were read."""

    samples: np.ndarray
    warnings: list[str] = field(default_factory=list)
    cut_short: str | None = None  # why the samples end before the file says they do (also in warnings)


def load_audio(path: str | Path, block_frames: int = READ_FRAMES) -> np.ndarray:
    """Read any file libsndfile can decode (wav, flac, ogg, mp3), mix to mono, resample to 16 kHz."""
    return read_audio(path, block_frames).samples


def read_audio(path: str | Path, block_frames: int = READ_FRAMES) -> Audio:
    """`load_audio`, with a warning when the file ends before its header says, or when its sample rate
    is too low to hold speech (it is resampled and transcribed all the same).

    Such a file (a cut-off download or copy) is read as far as it goes rather than refused: what
    survives is real audio, and the warning says how much is missing. NaN, infinite or too large samples
    are refused (`check_samples`), and so is a file whose 16 kHz samples do not fit in memory."""
    import soundfile as sf  # imported here so that pure-array users need no audio I/O stack

    path = check_audio_path(path)
    name = printable(path)
    try:
        # A Python file object, not the name: libsndfile takes only names valid in the file system's
        # encoding (a name with non-UTF-8 bytes fails there), Python's open takes any name the OS does.
        with open(path, "rb") as stream, _opened(stream) as sound:
            declared, rate, log = sound.frames, sound.samplerate, sound.extra_info
            if 0 < rate and _bytes_at_16k(declared, rate) > _physical_memory():
                raise _too_long_for_memory(name, declared, rate)  # refused before any of it is read
            try:
                samples, read, stopped = _read_mono_16k(sound, name, block_frames)
            except MemoryError:  # raised below, once this handler has let go of what was filled so far
                samples = None
    except sf.SoundFileError as err:  # soundfile's own exception types (format problems, libsndfile's errors)
        why = err.error_string if isinstance(err, sf.LibsndfileError) else str(err)  # without the stream's repr
        raise UserError(f"cannot read audio {name}: {why}") from None
    except OSError as err:
        raise UserError(f"cannot read audio {name}: {err.strerror or err}") from None
    if samples is None:
        raise _too_long_for_memory(name, declared, rate)
    cut = _truncation(name, declared, read, rate, log, stopped)
    return Audio(samples, _low_rate(name, rate) + cut, cut_short=cut[0] if cut else None)


def _low_rate(name: str, rate: int) -> list[str]:
    if rate >= MIN_SPEECH_RATE:
        return []
    return [
        f"{name} is sampled at {rate} Hz: speech needs at least {MIN_SPEECH_RATE // 1000} kHz, expect a poor transcript"
    ]


def _bytes_at_16k(frames: int, rate: int) -> float:
    return max(frames, 0) * SAMPLE_RATE / rate * 4  # float32


def _physical_memory() -> float:
    """This machine's memory in bytes (inf where the system does not say): more than that cannot be held.
    Less may not be either, but allocating is the only test (Linux and macOS overcommit: a MemoryError
    comes only under a limit such as ulimit -v, and the kernel may kill the process instead)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return math.inf


def _too_long_for_memory(name: str, declared: int, rate: int) -> UserError:
    """The 16 kHz result of a long file (or one at a very low rate: 1 Hz becomes 16000 times as many
    samples) is held whole; where that memory cannot be had the file is refused, not the process."""
    hours = declared / rate / 3600
    size = _bytes_at_16k(declared, rate) / 1e9
    return UserError(
        f"{name} is too long to hold in memory: {hours:.1f} hours at {rate} Hz "
        f"is {size:.1f} GB as the 16 kHz float32 samples the model reads"
    )


def _opened(stream):
    """soundfile.SoundFile(stream), with what its decoders print on fd 2 while opening filtered."""
    import soundfile as sf

    with _STDERR_LOCK:
        if sys.stderr is None or not _has_fd2():
            return sf.SoundFile(stream)  # no stderr to keep clean
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                return sf.SoundFile(stream)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                for line in sink.read().decode(errors="replace").splitlines(keepends=True):
                    if not any(noise in line for noise in _DECODER_NOISE):
                        sys.stderr.write(line)  # anything else (another thread's output) is kept


def _has_fd2() -> bool:
    try:
        os.fstat(2)
        return True
    except OSError:
        return False


def _read_mono_16k(sound, name: str, block_frames: int) -> tuple[np.ndarray, int, str | None]:
    """(16 kHz mono float32 samples, frames read, the decoder's error where it stopped early)."""
    import soundfile as sf
    import soxr

    rate = sound.samplerate
    # soxr "HQ" is what the reference applies (librosa's soxr_hq) where torchaudio is absent.
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32", "HQ")
    # Frames given to the resampler at once: about a block's worth of output each. Upsampling makes a
    # block many times larger (a block at 1 Hz would be 4 GB at 16 kHz), and only the result is held whole.
    piece = max(1, block_frames * rate // SAMPLE_RATE)
    expected = math.ceil(max(sound.frames, 0) * SAMPLE_RATE / rate) + 1
    out = _Filled(min(expected, MAX_PREALLOCATED))
    read, stopped = 0, None
    # A float64 file is read as such and checked before the cast: cast, 1e200 would read as infinite.
    dtype = "float64" if sound.subtype == "DOUBLE" else "float32"
    while True:
        try:
            block = sound.read(block_frames, dtype=dtype, always_2d=True)
        except sf.LibsndfileError as err:  # e.g. "flac decoder lost sync": keep what came before it
            stopped = stopped or err.error_string
            if block_frames > SALVAGE_FRAMES and _seek(sound, read):
                block_frames = SALVAGE_FRAMES  # the failed read returned nothing: read up to the fault
                continue
            if read == 0:
                raise
            block = block[:0]
        # Checked as stored, before the channels are summed: a sum of huge samples could overflow.
        check_samples(block, name, read / rate, rate)
        read += len(block)
        mono = block.mean(axis=1, dtype=np.float32)  # row by row: the same numbers as a whole-file mean
        done = len(block) == 0
        if resampler is None:
            out.append(mono)
        else:
            for start in range(0, len(mono), piece):
                out.append(resampler.resample_chunk(mono[start : start + piece]))
            if done:
                out.append(resampler.resample_chunk(mono, last=True))  # the filter's tail
        if done:
            return out.result(), read, stopped


def _seek(sound, frame: int) -> bool:
    import soundfile as sf

    try:
        return sound.seek(frame) == frame
    except sf.LibsndfileError:
        return False


class _Filled:
    """A float32 array filled block by block. Allocated once at the size the header promises: a list of
    blocks joined at the end would hold the result twice. Grows only where the header undercounts."""

    def __init__(self, size: int):
        self.data, self.size = np.empty(size, np.float32), 0

    def append(self, block: np.ndarray) -> None:
        end = self.size + len(block)
        if end > len(self.data):
            grown = np.empty(max(end, len(self.data) * 3 // 2), np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = block
        self.size = end

    def result(self) -> np.ndarray:
        self.data.resize(self.size, refcheck=False)  # shrinks in place (realloc), no copy
        return self.data


def _truncation(name: str, declared: int, read: int, rate: int, log: str, stopped: str | None) -> list[str]:
    """A warning when fewer frames could be read than the header declares (or the decoder stopped)."""
    short = _SHORT_CHUNK.search(log)
    if short:  # libsndfile has cut `declared` down to what the file holds: scale it back up
        declared = round(read * int(short[1]) / max(int(short[2]), 1))
    if read + FRAME_COUNT_SLACK >= declared:  # read to the end (a decoder may have complained on the way)
        return [] if stopped is None else [f"{name}: the decoder reported an error ({stopped}) while reading it"]
    how = f" (the decoder stopped: {stopped})" if stopped else ""
    return [
        f"{name} ends early: {read / rate:.2f} s of the {declared / rate:.2f} s its header declares could be read{how}"
    ]


def header_seconds(path: str | Path) -> float | None:
    """The duration a file's header declares, without decoding it (None where it declares none or the
    file is not audio: load_audio then says why). Lets a server refuse a long upload before decoding."""
    import soundfile as sf

    try:
        with open(path, "rb") as stream, _opened(stream) as sound:
            frames, rate = sound.frames, sound.samplerate
    except (sf.SoundFileError, OSError):  # as in read_audio, which then says why
        return None
    return frames / rate if frames > 0 and rate > 0 else None


def check_audio_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"audio file not found: {printable(path)} (it is a directory)")
    if not os.path.lexists(path):
        raise UserError(f"audio file not found: {printable(path)}")
    what = "a link to nothing (or a loop of links)" if path.is_symlink() and not path.exists() else "a pipe or device"
    raise UserError(f"cannot read audio {printable(path)}: it is {what}, not a regular file")


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # what libsndfile decodes


def audio_files(paths: list[str | Path]) -> list[Path]:
    """Files as given, and every audio file under each directory (recursively, sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            # Whatever is named like audio but is not a folder (a link to nothing, a pipe) is kept, to be
            # named as a bad file with the others rather than silently left out.
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir())
            if not found:
                raise UserError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in directory {printable(path)}")
            files += found
        else:
            files.append(check_audio_path(path))
    return files


def check_duration(samples: np.ndarray, name: str) -> None:
    """What the frontend needs of 16 kHz samples: mono, one frame at least, every sample in its range
    (`check_samples`). Every path to the model calls it (transcribe, evaluate, serve, both frontends)."""
    if samples.ndim != 1:
        raise UserError(f"{name}: expected mono samples, got shape {samples.shape}")
    if len(samples) < FRAME_LENGTH:
        raise UserError(
            f"{name} is {1000 * len(samples) / SAMPLE_RATE:.1f} ms long; "
            f"at least one {1000 * FRAME_LENGTH // SAMPLE_RATE} ms frame is needed"
        )
    check_samples(samples, name)  # after resampling, which may overshoot a little what the file held


def check_samples(samples: np.ndarray, name: str, start: float = 0.0, rate: int = SAMPLE_RATE) -> None:
    """Refuse NaN or infinite samples, and samples too large for the frontend (`max_sample`): a model
    hears nothing in them and would answer with noise. `samples` is (frames,) or (frames, channels)
    from `start` seconds at `rate`, for the message's position."""
    bound = max_sample()
    # min and max make no copy (a whole file is checked too); NaN fails both comparisons.
    if samples.size == 0 or (samples.min() >= -bound and samples.max() <= bound):
        return
    usable = np.abs(samples) <= bound
    first = int(np.argmin(usable if usable.ndim == 1 else usable.all(axis=1)))
    at = start + first / rate
    values = samples[first]
    if not np.isfinite(values).all():
        raise UserError(f"{name} holds NaN or infinite samples (the first at {at:.2f} s): it is not audio")
    peak = float(np.abs(values).max())
    raise UserError(
        f"{name} holds samples too large to analyse (the first at {at:.2f} s is {peak:.3g}; "
        f"the float32 frontend takes at most {bound:.3g}): it is not audio"
    )


@lru_cache(maxsize=1)
def _povey_free_hamming() -> np.ndarray:
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    return (0.54 - 0.46 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))).astype(np.float32)


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """Kaldi's triangular mel filters, shape (FFT_SIZE // 2 + 1, NUM_MEL_BINS); the Nyquist row is 0."""
    low, high = _mel(LOW_FREQ), _mel(HIGH_FREQ)
    delta = (high - low) / (NUM_MEL_BINS + 1)
    edges = low + delta * np.arange(NUM_MEL_BINS + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = _mel(SAMPLE_RATE / FFT_SIZE * np.arange(FFT_SIZE // 2))[None, :]
    weights = np.maximum(0.0, np.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center)))
    bank = np.zeros((FFT_SIZE // 2 + 1, NUM_MEL_BINS), dtype=np.float32)
    bank[: FFT_SIZE // 2] = weights.T.astype(np.float32)
    return bank


@lru_cache(maxsize=1)
def max_sample() -> float:
    """The largest sample magnitude whose features are finite, whatever the signal: beyond it a frame's
    mel energy can overflow float32 (inf, then NaN in the matmul and log), and the model gets noise.

    Both frontends compute in float32 (`fbank`, `fbank_mx`). With every |sample| <= B, a frame scaled to
    int16 range is at most 32768 B; less its mean, 2 x that; after pre-emphasis, (1 + 0.97) x that;
    windowed and transformed, each FFT bin at most sum(window) x that; a mel energy at most the largest
    filter's sum of weights x the square of that. Half of float32's largest value is the ceiling: the
    other half covers the rounding of the FFT and the sums (relative errors of 1e-4 at most). The bound
    is 1.6e11, where full scale is 1.0: no recording comes near it (float WAVs hold [-1, 1] and some
    headroom), and the worst signals measured (square waves near Nyquist) overflow only at 16 x it."""
    largest_filter = float(mel_filterbank().sum(axis=0).max())
    frame_peak = float(_povey_free_hamming().sum()) * (1 + PREEMPHASIS) * 2 * INT16_SCALE
    return math.sqrt(float(np.finfo(np.float32).max) / 2 / largest_filter) / frame_peak


def fbank(samples: np.ndarray, name: str = "audio") -> np.ndarray:
    """Log-mel filterbank of 16 kHz float samples in [-1, 1], shape (T, 80), Kaldi semantics, no dither."""
    check_duration(samples, name)
    wave = samples.astype(np.float32) * np.float32(INT16_SCALE)
    num_frames = 1 + (len(wave) - FRAME_LENGTH) // FRAME_SHIFT  # snip_edges=True
    index = FRAME_SHIFT * np.arange(num_frames)[:, None] + np.arange(FRAME_LENGTH)[None, :]
    frames = wave[index]
    frames = frames - frames.mean(axis=1, keepdims=True, dtype=np.float32)
    # Pre-emphasis with replicate padding: the first sample of every frame uses itself as predecessor.
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - np.float32(PREEMPHASIS) * previous) * _povey_free_hamming()
    power = np.abs(np.fft.rfft(frames, n=FFT_SIZE, axis=1)) ** 2
    energies = power.astype(np.float32) @ mel_filterbank()
    return np.log(np.maximum(energies, np.float32(LOG_FLOOR)))


def apply_lfr(feats: np.ndarray, m: int = LFR_M, n: int = LFR_N) -> np.ndarray:
    """Stack m frames every n frames: out[i] = concat(feats[clip(n*i + j - (m-1)//2)] for j < m).

    This closed form equals FunASR's apply_lfr (left padding with frame 0, right padding with the
    last frame, as_strided read) for every length; the spec's section 2.4 records the brute-force check.
    """
    num_out = math.ceil(len(feats) / n)
    rows = n * np.arange(num_out)[:, None] + np.arange(m)[None, :] - (m - 1) // 2
    return feats[np.clip(rows, 0, len(feats) - 1)].reshape(num_out, m * feats.shape[1])


def samples_for_frames(frames: int) -> int:
    """The fewest samples whose features have `frames` frames (fbank's snip_edges frames, then LFR's ceil(. / n))."""
    return FRAME_LENGTH + FRAME_SHIFT * (LFR_N * (frames - 1))


def features(samples: np.ndarray, name: str = "audio") -> np.ndarray:
    """The model input for one utterance: LFR-stacked fbank, shape (ceil(T / 6), 560), float32."""
    return apply_lfr(fbank(samples, name))


# -- The same frontend as MLX ops, for a GPU ------------------------------------------------------------
# On a GPU the numpy frontend above is the slowest stage before the first token (8-24 ms for 10 s on the
# lent H100/H200 hosts' CPUs, a quarter of batch-1 wall time); these ~12 device ops take about 1 ms.
# Same steps and constants in float32; only the FFT and the reductions round differently (see
# tests/test_audio.py for the measured difference). On MLX's CPU backend numpy stays faster.


def frontend_on_device() -> bool:
    """Whether `features_mx` (MLX ops) or `features` (numpy) is the faster frontend here."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.gpu


@lru_cache(maxsize=1)
def _device_constants():
    import mlx.core as mx

    return mx.array(_povey_free_hamming()), mx.array(mel_filterbank())


def fbank_mx(samples: np.ndarray, name: str = "audio"):
    """`fbank` as MLX ops: (T, 80) float32 mx.array, lazily evaluated."""
    import mlx.core as mx

    check_duration(samples, name)
    window, bank = _device_constants()
    wave = mx.array(samples.astype(np.float32, copy=False)) * INT16_SCALE
    num_frames = 1 + (len(samples) - FRAME_LENGTH) // FRAME_SHIFT  # snip_edges=True
    frames = mx.as_strided(wave, (num_frames, FRAME_LENGTH), (FRAME_SHIFT, 1))  # a view, no gather
    frames = frames - frames.mean(axis=1, keepdims=True)
    # Pre-emphasis with replicate padding: the first sample of every frame uses itself as predecessor
    # (Kaldi feature-window.cc, ProcessWindow: waveform[0] -= preemph_coeff * waveform[0]).
    previous = mx.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * window
    power = mx.abs(mx.fft.rfft(frames, n=FFT_SIZE, axis=1)) ** 2
    return mx.log(mx.maximum(power @ bank, LOG_FLOOR))


def apply_lfr_mx(feats, m: int = LFR_M, n: int = LFR_N):
    """`apply_lfr` as MLX ops (the same clipped row indices, built on the device)."""
    import mlx.core as mx

    length = feats.shape[0]
    num_out = math.ceil(length / n)
    rows = n * mx.arange(num_out)[:, None] + mx.arange(m)[None, :] - (m - 1) // 2
    rows = mx.clip(rows, 0, length - 1).reshape(-1)
    return mx.take(feats, rows, axis=0).reshape(num_out, m * feats.shape[1])


def features_mx(samples: np.ndarray, name: str = "audio"):
    """`features` as MLX ops: (ceil(T / 6), 560) float32 mx.array, lazily evaluated."""
    return apply_lfr_mx(fbank_mx(samples, name))
