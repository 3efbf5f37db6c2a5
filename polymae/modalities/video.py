"""Video plugin (VideoMAE, VideoMAE V2): decord → clips of 16 frames at stride 4 → 224² crops →
2×16×16 tubelets → 1568 tokens with (t, y, x) coordinates.

Decode once, sample many (VideoMAE's repeated sampling, used by V2): a file is opened once and
``num_clips`` clips are cut from one batched read of the union of their frames. Only those
frames are ever decoded, so memory is bounded by ``max_file_bytes`` for the encoded file plus
``num_clips × num_frames`` decoded frames (frames whose short side is over ``decode_short_side``
are decoded downscaled by decord).

Short videos (fewer frames than a clip spans) follow ``short_video``: ``repeat_last`` (what
VideoMAE's loader does: indices past the end stay on the last frame), ``loop``, or
``quarantine``. Token values are ImageNet-normalised pixels of a tubelet in (t, row, col,
channel) order, as VideoMAE's ``rearrange``; the target normalises each channel of a tubelet
on its own (VideoMAE), with MAE's epsilon inside the square root.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from typing import Literal

import decord
import numpy as np
from PIL import Image
from pydantic import Field

from polymae.modalities.base import BadInputError, NormPixPlugin, PluginConfig
from polymae.ops import GAP, IMAGENET_MEAN, IMAGENET_STD, centre_box, panel_column, panel_row, tubeletify, untubeletify
from polymae.ops.crops import FrameView, TimeSpan
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.stream import TokenStream


class VideoConfig(PluginConfig):
    """VideoMAE's pre-training settings."""

    num_frames: int = Field(16, gt=0, description="frames per clip")
    stride: int = Field(4, gt=0, description="frame step within a clip (VideoMAE's sampling_rate)")
    num_clips: int = Field(2, gt=0, description="clips sampled from one decode of a file")
    img_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    tubelet_size: int = Field(2, gt=0)
    crop_scales: tuple[float, ...] = Field((1.0, 0.875, 0.75, 0.66), description="VideoMAE's multi-scale crop")
    short_video: Literal["repeat_last", "loop", "quarantine"] = "repeat_last"
    decode_short_side: int = Field(320, gt=0, description="larger frames are decoded downscaled to this "
                                   "short side (VideoMAE trains on 320p copies)")
    max_file_bytes: int = Field(512 * 2**20, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    norm_pix_loss: bool = True


def check_iso_bmff(data: bytes) -> None:
    """MP4/MOV files: every top-level box must fit in the file. decord reads a cut-off MP4 from
    memory past its end (a crash, not an error), so truncation is caught here first."""
    if data[4:8] != b"ftyp":
        return
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1 and offset + 16 <= len(data):
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        if size == 0:  # the box runs to the end of the file
            return
        if size < 8 or offset + size > len(data):
            name = kind.decode("latin-1")
            raise BadInputError(f"truncated MP4: box {name!r} declares {size} bytes at offset {offset}, "
                                f"file ends at {len(data)}")
        offset += size
    if offset != len(data):
        raise BadInputError(f"truncated MP4: {len(data) - offset} stray bytes after the last box")


def diagnose(data: bytes, path: str, error: str) -> str:
    """Why decord could not open a file, in words: ffprobe tells a missing video stream (a
    zero-frame file) from a codec the decoder lacks; otherwise decord's own last words."""
    source = path if os.path.isfile(path) else "pipe:0"
    try:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json", source],
            input=None if source == path else data, capture_output=True, timeout=30, check=False)
        streams = json.loads(probe.stdout or b"{}").get("streams", [])
    except (OSError, subprocess.TimeoutExpired, ValueError):
        streams = None  # no ffprobe: fall back to decord's message
    if streams is not None and probe.returncode == 0:
        codecs = [s.get("codec_name", "?") for s in streams if s.get("codec_type") == "video"]
        if not codecs:
            return "zero-frame video: the file has no video stream"
        return f"unsupported codec {codecs[0]!r}: the video decoder (decord) cannot decode it"
    said = (probe.stderr.decode(errors="replace") if streams is not None else "") or error
    last = said.strip().splitlines()[-1] if said.strip() else "unknown error"
    return f"not a decodable video: {last.split(': ')[-1].strip()[:200]}"


class VideoPlugin(NormPixPlugin):
    name = "video"
    Config = VideoConfig
    norm_pix_channels = 3  # VideoMAE normalises each tubelet per colour channel
    extensions = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
    render_columns = ()  # 4 frames spread over the clip
    render_rows = ("original", "masked", "reconstruction")
    reference = "VideoMAE (Tong et al. 2022), VideoMAE V2 (Wang et al. 2023)"
    # VideoMAE's pretrain_videomae_{small,base,large}: 4 decoder blocks, half the encoder's width
    reference_decoder = {"small": (4, 192, 3), "base": (4, 384, 6), "large": (4, 512, 8)}
    default_mask = {"strategy": "tube", "ratio": 0.9}
    config: VideoConfig

    @property
    def grid(self) -> tuple[int, int]:
        """(time slices, spatial side) of the token grid."""
        return self.config.num_frames // self.config.tubelet_size, self.config.img_size // self.config.patch_size

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Tubelet steps over the clip's seconds, then patch rows and columns."""
        t, g = self.grid
        return grid_axis("t", "s", t), grid_axis("y", "px", g), grid_axis("x", "px", g)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        t, g = self.grid
        return t * g * g, self.config.tubelet_size * self.config.patch_size**2 * 3, 3

    # --- decoding ---------------------------------------------------------------------------
    def _open(self, data: bytes, path: str) -> decord.VideoReader:
        """A decord reader over the file (from its path when it exists: decord streams it)."""
        self.check_bytes(data)
        check_iso_bmff(data)
        source = path if os.path.isfile(path) else io.BytesIO(data)
        try:
            reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            height, width = reader[0].shape[:2] if len(reader) else (0, 0)
            scale = self.config.decode_short_side / max(min(height, width), 1)
            if scale < 1:  # reopen decoding straight to a bounded size
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1,
                                            width=round(width * scale), height=round(height * scale))
        except (RuntimeError, decord.DECORDError) as err:
            raise BadInputError(diagnose(data, path, str(err))) from err
        if len(reader) == 0:
            raise BadInputError("zero-frame video: the video stream holds no frames")
        return reader

    def clip_indices(self, num_frames: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Frame indices of each of ``num_clips`` clips: random starts in training, evenly spaced
        starts for evaluation (``rng=None``); short videos by the ``short_video`` rule."""
        cfg = self.config
        offsets = np.arange(cfg.num_frames) * cfg.stride
        span = int(offsets[-1]) + 1
        if num_frames < span and cfg.short_video == "quarantine":
            raise BadInputError(f"too short: {num_frames} frames < clip span {span} "
                                f"({cfg.num_frames} frames at stride {cfg.stride})")
        last_start = max(num_frames - span, 0)
        if rng is None:
            starts = np.linspace(0, last_start, cfg.num_clips).round().astype(int)
        else:
            starts = rng.integers(0, last_start + 1, size=cfg.num_clips)
        clips = [start + offsets for start in starts]
        if cfg.short_video == "loop":
            return [idx % num_frames for idx in clips]
        return [np.minimum(idx, num_frames - 1) for idx in clips]

    def read_clips(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Decode once: all clips' frames in one batched read → list of (T, H, W, 3) uint8."""
        return self._read(data, path, rng)[0]

    def _read(self, data: bytes, path: str, rng: np.random.Generator | None,
              ) -> tuple[list[np.ndarray], list[TimeSpan]]:
        """The clips and the seconds each covers: from its first frame to one stride past its last
        (16 frames at stride 4 at 30 fps: 2.13 s), within the video."""
        reader = self._open(data, path)
        clips = self.clip_indices(len(reader), rng)
        fps = float(reader.get_avg_fps()) or 30.0
        length = self.config.num_frames * self.config.stride  # frames a clip spans
        spans = [TimeSpan(int(idx[0]) / fps, min(len(reader), int(idx[0]) + length) / fps) for idx in clips]
        return self._frames(reader, clips), spans

    def _frames(self, reader: decord.VideoReader, clips: list[np.ndarray]) -> list[np.ndarray]:
        wanted = np.unique(np.concatenate(clips))
        try:
            frames = reader.get_batch(wanted.tolist()).asnumpy()
        except (RuntimeError, IndexError, decord.DECORDError) as err:
            raise BadInputError(f"frames could not be decoded: {str(err).strip()[:200]}") from err
        lookup = {int(i): k for k, i in enumerate(wanted)}
        return [frames[[lookup[int(i)] for i in idx]] for idx in clips]

    @classmethod
    def check_native(cls) -> str:
        decord.bridge.set_bridge("native")  # touches libdecord; decoding needs a real file (the tests have them)
        return f"decord {decord.__version__}"

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → the first evaluation clip (T, H, W, 3) uint8."""
        return self.read_clips(data, path, None)[0]

    def tokenize_file(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[TokenStream]:
        return [self.tokenize(clip, rng) for clip in self.read_clips(data, path, rng)]

    def tokenize_timed(self, data: bytes, path: str, rng: np.random.Generator | None,
                       ) -> tuple[list[TokenStream], list[TimeSpan]]:
        """The clips' token streams and their seconds, for the streams on this video's clock."""
        clips, spans = self._read(data, path, rng)
        return [self.tokenize(clip, rng) for clip in clips], spans

    def tokenize_spans(self, data: bytes, path: str, spans: list[TimeSpan]) -> list[TokenStream]:
        """As a clock's follower (CAV-MAE: an audio window leads): ``num_frames`` frames spread
        evenly over each span's seconds, the evaluation crop (the audio's window is the draw)."""
        reader = self._open(data, path)
        fps, count = float(reader.get_avg_fps()) or 30.0, len(reader)
        clips = []
        for span in spans:
            first = min(int(span.start * fps), count - 1)
            last = max(first, min(count, int(np.ceil(span.end * fps))) - 1)
            clips.append(np.linspace(first, last, self.config.num_frames).round().astype(int))
        return [self.tokenize(clip, None) for clip in self._frames(reader, clips)]

    # --- tokens -----------------------------------------------------------------------------
    def _crop_box(self, height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
        """VideoMAE's multi-scale crop: side lengths from scales of the short side, at most one
        scale step apart, at a random position; a centre square for evaluation."""
        if rng is None:
            return centre_box(height, width)
        scales = self.config.crop_scales
        base = min(height, width)
        pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales)) if abs(i - j) <= 1]
        i, j = pairs[int(rng.integers(len(pairs)))]
        h, w = max(1, int(base * scales[i])), max(1, int(base * scales[j]))
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w

    def view(self, clip: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """(T, H, W, 3) uint8 → (T, S, S, 3) uint8: one crop box for every frame, resized to S."""
        size = self.config.img_size
        top, left, h, w = self._crop_box(clip.shape[1], clip.shape[2], rng)
        return np.stack([np.asarray(Image.fromarray(frame[top : top + h, left : left + w])
                                    .resize((size, size), Image.BILINEAR)) for frame in clip])

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        cfg = self.config
        pixels = (self.view(array, rng).astype(np.float32) / 255.0 - cfg.mean) / cfg.std
        t, g = self.grid
        tt, yy, xx = np.meshgrid(np.arange(t), np.arange(g), np.arange(g), indexing="ij")
        return TokenStream(
            values=tubeletify(pixels.astype(np.float32), cfg.tubelet_size, cfg.patch_size),
            coords=np.stack([tt.ravel(), yy.ravel(), xx.ravel()], axis=1),
            unit=np.arange(t * g * g),  # one unit per tubelet: `random`; `tube` groups by (y, x)
            valid=np.ones(t * g * g, dtype=bool),
            axes=self.axes,
        )

    def _panels(self, stream: TokenStream, pred: np.ndarray) -> list[np.ndarray]:
        """original, masked input, reconstruction: each (T, S, S, 3) uint8. Tokens the decoder
        did not reconstruct (V2's dropped ones) stay grey in the reconstruction."""
        cfg = self.config
        values = stream.values
        pred = self.prediction_values(pred, values)
        per_value = cfg.tubelet_size * cfg.patch_size**2
        grey = (0.5 - np.tile(cfg.mean, per_value)) / np.tile(cfg.std, per_value)
        vis = stream.visible[:, None]
        shown = (stream.decoded & ~stream.visible)[:, None]
        t, g = self.grid
        out = []
        for tokens in (values, np.where(vis, values, grey), np.where(vis, values, np.where(shown, pred, grey))):
            frames = untubeletify(tokens.astype(np.float32), cfg.tubelet_size, cfg.patch_size, t, g, g)
            out.append((np.clip(frames * cfg.std + cfg.mean, 0, 1) * 255).round().astype(np.uint8))
        return out

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """Frame strip: rows original / masked / reconstruction, 4 frames spread over the clip."""
        panels = self._panels(stream, pred)
        picks = np.linspace(0, self.config.num_frames - 1, 4).round().astype(int)
        strip = panel_column([panel_row([frames[i] for i in picks]) for frames in panels])
        return np.pad(strip, ((0, GAP), (0, GAP), (0, 0)), constant_values=255)  # the strip's white right/bottom margin

    def render_frames(self, stream: TokenStream, pred: np.ndarray) -> list[np.ndarray]:
        """Animation frames: original | masked | reconstruction side by side, every frame."""
        panels = self._panels(stream, pred)
        return [panel_row([frames[i] for frames in panels]) for i in range(self.config.num_frames)]
