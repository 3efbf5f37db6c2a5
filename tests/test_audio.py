"""Audio plugin (AudioMAE) on the shipped speech, the cup video's audio track, and awkward or bad
files made from them with real encoders (libsndfile, ffmpeg)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from pydantic import ValidationError

from polymae.modalities import BadInputError
from polymae.modalities.audio import AUDIOSET_MEAN, AUDIOSET_STD, STD_FLOOR, AudioPlugin, fbank, roll_mag
from polymae.ops import patchify, unpatchify
from polymae.testing import check_plugin
from polymae.tokenizer import MaskPolicy, MaskSpec

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "examples" / "data" / "audio"
VIDEO = ROOT / "examples" / "data" / "video"
SPEECH = AUDIO / "sense_and_sensibility_01_austen_64kb-0870.wav"  # 16 kHz mono, 7.1 s = 113600 samples
SHORT = AUDIO / "sense_and_sensibility_01_austen_64kb-0880.wav"  # 2.99 s = 47840 samples
ALSA = AUDIO / "alsa_Front_Center.wav"  # 48 kHz mono, 1.428 s
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def frames_of(samples: int) -> int:
    """Kaldi frame count (snip_edges): 25 ms frames every 10 ms at 16 kHz."""
    return 1 + (samples - 400) // 160


def encode(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wave, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    return wave


@pytest.fixture(scope="module")
def files(speech) -> dict[str, bytes]:
    """Name → bytes of good-but-awkward and bad files, all made from the real speech."""
    good = SPEECH.read_bytes()
    resample = torchaudio.functional.resample
    corrupt = bytearray(good)
    corrupt[0:4], corrupt[12:16] = b"JUNK", b"junk"  # the 'RIFF' and 'fmt ' markers
    unknown_codec = bytearray(good)
    unknown_codec[20:22] = (0x1234).to_bytes(2, "little")  # WAVE format tag no decoder knows
    flac = encode(speech, 16000, "FLAC")
    nan = speech.copy()
    nan[1000] = np.nan
    long = np.concatenate([speech, sf.read(SHORT, dtype="float32")[0]] * 3)[: 25 * 16000]  # 25 s
    return {
        "speech_8k.wav": encode(resample(torch.from_numpy(speech), 16000, 8000).numpy(), 8000),
        "speech_48k.wav": encode(resample(torch.from_numpy(speech), 16000, 48000).numpy(), 48000),
        "speech_stereo.wav": encode(np.stack([speech, 0.5 * speech], axis=1), 16000),
        "speech.flac": flac,
        "speech.ogg": encode(speech, 16000, "OGG", "VORBIS"),
        "silent.wav": encode(np.zeros(48000, np.float32), 16000),
        "long.flac": encode(long, 16000, "FLAC"),
        "empty.wav": b"",
        "corrupt_header.wav": bytes(corrupt),
        "truncated.wav": good[: len(good) // 2],
        "truncated.flac": flac[: len(flac) // 2],
        "unknown_codec.wav": bytes(unknown_codec),
        "not_audio.wav": b"this is a text file, not a WAV\n" * 20,
        "zero_length.wav": encode(np.zeros(0, np.float32), 16000),
        "too_short.wav": encode(speech[:300], 16000),
        "nan.wav": encode(nan, 16000, subtype="FLOAT"),
    }


def test_fbank_is_audiomae_kaldi_fbank(speech):
    plugin = AudioPlugin()
    wave = plugin.decode(SPEECH.read_bytes(), str(SPEECH))
    assert wave.dtype == np.float32 and wave.shape == (113600,) and np.allclose(wave, speech)
    ours = torch.from_numpy(fbank(wave, plugin.config))
    w = torch.from_numpy(wave)
    ref = torchaudio.compliance.kaldi.fbank(
        (w - w.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10, frame_length=25,
    )
    assert torch.allclose(ours, ref)
    assert ours.shape == (frames_of(113600), 128) == (708, 128)  # 128 bins, one frame per 10 ms


def test_normalisation_is_audiomae_formula(speech):
    raw = fbank(speech, AudioPlugin().config)
    assert np.allclose(AudioPlugin().features(speech), (raw - AUDIOSET_MEAN) / (2 * AUDIOSET_STD))  # stats unset
    assert np.allclose(AudioPlugin({"normalize": "audioset", "mean": 1.0, "std": 1.0}).features(speech),
                       (raw - AUDIOSET_MEAN) / (2 * AUDIOSET_STD))
    assert np.allclose(AudioPlugin({"mean": -5.0, "std": 3.0}).features(speech), (raw + 5.0) / 6.0)
    assert np.array_equal(AudioPlugin({"normalize": "none"}).features(speech), raw)


def test_patchify_round_trip_and_mae_order():
    spec = np.random.default_rng(0).normal(size=(1024, 128)).astype(np.float32)
    tokens = patchify(spec[..., None], 16)
    assert tokens.shape == (512, 256) and np.array_equal(unpatchify(tokens, 16, 64, 8, channels=1)[..., 0], spec)
    # AudioMAE patchifies the (1, 1024, 128) fbank "image" with MAE's einsum('nchpwq->nhwpqc')
    x = torch.from_numpy(spec)[None, None].reshape(1, 1, 64, 16, 8, 16)
    assert np.array_equal(torch.einsum("nchpwq->nhwpqc", x).reshape(1, 512, 256)[0].numpy(), tokens)


def test_tokens_time_first_and_padding_invalid():
    plugin = AudioPlugin()
    assert plugin.token_shape == (512, 256, 2)
    stream = plugin.tokenize(plugin.decode(SHORT.read_bytes(), str(SHORT)), None)
    real = frames_of(47840)  # 297 frames → time patches 0..18 hold real frames
    t, f = stream.coords[:, 0], stream.coords[:, -1]
    assert np.array_equal(np.unique(t), np.arange(64)) and np.array_equal(np.unique(f), np.arange(8))
    assert np.array_equal(stream.valid, t * 16 < real) and stream.valid.sum() == 19 * 8
    assert np.array_equal(stream.unit, np.arange(512))
    assert not stream.values[~stream.valid].any()  # padding after normalisation is 0
    assert np.isfinite(stream.values).all()
    last = stream.values[(t == 18) & (f == 0)].reshape(16, 16)  # partly padded patch: rows ≥ 297 − 288 are 0
    assert last[: real - 288].any() and not last[real - 288 :].any()
    for strategy in ("random", "block"):
        visible = MaskPolicy({"audio": MaskSpec(strategy=strategy)})({"audio": stream}, np.random.default_rng(0))
        assert visible["audio"].any() and not (visible["audio"] & ~stream.valid).any()


def test_long_recording_gives_windows(files):
    plugin = AudioPlugin()
    data = files["long.flac"]
    frames = frames_of(25 * 16000)  # 2498: windows at 0, 1024 (full) and 2048 (450 real ≥ 256)
    assert plugin.window_starts(frames) == [0, 1024, 2048]
    assert len(plugin.tokenize_file(data, "long.flac", np.random.default_rng(0))) == 3  # whatever the draw
    streams = plugin.tokenize_file(data, "long.flac", None)
    assert len(streams) == 3 == plugin.scan_file(data, "long.flac")[0]
    assert streams[0].valid.all() and streams[1].valid.all() and streams[2].valid.sum() == 29 * 8
    assert not np.allclose(streams[0].values, streams[1].values)
    assert not np.allclose(streams[1].values[:232], streams[2].values[:232])
    feats = plugin.features(plugin.decode(data, "long.flac"))
    assert np.array_equal(streams[1].values, patchify(feats[1024:2048, :, None], 16))
    assert np.array_equal(streams[0].values, plugin.tokenize(plugin.decode(data, "long.flac"), None).values)
    assert len(AudioPlugin({"min_window_frames": 451}).tokenize_file(data, "x.flac", None)) == 2
    overlap = AudioPlugin({"window_hop": 512})
    assert overlap.window_starts(frames) == [0, 512, 1024, 1536]  # the last reaches the end: 962 real frames
    assert overlap.scan_file(data, "long.flac")[0] == len(overlap.tokenize_file(data, "long.flac", None)) == 4
    # a recording shorter than one window always gives exactly one, however short
    assert AudioPlugin({"min_window_frames": 1000}).scan_file(SHORT.read_bytes(), str(SHORT))[0] == 1


def _shift_and_gain(out: np.ndarray, wave: np.ndarray) -> tuple[int, float]:
    """(k, g) with out ≈ g · roll(wave, k): k from the circular cross-correlation's peak."""
    k = int(np.argmax(np.fft.irfft(np.fft.rfft(out) * np.conj(np.fft.rfft(wave)), n=len(wave))))
    return k, float(np.dot(out, np.roll(wave, k)) / np.dot(wave, wave))


def test_roll_mag_is_a_circular_shift_and_gain(speech):
    draws = [_shift_and_gain(roll_mag(speech, np.random.default_rng(seed)), speech) for seed in range(6)]
    for seed, (k, g) in enumerate(draws):
        out = roll_mag(speech, np.random.default_rng(seed))
        np.testing.assert_allclose(out, g * np.roll(speech, k), rtol=1e-4, atol=1e-5)
        assert 0.5 <= g <= 1.5
    shifts, gains = zip(*draws, strict=True)
    assert len(set(shifts)) == 6 and len(set(gains)) == 6  # AudioMAE's own draw always shifts by 0
    k, g = _shift_and_gain(roll_mag(speech, np.random.default_rng(0), roll=False), speech)
    assert k == 0 and g != 1.0


def test_training_views_are_augmented_eval_views_are_not(files):
    plugin, data = AudioPlugin(), files["long.flac"]

    def values(rng):
        return np.stack([s.values for s in plugin.tokenize_file(data, "long.flac", rng)])

    assert np.array_equal(values(None), values(None))  # evaluation: deterministic
    assert np.array_equal(values(np.random.default_rng(3)), values(np.random.default_rng(3)))
    assert not np.allclose(values(np.random.default_rng(3)), values(np.random.default_rng(4)))
    assert not np.allclose(values(np.random.default_rng(3)), values(None))
    off = AudioPlugin({"roll_mag_aug": False})
    assert np.array_equal(np.stack([s.values for s in off.tokenize_file(data, "x.flac", np.random.default_rng(3))]),
                          values(None))


def test_clock_leader_gets_gain_not_roll(speech):
    """Paired with video, a roll would shift the sound against the frames: the training view's
    fbank is the evaluation view's plus 2·ln(gain) (log of a power scaled by gain²), in place."""
    plugin = AudioPlugin({"normalize": "none"})
    data = encode(speech, 16000)
    (train,), spans = plugin.tokenize_timed(data, "s.wav", np.random.default_rng(5))
    (evaluation,), same_spans = plugin.tokenize_timed(data, "s.wav", None)
    assert spans == same_spans
    above_floor = evaluation.values[evaluation.valid] > np.log(np.finfo(np.float32).eps) + 1  # Kaldi's log floor
    offset = (train.values[evaluation.valid] - evaluation.values[evaluation.valid])[above_floor]
    assert above_floor.mean() > 0.5
    gain = np.random.default_rng(5).beta(10.0, 10.0) + 0.5
    assert (np.abs(offset - 2 * np.log(gain)) < 1e-3).mean() > 0.95  # the rest: near Kaldi's floor


def test_max_seconds_bounds_memory(files):
    plugin = AudioPlugin({"max_seconds": 2.0})
    assert plugin.decode(files["long.flac"], "long.flac").shape == (32000,)
    assert plugin.decode(files["speech_48k.wav"], "x.wav").shape == (32000,)
    assert plugin.scan_file(files["long.flac"], "long.flac")[0] == 1


def test_awkward_files_same_shapes_and_durations(files, speech):
    plugin = AudioPlugin()
    reference = plugin.tokenize(speech, None)
    for name in ["speech_8k.wav", "speech_48k.wav", "speech_stereo.wav", "speech.flac", "speech.ogg"]:
        wave = plugin.decode(files[name], name)
        assert wave.dtype == np.float32 and abs(len(wave) - 113600) <= 16, name  # 7.1 s at 16 kHz
        stream = plugin.tokenize(wave, None)
        assert stream.values.shape == (512, 256) and np.array_equal(stream.valid, reference.valid), name
    assert np.allclose(plugin.decode(files["speech_stereo.wav"], "s.wav"), 0.75 * speech, atol=1e-4)  # channel mean
    assert np.allclose(plugin.decode(files["speech.flac"], "s.flac"), speech, atol=1e-4)
    alsa = plugin.decode(ALSA.read_bytes(), str(ALSA))
    assert sf.info(ALSA).frames == 68545 and alsa.shape == (-(-68545 // 3),)  # 48 kHz → 16 kHz: ⌈n/3⌉


def test_silent_audio_has_no_nan(files):
    plugin = AudioPlugin()
    data = files["silent.wav"]
    stream = plugin.tokenize(plugin.decode(data, "silent.wav"), None)
    assert np.isfinite(stream.values).all() and stream.valid.sum() == 19 * 8  # 3 s: 298 frames
    count, stats = plugin.scan_file(data, "silent.wav")
    assert count == 1 and all(np.isfinite(v) for v in stats.values())
    derived = plugin.with_statistics(stats)
    assert np.isfinite(derived["mean"]) and derived["std"] == STD_FLOOR
    normalised = AudioPlugin(derived).tokenize_file(data, "silent.wav", None)[0]
    assert np.isfinite(normalised.values).all()
    values = torch.as_tensor(normalised.values)[None]
    assert torch.isfinite(plugin.target(values)).all()
    assert np.isfinite(float(plugin.loss(torch.zeros_like(values), values, torch.as_tensor(normalised.valid)[None])))


def test_with_statistics_matches_numpy():
    plugin = AudioPlugin()
    totals: dict[str, float] = {}
    for path in (SPEECH, ALSA):
        for key, value in plugin.scan_file(path.read_bytes(), str(path))[1].items():
            totals[key] = totals.get(key, 0.0) + value
    feats = np.concatenate([fbank(plugin.decode(p.read_bytes(), str(p)), plugin.config) for p in (SPEECH, ALSA)])
    assert totals["fbank_count"] == feats.size
    derived = plugin.with_statistics(totals)
    assert derived["mean"] == pytest.approx(feats.astype(np.float64).mean(), rel=1e-6)
    assert derived["std"] == pytest.approx(feats.astype(np.float64).std(), rel=1e-5)
    assert AudioPlugin({"normalize": "audioset"}).with_statistics(totals) == {}
    assert AudioPlugin({"normalize": "none"}).with_statistics(totals) == {}
    assert AudioPlugin(derived).norm_stats() == (derived["mean"], derived["std"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.wav", "empty file (0 bytes)"),
        ("corrupt_header.wav", "not a recognised audio format"),
        ("not_audio.wav", "not a recognised audio format"),
        ("truncated.wav", "truncated: header declares 113600 samples, file holds 56789"),
        ("truncated.flac", "corrupt"),
        ("unknown_codec.wav", "corrupt or unsupported audio"),
        ("zero_length.wav", "zero-length audio"),
        ("too_short.wav", "too short"),
        ("nan.wav", "non-finite samples"),
    ],
)
def test_bad_files_raise_typed_error_with_reason(files, name, reason):
    with pytest.raises(BadInputError) as info:
        AudioPlugin().decode(files[name], name)
    assert info.value.reason.startswith(reason), info.value.reason
    with pytest.raises(BadInputError):
        AudioPlugin().scan_file(files[name], name)


def test_audio_plugin_passes_conformance_kit(files):
    good = [SPEECH.read_bytes(), ALSA.read_bytes(), files["speech_stereo.wav"], files["speech.ogg"],
            files["silent.wav"]]
    bad = [files[n] for n in ["empty.wav", "corrupt_header.wav", "truncated.wav", "zero_length.wav", "not_audio.wav"]]
    check_plugin(AudioPlugin(), good=good, bad=bad)


def test_render_shows_three_panels():
    plugin = AudioPlugin()
    stream = plugin.tokenize(plugin.decode(SHORT.read_bytes(), str(SHORT)), None)
    stream.visible = MaskPolicy({})({"audio": stream}, np.random.default_rng(0))["audio"]
    picture = plugin.render(stream, plugin.target(torch.as_tensor(stream.values)).numpy())
    assert picture.dtype == np.uint8 and picture.shape == (128, 3 * 19 * 16 + 8, 3)  # cropped to valid time
    width = 19 * 16
    original, masked, recon = (picture[:, i * (width + 4) : i * (width + 4) + width] for i in range(3))
    assert (picture[:, width : width + 4] == 255).all()
    assert np.abs(recon.astype(int) - original.astype(int)).max() <= 1  # perfect prediction: same picture
    hidden = ~stream.visible[0]  # token (t=0, f=0): bottom-left 16×16 block of the picture
    assert (masked[-16:, :16] == 128).all() == hidden


def test_config_is_validated():
    with pytest.raises(ValidationError):
        AudioPlugin({"target_length": 1000})  # not a multiple of the 16-frame patch
    with pytest.raises(ValidationError):
        AudioPlugin({"max_seconds": 0})
    with pytest.raises(ValidationError):
        AudioPlugin({"hop": 512})  # unknown field
    assert AudioPlugin({"target_length": 512}).token_shape == (256, 256, 2)
    assert AudioPlugin().describe()["reference"] == "AudioMAE (Huang et al. 2022)"


@needs_ffmpeg
def test_audio_track_of_video_when_asked(tmp_path):
    cup, carphone = VIDEO / "opencv_cup.mp4", VIDEO / "carphone_pristine.mp4"
    assert ".mp4" not in AudioPlugin().extensions
    with pytest.raises(BadInputError, match="from_video"):
        AudioPlugin().decode(cup.read_bytes(), str(cup))
    plugin = AudioPlugin({"from_video": True})
    assert ".mp4" in plugin.extensions and ".wav" in plugin.extensions
    wave = plugin.decode(cup.read_bytes(), str(cup))  # AAC 48 kHz stereo → 16 kHz mono
    assert wave.dtype == np.float32 and abs(len(wave) / 16000 - 8.1) < 0.05 and np.abs(wave).max() > 0.01
    streams = plugin.tokenize_file(cup.read_bytes(), str(cup), None)
    assert len(streams) == 1 and streams[0].valid.sum() == -(-frames_of(len(wave)) // 16) * 8
    assert abs(frames_of(len(wave)) - 810) <= 3
    elsewhere = plugin.decode(cup.read_bytes(), str(tmp_path / "not_there" / "cup.mp4"))  # bytes only: temp file
    assert np.array_equal(elsewhere, wave)
    assert plugin.decode(cup.read_bytes(), str(cup)).shape == wave.shape
    assert len(AudioPlugin({"from_video": True, "max_seconds": 3}).decode(cup.read_bytes(), str(cup))) == 48000
    with pytest.raises(BadInputError) as info:
        plugin.decode(carphone.read_bytes(), str(carphone))
    assert info.value.reason == "no audio track"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all\n" * 50)
    with pytest.raises(BadInputError, match="ffmpeg could not read"):
        plugin.decode(junk.read_bytes(), str(junk))


@needs_ffmpeg
def test_aac_audio_file_is_refused_as_unsupported(tmp_path):
    import subprocess

    m4a = tmp_path / "speech.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SPEECH), "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(BadInputError, match="not a recognised audio format"):
        AudioPlugin().decode(m4a.read_bytes(), str(m4a))
