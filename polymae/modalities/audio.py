"""Audio plugin (AudioMAE): waveform → Kaldi log-mel fbank (128 bins, 10 ms) → 1024-frame windows →
16×16 patches → 512 tokens (64 time × 8 frequency).

Decoding: WAV, FLAC and OGG with soundfile (libsndfile), mixed to mono and resampled to 16 kHz
with torchaudio; with ``from_video`` the audio track of a video through an ffmpeg subprocess.

Memory: files above ``max_file_bytes`` are refused before they are read; beyond that decode reads
at most ``max_seconds`` of audio (soundfile ``frames=``, ffmpeg ``-t``), so no file becomes more
than ``max_seconds · sample_rate`` float32 samples (600 s → 38 MB).

As AudioMAE's ``_wav2fbank`` the waveform mean is subtracted before the fbank, and values are
normalised as ``(fbank − mean) / (2 · std)``. Differences, each for a reason:

* A long recording gives several samples, windows starting at 0, hop, 2·hop, …; the last, partial
  window is kept only with ≥ ``min_window_frames`` real frames (a recording shorter than one
  window always gives exactly one). AudioMAE keeps the first 1024 frames only.
* Short windows are zero-padded at the end as in AudioMAE, but after normalisation (AudioMAE pads
  before, so its padding reads (0 − mean) / (2·std)); tokens lying wholly in padding are marked
  invalid, so they are never visible and never in the loss (AudioMAE reconstructs padding).
* ``normalize="dataset"`` uses the mean/std that :meth:`AudioPlugin.with_statistics` derives from
  the scan; until they are set it falls back to AudioMAE's AudioSet constants.
* libsndfile silently shortens a WAV whose header claims more samples than the file holds; such
  files are refused as truncated, from the RIFF ``data`` chunk size.

Augmentation (training views only; evaluation views, ``rng=None``, are deterministic): AudioMAE's
released pre-training recipe (``submit_pretrain_audioset2M.sh``: ``--roll_mag_aug True``, weight
decay 1e-4) applies its ``_roll_mag_aug`` to the mean-removed waveform before the fbank: a
circular shift by a uniform number of samples and a gain ~ Beta(10, 10) + 0.5 (0.5–1.5, mean 1).
``roll_mag_aug`` (default on) does the same. Two differences: AudioMAE draws the shift as
``randint(len(waveform))`` of a (1, S) tensor, which is always 0, so its roll never happens;
here the shift is uniform over the recording's samples as intended. As a clock's leader (audio
paired with video, ``tokenize_timed``) only the gain applies: a roll would move the sound
against the frames it is paired with. A clock's follower (``tokenize_spans``) is not augmented.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tempfile
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio
from pydantic import Field, model_validator

from polymae.modalities.base import BadInputError, NormPixPlugin, PluginConfig
from polymae.ops import panel_row, patchify, unpatchify, viridis
from polymae.ops.crops import FrameView, TimeSpan
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.stream import TokenStream

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974  # AudioMAE's AudioSet fbank statistics
STD_FLOOR = 1e-3  # an all-silent dataset has std 0: floor it so normalisation stays finite
_PCM_TAGS = (1, 3, 6, 7, 0xFFFE)  # WAV codecs whose block_align is the size of one frame


class AudioConfig(PluginConfig):
    """AudioMAE's pre-training settings."""

    max_file_bytes: int = Field(256 * 2**20, gt=0, description="larger files are refused before they are read")
    max_seconds: float = Field(600.0, gt=0, description="decode reads at most this much audio of a file (memory)")
    sample_rate: int = Field(16000, gt=0)
    from_video: bool = Field(False, description="also read the audio track of video files, with ffmpeg")
    num_mel_bins: int = Field(128, gt=0)
    frame_length: float = Field(25.0, gt=0, description="fbank frame length, ms")
    frame_shift: float = Field(10.0, gt=0, description="fbank frame shift, ms")
    target_length: int = Field(1024, gt=0, description="fbank frames per sample (window)")
    window_hop: int | None = Field(None, gt=0, description="frames between window starts; None: target_length")
    min_window_frames: int = Field(256, gt=0, description="a last, partial window needs this many real frames")
    patch_size: int = Field(16, gt=0)
    normalize: Literal["dataset", "audioset", "none"] = "dataset"
    mean: float | None = Field(None, description="dataset fbank mean (set from the scan statistics)")
    std: float | None = Field(None, gt=0, description="dataset fbank std (set from the scan statistics)")
    norm_pix_loss: bool = True
    roll_mag_aug: bool = Field(True, description="AudioMAE's training augmentation: random circular time "
                               "shift and gain ~ Beta(10, 10) + 0.5 of the waveform")

    @model_validator(mode="after")
    def _patches_tile_window(self) -> AudioConfig:
        if self.target_length % self.patch_size or self.num_mel_bins % self.patch_size:
            raise ValueError("target_length and num_mel_bins must be multiples of patch_size")
        return self


def fbank(waveform: np.ndarray, config: AudioConfig) -> np.ndarray:
    """(S,) float32 mono waveform → (frames, num_mel_bins) float32 Kaldi log-mel fbank, AudioMAE's
    settings (mean removed first, as its ``_wav2fbank``). frames = 1 + (S − 400) // 160 at 16 kHz."""
    wav = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    feats = torchaudio.compliance.kaldi.fbank(
        (wav - wav.mean())[None], htk_compat=True, sample_frequency=config.sample_rate, use_energy=False,
        window_type="hanning", num_mel_bins=config.num_mel_bins, dither=0.0,
        frame_shift=config.frame_shift, frame_length=config.frame_length,
    )
    return feats.numpy()


def roll_mag(waveform: np.ndarray, rng: np.random.Generator, roll: bool = True) -> np.ndarray:
    """AudioMAE's ``_roll_mag_aug``: (S,) waveform → (S,) circularly shifted by a uniform number of
    samples (``roll``) and scaled by a gain ~ Beta(10, 10) + 0.5."""
    shift = int(rng.integers(len(waveform))) if roll else 0
    gain = np.float32(rng.beta(10.0, 10.0) + 0.5)
    return np.roll(waveform, shift) * gain


def _riff_truncation(data: bytes) -> str | None:
    """A reason when a RIFF/WAVE ``data`` chunk claims more bytes than the file holds, else None.
    (libsndfile clamps the frame count silently.) Sizes 0 and 0xFFFFFFFF mean "unknown" (streams)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, tag, align = 12, 0, 0
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        if cid == b"fmt " and pos + 22 <= len(data):
            (tag,), (align,) = struct.unpack_from("<H", data, pos + 8), struct.unpack_from("<H", data, pos + 20)
        elif cid == b"data":
            held = len(data) - pos - 8
            if not 0 < size < 0xFFFFFFFF or held >= size:
                return None
            if tag in _PCM_TAGS and align > 0:
                return f"truncated: header declares {size // align} samples, file holds {held // align}"
            return f"truncated: header declares {size} bytes of audio, file holds {held}"
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return None


def colourize(spec: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(T, F) → (F, T, 3) uint8 viridis picture, low frequencies at the bottom."""
    return viridis((spec.T[::-1] - lo) / max(hi - lo, 1e-6))


class AudioPlugin(NormPixPlugin):
    name = "audio"
    Config = AudioConfig
    extensions = AUDIO_EXTENSIONS  # with from_video the instance also lists VIDEO_EXTENSIONS
    reference = "AudioMAE (Huang et al. 2022)"
    # AudioMAE's global-attention decoder (decoder_mode 0) is MAE's 512 × 8 blocks × 16 heads for
    # every size; its released recipe's 16-block decoder is the Swin local one (decoder_mode 1,
    # windows 4×4), which PolyMAE does not build, so the audio model keeps MAE's decoder
    reference_decoder = {"small": (8, 512, 16), "base": (8, 512, 16), "large": (8, 512, 16)}
    statistics = ("fbank_sum", "fbank_sumsq", "fbank_count")
    default_mask = {"strategy": "random", "ratio": 0.8}
    config: AudioConfig

    def __init__(self, config: AudioConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        if self.config.from_video:
            self.extensions = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS

    @property
    def grid(self) -> tuple[int, int]:
        """(time, frequency) patches per window: (64, 8)."""
        return self.config.target_length // self.config.patch_size, self.config.num_mel_bins // self.config.patch_size

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Patch steps over the window's seconds, then mel-bin patches."""
        h, w = self.grid
        return grid_axis("t", "s", h), grid_axis("f", "mel", w)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        h, w = self.grid
        return h * w, self.config.patch_size**2, 2

    # --- decode ------------------------------------------------------------------------------

    @classmethod
    def check_native(cls) -> str:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
        wave, rate = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
        torchaudio.compliance.kaldi.fbank(torch.as_tensor(wave)[None], sample_frequency=rate, num_mel_bins=8)
        return f"libsndfile {sf.__libsndfile_version__}, torchaudio {torchaudio.__version__}"

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (S,) float32 mono waveform at ``sample_rate``, S ≤ max_seconds · sample_rate."""
        cfg = self.config
        self.check_bytes(data)
        ext = os.path.splitext(path)[1].lower()
        if ext in VIDEO_EXTENSIONS:
            if not cfg.from_video:
                raise BadInputError(f"video file ({ext}): set from_video=true to use its audio track")
            wave = self._ffmpeg_track(data, path)
        else:
            wave, rate = self._soundfile_read(data)
            if rate != cfg.sample_rate and len(wave):
                wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, cfg.sample_rate).numpy()
        wave = wave[: int(cfg.max_seconds * cfg.sample_rate)]
        if len(wave) == 0:
            raise BadInputError("zero-length audio (0 samples)")
        if not np.isfinite(wave).all():  # float WAVs can hold NaN/inf
            raise BadInputError("non-finite samples")
        if len(wave) < int(cfg.frame_length * cfg.sample_rate / 1000):
            raise BadInputError(f"too short: {len(wave)} samples, less than one {cfg.frame_length:g} ms frame")
        return np.ascontiguousarray(wave, dtype=np.float32)

    def _soundfile_read(self, data: bytes) -> tuple[np.ndarray, int]:
        """WAV/FLAC/OGG bytes → ((S,) float32 mono, sample rate), at most max_seconds read."""
        reason = _riff_truncation(data)
        if reason:
            raise BadInputError(reason)
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                rate, declared = f.samplerate, f.frames
                limit = int(np.ceil(self.config.max_seconds * rate))
                wanted = min(declared, limit) if declared > 0 else limit  # frames may be unknown (0)
                block = f.read(frames=wanted, dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            if err.code == 1:  # SF_ERR_UNRECOGNISED_FORMAT
                raise BadInputError("not a recognised audio format (expects WAV, FLAC or OGG)") from err
            raise BadInputError(f"corrupt or unsupported audio: {err.error_string}") from err
        except (RuntimeError, ValueError, EOFError) as err:
            raise BadInputError(f"corrupt audio: {err}") from err
        if 0 < declared and len(block) < wanted:
            raise BadInputError(f"truncated: header declares {declared} samples, file holds {len(block)}")
        return block.mean(axis=1), rate  # mono: mean of channels

    def _ffmpeg_track(self, data: bytes, path: str) -> np.ndarray:
        """First audio track of a video → (S,) float32 mono at sample_rate. ffmpeg reads the file
        itself (mp4 needs seeking); bytes that are not the local file at ``path`` go to a temp file."""
        cfg = self.config
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise BadInputError("ffmpeg not found on PATH: it is needed to read the audio track of videos")
        with tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1]) as tmp:
            source = path
            if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
                tmp.write(data)
                tmp.flush()
                source = tmp.name
            cmd = [exe, "-nostdin", "-v", "error", "-i", "file:" + os.path.abspath(source), "-map", "0:a:0",
                   "-t", f"{cfg.max_seconds:g}", "-f", "f32le", "-ac", "1", "-ar", str(cfg.sample_rate), "pipe:1"]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=600)
            except subprocess.TimeoutExpired as err:
                raise BadInputError("ffmpeg timed out reading the audio track") from err
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            if "matches no streams" in message:
                raise BadInputError("no audio track")
            last = message.splitlines()[-1] if message else f"exit status {proc.returncode}"
            raise BadInputError(f"ffmpeg could not read the audio track: {last}")
        return np.frombuffer(proc.stdout, dtype="<f4").copy()

    # --- tokens ------------------------------------------------------------------------------
    def norm_stats(self) -> tuple[float, float] | None:
        """(mean, std) of ``(fbank − mean) / (2·std)``, or None for ``normalize="none"``."""
        cfg = self.config
        if cfg.normalize == "none":
            return None
        if cfg.normalize == "dataset" and cfg.mean is not None and cfg.std is not None:
            return cfg.mean, cfg.std
        return AUDIOSET_MEAN, AUDIOSET_STD  # "audioset", or dataset statistics not computed yet

    def features(self, waveform: np.ndarray, rng: np.random.Generator | None = None,
                 roll: bool = True) -> np.ndarray:
        """(S,) waveform → (frames, num_mel_bins) normalised fbank; with ``rng`` (a training view)
        and ``roll_mag_aug``, of the waveform after :func:`roll_mag` (``roll``: shift as well as gain)."""
        if rng is not None and self.config.roll_mag_aug:
            waveform = roll_mag(waveform, rng, roll)
        feats = fbank(waveform, self.config)
        stats = self.norm_stats()
        return feats if stats is None else (feats - stats[0]) / (2 * stats[1])

    def window_starts(self, frames: int) -> list[int]:
        """First frames of the windows of a recording with ``frames`` fbank frames (≥ 1 window)."""
        cfg = self.config
        length, hop = cfg.target_length, cfg.window_hop or cfg.target_length
        starts = [0]
        while starts[-1] + length < frames:  # frames remain after the last window
            start = starts[-1] + hop
            if start + length > frames and frames - start < cfg.min_window_frames:
                break  # a partial window too short to keep
            starts.append(start)
        return starts

    def window_stream(self, spec: np.ndarray) -> TokenStream:
        """(T ≤ target_length, F) normalised fbank → stream of the zero-padded (target_length, F)
        window; tokens wholly in padding are invalid. coords (time index, frequency index)."""
        p, (h, w) = self.config.patch_size, self.grid
        window = np.zeros((self.config.target_length, self.config.num_mel_bins), dtype=np.float32)
        window[: len(spec)] = spec[: len(window)]
        t, f = np.divmod(np.arange(h * w), w)
        return TokenStream(values=patchify(window[..., None], p), coords=np.stack([t, f], axis=1),
                           unit=np.arange(h * w), valid=t * p < min(len(spec), len(window)), axes=self.axes)

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        """The first window; with ``rng``, of the augmented waveform (``roll_mag_aug``)."""
        return self.window_stream(self.features(array, rng)[: self.config.target_length])

    def tokenize_file(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[TokenStream]:
        """Every window of the file, in time order; decoded, augmented (with ``rng``) and transformed
        once, so the window count is the scan's whatever the draw."""
        feats = self.features(self.decode(data, path), rng)
        return [self.window_stream(feats[s : s + self.config.target_length]) for s in self.window_starts(len(feats))]

    def tokenize_timed(self, data: bytes, path: str, rng: np.random.Generator | None,
                       ) -> tuple[list[TokenStream], list[TimeSpan]]:
        """As a clock's first stream (CAV-MAE's pairing: list the audio stream first): every window
        and its seconds (10.24 s at AudioMAE's 1024 frames; up to the end of a shorter recording),
        so the video stream takes its frames inside each window. Training views get the gain only:
        a roll would shift the sound against the video."""
        feats = self.features(self.decode(data, path), rng, roll=False)
        per_second, length = 1000.0 / self.config.frame_shift, self.config.target_length
        starts = self.window_starts(len(feats))
        spans = [TimeSpan(s / per_second, min(s + length, len(feats)) / per_second) for s in starts]
        return [self.window_stream(feats[s : s + length]) for s in starts], spans

    def tokenize_spans(self, data: bytes, path: str, spans: list[TimeSpan]) -> list[TokenStream]:
        """The fbank of each span's seconds (a video clip's), padded to ``target_length`` by the
        window rule (padding invalid); a span longer than the window keeps its first frames."""
        feats = self.features(self.decode(data, path))
        per_second = 1000.0 / self.config.frame_shift
        return [self.window_stream(feats[round(s.start * per_second) : round(s.end * per_second)]
                                   [: self.config.target_length]) for s in spans]

    def scan_file(self, data: bytes, path: str) -> tuple[int, dict[str, float]]:
        """(windows, sums over all fbank values of the file before normalisation)."""
        feats = fbank(self.decode(data, path), self.config).astype(np.float64)
        stats = {"fbank_sum": float(feats.sum()), "fbank_sumsq": float((feats**2).sum()),
                 "fbank_count": float(feats.size)}
        return len(self.window_starts(len(feats))), stats

    def with_statistics(self, totals: dict[str, float]) -> dict[str, Any]:
        """Dataset mean and std (floored at STD_FLOOR) for ``normalize="dataset"``; else nothing."""
        count = totals.get("fbank_count", 0.0)
        if self.config.normalize != "dataset" or count <= 0:
            return {}
        mean = totals["fbank_sum"] / count
        var = max(totals["fbank_sumsq"] / count - mean**2, 0.0)  # clamp float round-off below 0
        return {"mean": float(mean), "std": float(max(np.sqrt(var), STD_FLOOR))}

    # --- loss, render --------------------------------------------------------------------------
    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """original | masked input (hidden patches grey) | reconstruction (hidden patches predicted,
        visible ones pasted), each (F, T', 3) with
        frequency upwards and time to the right, cropped to the windows' valid time patches."""
        p, (h, w) = self.config.patch_size, self.grid
        values = stream.values
        pred = self.prediction_values(pred, values)
        rows = np.flatnonzero(stream.valid.reshape(h, w).any(axis=1))
        frames = (int(rows.max()) + 1 if len(rows) else h) * p

        def spec(tokens: np.ndarray) -> np.ndarray:
            return unpatchify(tokens.astype(np.float32), p, h, w, channels=1)[:frames, :, 0]

        original = spec(values)
        lo, hi = float(original.min()), float(original.max())
        hidden = spec(np.repeat(~stream.visible[:, None], p * p, axis=1)).T[::-1, :, None] > 0.5  # (F, T', 1)
        masked = np.where(hidden, np.uint8(128), colourize(original, lo, hi))
        pasted = np.where(stream.visible[:, None], values, pred)  # visible patches as they were
        return panel_row([colourize(original, lo, hi), masked, colourize(spec(pasted), lo, hi)])
