"""Synthetic forward camera: a pinhole camera over a textured ground plane.

Two precomputations make a frame a handful of vectorised numpy operations:
- `GroundRaster` paints the track once, top-down (road, edge lines, centre dashes, noisy ground),
  with lighting applied, one 3-byte texel per element, plus 2x box-filtered mip levels so
  far-away ground does not shimmer.
- `Camera` casts every pixel's ray once per resolution: where it meets the ground in the car's
  frame, how much haze covers it, which mip level fits its footprint. Because the car does not
  pitch or roll, the horizon is a fixed row and the sky above it a constant image.
A frame is then: rotate and translate the precomputed ground points, gather texels, blend haze.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from brain.hardware.sim.tracks import Track

LINE_W = 0.04  # edge line width (m), painted inside the road edge
DASH_W, DASH_LEN, DASH_PERIOD = 0.025, 0.25, 0.5  # centre dashes (m)
MARGIN = 4.0  # ground painted beyond the track's bounding box (m)
MIP_LEVELS = 4


def _box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Separable box blur with edge padding, via cumulative sums (O(n) per axis)."""
    for axis in (0, 1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (k, k)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = a.shape[axis]
        a = ((np.take(c, np.arange(2 * k + 1, 2 * k + 1 + n), axis=axis)
              - np.take(c, np.arange(0, n), axis=axis)) / (2 * k + 1)).astype(np.float32)
    return a


def _pack(rgb: np.ndarray) -> np.ndarray:
    """float (H, W, 3) 0-255 -> (H*W,) of 3-byte texels: one gather fetches a whole RGB texel
    and lands as contiguous (n, 3) bytes (measured faster here than uint32 RGBA texels, whose
    3-of-4 channel copy afterwards is strided)."""
    out = np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    return out.reshape(-1, 3).view("V3").reshape(-1)


class GroundRaster:
    """Top-down picture of the ground around a track, with mip levels."""

    def __init__(self, track: Track, resolution_m: float = 0.01, seed: int | None = None) -> None:
        self.track = track
        self.res = resolution_m
        theme = track.theme
        x0, y0, x1, y1 = track.bounds()
        self.x0, self.y0 = x0 - MARGIN, y0 - MARGIN
        # Dimensions divisible by 16 (>= 2**(levels-1)) so every mip level halves exactly and
        # the 16-texel noise blotches tile it.
        q = 16
        w = math.ceil((x1 - x0 + 2 * MARGIN) / resolution_m / q) * q
        h = math.ceil((y1 - y0 + 2 * MARGIN) / resolution_m / q) * q
        # The texture is a fixed property of the track (seeded by its name), so a track always
        # looks the same whatever the episode seed.
        rng = np.random.default_rng(seed if seed is not None else
                                    sum(ord(c) * 31**i for i, c in enumerate(track.name)))
        dist, along = self._distance_map(w, h)

        half = track.width / 2
        road = dist <= half
        # One class per texel (0 ground, 1 road, 2 edge line, 3 centre dash), then a palette.
        label = road.astype(np.uint8)
        label[road & (dist >= half - LINE_W)] = 2
        if theme.dashes is not None:
            label[(dist <= DASH_W / 2) & ((along % DASH_PERIOD) < DASH_LEN)] = 3
        palette = np.array([theme.ground, theme.road, theme.line, theme.dashes or theme.road],
                           np.float32) * theme.lighting
        blotch = _box_blur(rng.standard_normal((h // 16, w // 16)).astype(np.float32), 2)
        blotch = np.repeat(np.repeat(blotch, 16, axis=0), 16, axis=1)
        grain = rng.standard_normal((h, w)).astype(np.float32)
        amp = theme.texture * theme.lighting
        noise = np.where(road, (0.4 * amp) * blotch + (0.5 * amp) * grain,
                         (2.5 * amp) * blotch + (0.8 * amp) * grain)
        rgb = palette[label]
        rgb += noise[..., None]

        self.levels: list[tuple[np.ndarray, int, int]] = []  # (packed texels, width, height)
        for _ in range(MIP_LEVELS):
            self.levels.append((_pack(rgb), rgb.shape[1], rgb.shape[0]))
            rgb = rgb.reshape(rgb.shape[0] // 2, 2, rgb.shape[1] // 2, 2, 3).mean(axis=(1, 3))

    def _distance_map(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Per texel: distance to the centreline and arc length there, for the road band.

        Paints points along the centreline normals (finer than a texel), nearest-wins: writing
        in order of decreasing distance lets the closest stretch of road own each texel.
        """
        track, res = self.track, self.res
        reach = track.width / 2 + 2 * res
        # Centreline at <= res/2 spacing so the outer edge of tight curves has no gaps.
        n = math.ceil(track.length / (res / 2))
        s = np.arange(n) * (track.length / n)
        idx = np.arange(len(track.s) + 1)
        xy = np.vstack([track.xy, track.xy[:1]])
        cx = np.interp(s / track.ds, idx, xy[:, 0])
        cy = np.interp(s / track.ds, idx, xy[:, 1])
        hd = track.heading[np.round(s / track.ds).astype(int) % len(track.s)]
        offs = np.arange(-reach, reach + 1e-9, res / 2)
        px = (cx[:, None] - offs[None, :] * np.sin(hd)[:, None] - self.x0) / res
        py = (cy[:, None] + offs[None, :] * np.cos(hd)[:, None] - self.y0) / res
        ix = np.clip(px.astype(np.int64), 0, w - 1).ravel()
        iy = np.clip(py.astype(np.int64), 0, h - 1).ravel()
        d = np.broadcast_to(np.abs(offs)[None, :], px.shape).ravel()
        along = np.broadcast_to(s[:, None], px.shape).ravel()
        order = np.argsort(-d, kind="stable")
        dist = np.full((h, w), np.inf, np.float32)
        arc = np.zeros((h, w), np.float32)
        flat = iy[order] * w + ix[order]
        # Fancy assignment with repeated indices keeps the last write: the nearest one.
        dist.ravel()[flat] = d[order]
        arc.ravel()[flat] = along[order]
        return dist, arc


@dataclass(frozen=True)
class _Band:
    rows: slice  # image rows
    level: int  # mip level
    fwd: np.ndarray  # ground point ahead of the camera, in level texels (float32, n)
    left: np.ndarray  # ground point to the left, in level texels (float32, n)
    weight: np.ndarray  # texture weight 0..256 after haze (uint16, n x 3: no broadcasting,
    # which numpy runs an order of magnitude slower for this mixed-type product)
    haze: np.ndarray  # haze colour x (256 - weight) (uint16, n x 3)


class Camera:
    """A pinhole camera fixed on the car, for one resolution and one ground raster."""

    def __init__(self, raster: GroundRaster, width: int = 640, height: int = 480,
                 hfov_deg: float = 110.0, height_m: float = 0.2, pitch_deg: float = 20.0,
                 haze_m: float = 6.0, max_range_m: float = 14.0) -> None:
        if width < 8 or height < 8:
            raise ValueError(f"camera resolution {width}x{height} is too small (at least 8x8)")
        self.raster, self.width, self.height = raster, width, height
        theme = raster.track.theme
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        pitch = math.radians(pitch_deg)
        u = (np.arange(width) - cx) / f
        v = (np.arange(height) - cy) / f
        # Ray components per row (forward, up) and per column (left), camera pitched down.
        fwd_row = math.cos(pitch) - v * math.sin(pitch)
        up_row = -v * math.cos(pitch) - math.sin(pitch)
        ground_rows = np.nonzero(up_row < -1e-6)[0]
        self.horizon = int(ground_rows[0]) if len(ground_rows) else height
        hz = self.horizon

        light = theme.lighting
        haze_rgb = np.clip(np.array(theme.sky_horizon, np.float32) * light, 0, 255)
        top = np.clip(np.array(theme.sky_top, np.float32) * light, 0, 255)
        t = (np.arange(hz, dtype=np.float32) / max(hz - 1, 1))[:, None]  # 0 top .. 1 horizon
        sky_col = top * (1 - t) + haze_rgb * t
        self.sky = np.ascontiguousarray(
            np.broadcast_to(sky_col[:, None, :], (hz, width, 3)).round().astype(np.uint8))

        scale = height_m / -up_row[hz:]  # ray length to the ground per row
        fwd = (fwd_row[hz:] * scale)[:, None] * np.ones(width)
        left = -u[None, :] * scale[:, None]
        dist = np.hypot(fwd, left)
        weight = np.exp(-dist / haze_m)
        weight[dist > max_range_m] = 0.0
        # Far away, clamp the lookup point (its weight is ~0): keeps texel indices small.
        far = np.minimum(1.0, max_range_m / dist)
        fwd, left = fwd * far, left * far
        self._bands = self._make_bands(raster, hz, fwd, left, weight, haze_rgb, f, scale)

    @staticmethod
    def _make_bands(raster: GroundRaster, hz: int, fwd: np.ndarray, left: np.ndarray,
                    weight: np.ndarray, haze_rgb: np.ndarray, f: float,
                    scale: np.ndarray) -> list[_Band]:
        # Footprint of a pixel on the ground: across (range / f) and along (row-to-row step);
        # their geometric mean picks the mip level, a compromise between blur and aliasing.
        centre = fwd[:, fwd.shape[1] // 2]
        along = np.abs(np.gradient(centre)) if len(centre) > 1 else np.ones_like(centre)
        across = np.hypot(centre, 0) / f
        footprint = np.sqrt(along * across)
        level = np.clip(np.floor(np.log2(np.maximum(footprint / raster.res, 1e-9))),
                        0, MIP_LEVELS - 1).astype(int)
        level = np.maximum.accumulate(level[::-1])[::-1]  # monotone: nearer rows, finer level
        bands = []
        start = 0
        for r in range(1, len(level) + 1):
            if r == len(level) or level[r] != level[start]:
                k = int(level[start])
                texel = raster.res * 2**k
                w = np.round(weight[start:r] * 256).astype(np.uint16).reshape(-1, 1)
                w = np.ascontiguousarray(np.broadcast_to(w, (len(w), 3)))
                bands.append(_Band(
                    rows=slice(hz + start, hz + r), level=k,
                    fwd=(fwd[start:r] / texel).astype(np.float32).ravel(),
                    left=(left[start:r] / texel).astype(np.float32).ravel(),
                    weight=w,
                    haze=np.round(haze_rgb).astype(np.uint16)[None, :] * (256 - w),
                ))
                start = r
        return bands

    def render(self, x: float, y: float, yaw: float) -> np.ndarray:
        """The view from a camera at (x, y) looking along `yaw`: RGB uint8 HxWx3, C-contiguous."""
        out = np.empty((self.height, self.width, 3), np.uint8)
        out[: self.horizon] = self.sky
        c, s = math.cos(yaw), math.sin(yaw)
        r = self.raster
        for band in self._bands:
            texels, tw, th = r.levels[band.level]
            texel = r.res * 2**band.level
            ox, oy = (x - r.x0) / texel, (y - r.y0) / texel
            gx = band.fwd * c
            gx -= band.left * s
            gx += ox
            gy = band.fwd * s
            gy += band.left * c
            gy += oy
            ix = gx.astype(np.int32)
            np.clip(ix, 0, tw - 1, out=ix)
            iy = gy.astype(np.int32)
            np.clip(iy, 0, th - 1, out=iy)
            iy *= tw
            iy += ix
            acc = texels.take(iy).view(np.uint8).reshape(-1, 3).astype(np.uint16)
            acc *= band.weight
            acc += band.haze
            acc >>= 8
            dst = out[band.rows].reshape(-1, 3)
            np.copyto(dst, acc, casting="unsafe")
        return out
