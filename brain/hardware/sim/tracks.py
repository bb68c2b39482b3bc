"""Track layouts, their themes, and the centreline geometry that gives ground truth.

Every layout is a closed loop driven counter-clockwise, resampled to a dense centreline with a
constant arc-length step, so progress and look-ahead are plain index arithmetic. This module is
the one place that lists the tracks (`TRACK_NAMES`); `brain.config` repeats the names as the
allowed values of `profiles.sim.track` and a test keeps the two in step.

Conventions: world x/y in metres, yaw counter-clockwise from +x. Cross-track error is positive
when the car is LEFT of the centreline (looking along the direction of travel); heading error is
positive when the car points left of the track direction.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

RGB = tuple[int, int, int]
DS = 0.01  # centreline sample spacing (m): fine enough for raster lines and ground truth


@dataclass(frozen=True)
class Theme:
    """How a track looks. Colours are 0-255 RGB before the lighting multiplier."""

    road: RGB
    line: RGB  # edge lines
    ground: RGB
    dashes: RGB | None  # centre dashes, or None for none
    sky_top: RGB
    sky_horizon: RGB
    lighting: float = 1.0
    texture: float = 10.0  # amplitude of the noise texture on road and ground (0-255 units)


@dataclass(frozen=True)
class Layout:
    name: str
    width_m: float  # default road width
    theme: Theme
    points: Callable[[], np.ndarray]  # dense closed polyline (M, 2), counter-clockwise


# -- layout builders -----------------------------------------------------------------------------


Segment = tuple[str, float] | tuple[str, float, float]


def _turtle(segments: Sequence[Segment], step: float = 0.005) -> np.ndarray:
    """Trace ('S', length) straights and ('A', radius, degrees) arcs (+ = left turn)."""
    x = y = h = 0.0
    pts = [(x, y)]
    for seg in segments:
        if len(seg) == 2:
            n = max(2, math.ceil(seg[1] / step))
            for k in range(1, n + 1):
                d = seg[1] * k / n
                pts.append((x + d * math.cos(h), y + d * math.sin(h)))
            x, y = pts[-1]
        else:
            radius, turn = seg[1], math.radians(seg[2])  # type: ignore[misc]
            side = 1.0 if turn > 0 else -1.0
            cx, cy = x - side * radius * math.sin(h), y + side * radius * math.cos(h)
            n = max(2, math.ceil(abs(turn) * radius / step))
            for k in range(1, n + 1):
                a = h + turn * k / n
                pts.append((cx + side * radius * math.sin(a), cy - side * radius * math.cos(a)))
            x, y = pts[-1]
            h += turn
    return np.asarray(pts[:-1])  # the loop closes onto the first point


def _oval() -> np.ndarray:
    return _turtle([("S", 4.0), ("A", 1.5, 180), ("S", 4.0), ("A", 1.5, 180)])


def _rounded_square() -> np.ndarray:
    return _turtle([("S", 3.0), ("A", 1.0, 90)] * 4)


def _chicane() -> np.ndarray:
    # Left-right-left wiggles (net heading 0, net offset 0) on both straights of an oval.
    wiggle: list[Segment] = [("A", 1.2, 30), ("A", 1.2, -60), ("A", 1.2, 30)]
    half: list[Segment] = [("S", 2.0), *wiggle, ("S", 2.0), ("A", 1.5, 180)]
    return _turtle(half * 2)


def _hairpin() -> np.ndarray:
    # A teardrop: a wide sweeping end (R) and a tight hairpin (r), joined by the outer tangents
    # of the two circles, which close the loop by construction.
    big, small, dist = 2.0, 0.8, 6.0
    alpha = math.degrees(math.asin((big - small) / dist))
    tangent = math.sqrt(dist**2 - (big - small) ** 2)
    return _turtle([("A", big, 180 + 2 * alpha), ("S", tangent),
                    ("A", small, 180 - 2 * alpha), ("S", tangent)])


def _figure_s() -> np.ndarray:
    # A three-lobed loop whose concave stretches make S-bends; star-shaped, so it never
    # crosses itself. Stretched in x so the lobes differ.
    th = np.linspace(0.0, 2 * math.pi, 4000, endpoint=False)
    r = 3.0 + 0.6 * np.sin(3 * th)
    return np.stack([1.2 * r * np.cos(th), r * np.sin(th)], axis=1)


SKY_BLUE, SKY_PALE = (110, 160, 225), (200, 220, 240)

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("oval", 0.9, Theme(road=(95, 95, 100), line=(240, 240, 240), ground=(70, 135, 55),
                                  dashes=(235, 235, 235), sky_top=SKY_BLUE, sky_horizon=SKY_PALE),
               _oval),
        Layout("rounded-square", 0.8,
               Theme(road=(55, 55, 60), line=(235, 200, 40), ground=(190, 170, 120), dashes=None,
                     sky_top=(150, 175, 205), sky_horizon=(225, 225, 220), lighting=1.1),
               _rounded_square),
        Layout("chicane", 0.7,
               Theme(road=(175, 145, 105), line=(240, 210, 30), ground=(50, 42, 36), dashes=None,
                     sky_top=(40, 50, 80), sky_horizon=(120, 110, 120), lighting=0.7),
               _chicane),
        Layout("hairpin", 0.75,
               Theme(road=(80, 90, 115), line=(250, 250, 250), ground=(215, 218, 225),
                     dashes=(245, 140, 30), sky_top=(160, 170, 185), sky_horizon=(215, 215, 220),
                     lighting=0.9, texture=6.0),
               _hairpin),
        Layout("figure-s", 0.65,
               Theme(road=(150, 150, 145), line=(200, 40, 40), ground=(35, 80, 40), dashes=None,
                     sky_top=(70, 80, 140), sky_horizon=(240, 160, 90), lighting=1.2,
                     texture=14.0),
               _figure_s),
    )
}
TRACK_NAMES: tuple[str, ...] = tuple(LAYOUTS)


class SimParamError(ValueError):
    """A simulator parameter is invalid; `key` names it as in `profiles.sim`."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def parse_colour(text: str, key: str) -> RGB:
    """'#rrggbb' -> (r, g, b). `key` names the setting in the error."""
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        raise SimParamError(key, f"{text!r} is not a colour of the form #rrggbb")
    return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class Projection:
    """The car's position relative to the centreline."""

    index: int  # nearest centreline sample
    s: float  # arc length of the projected point, 0 .. length
    cte: float  # signed lateral offset (m), + = left of the centreline
    heading: float  # track direction at the projection (rad)


class Track:
    """A closed centreline with width and theme. Geometry only; no rendering, no car."""

    _WINDOW = 80  # samples searched either side of the hint (0.8 m; a tick moves far less)

    def __init__(self, name: str, width_m: float, theme: Theme, polyline: np.ndarray) -> None:
        self.name = name
        closed = np.vstack([polyline, polyline[:1]])
        seg = np.hypot(*np.diff(closed, axis=0).T)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(cum[-1])
        n = round(self.length / DS)
        self.ds = self.length / n
        s = np.arange(n) * self.ds
        self.s = s
        self.xy = np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], 1)
        d = np.roll(self.xy, -1, axis=0) - np.roll(self.xy, 1, axis=0)
        self.heading = np.arctan2(d[:, 1], d[:, 0])
        # Curvature from the heading change over +-10 cm, which smooths resampling jitter.
        k = max(1, round(0.1 / self.ds))
        self.curvature = _wrap(np.roll(self.heading, -k) - np.roll(self.heading, k)) / (
            2 * k * self.ds)
        # Tripled coordinate arrays: a search window around any index is one contiguous slice.
        self._x2 = np.concatenate([self.xy[:, 0]] * 3)
        self._y2 = np.concatenate([self.xy[:, 1]] * 3)
        self.width = float(width_m)
        self.theme = theme
        self.max_width = self._max_width()
        if not 0.0 < self.width <= self.max_width:
            raise SimParamError("road_width_m", f"{self.width:g} m does not fit track {name!r} "
                                f"(0 < width <= {self.max_width:.2f} m, else its sides overlap)")

    def _max_width(self) -> float:
        """Widest road whose edges neither fold inside a curve nor touch another stretch."""
        min_radius = 1.0 / max(float(np.abs(self.curvature).max()), 1e-6)
        step = max(1, round(0.05 / self.ds))
        pts, s = self.xy[::step], self.s[::step]
        gap = np.abs(s[:, None] - s[None, :])
        gap = np.minimum(gap, self.length - gap)
        dist = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        far = gap > math.pi * min_radius + 0.05  # further along than half a turn of the tightest
        clearance = float(dist[far].min()) if far.any() else math.inf
        return 0.95 * min(2 * min_radius, clearance)

    # -- queries ---------------------------------------------------------------------------------

    def project(self, x: float, y: float, hint: int | None = None) -> Projection:
        """Nearest point of the centreline. With `hint` (last index) only a window around it is
        searched, which keeps a control tick cheap; it falls back to the whole loop when the
        window's edge is nearest."""
        n = len(self.xy)
        i: int | None = None
        if hint is not None:
            w = self._WINDOW
            lo = hint % n + n - w  # contiguous slice of the tripled arrays
            d2 = (self._x2[lo:lo + 2 * w + 1] - x) ** 2 + (self._y2[lo:lo + 2 * w + 1] - y) ** 2
            j = int(np.argmin(d2))
            if 0 < j < 2 * w:
                i = (lo + j) % n
        if i is None:
            i = int(np.argmin((self.xy[:, 0] - x) ** 2 + (self.xy[:, 1] - y) ** 2))
        # Refine on the segment to the next sample: project onto the local tangent.
        h = float(self.heading[i])
        c, sn = math.cos(h), math.sin(h)
        dx, dy = x - float(self.xy[i, 0]), y - float(self.xy[i, 1])
        along = dx * c + dy * sn
        cte = -dx * sn + dy * c
        s = (float(self.s[i]) + along) % self.length
        return Projection(i, s, cte, h)

    def pose_at(self, s: float, offset: float = 0.0) -> tuple[float, float, float]:
        """(x, y, heading) at arc length s, `offset` metres to the left of the centreline."""
        i = int(round(s / self.ds)) % len(self.xy)
        h = float(self.heading[i])
        x, y = self.xy[i]
        return float(x - offset * math.sin(h)), float(y + offset * math.cos(h)), h

    def index_at(self, s: float) -> int:
        return int(round(s / self.ds)) % len(self.xy)

    def bounds(self) -> tuple[float, float, float, float]:
        lo, hi = self.xy.min(axis=0), self.xy.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


# -- track files ---------------------------------------------------------------------------------

TRACK_FILE_MAX = 256 << 10
_THEME_KEYS = ("road", "line", "ground", "dashes", "sky_top", "sky_horizon")


def load_track_file(path: str | os.PathLike[str]) -> Layout:
    """A layout from a TOML or JSON file (format: etc/tracks/README.md), validated: every
    problem is a SimParamError naming the file and the field."""
    p = Path(path)

    def bad(msg: str) -> SimParamError:
        return SimParamError("track_file", f"{p}: {msg}")

    try:
        raw = p.read_bytes()[:TRACK_FILE_MAX + 1] if p.is_file() else None
    except OSError as e:
        raise bad(f"unreadable ({e.strerror or e})") from None
    if raw is None:
        raise bad("no such file")
    if len(raw) > TRACK_FILE_MAX:
        raise bad(f"larger than {TRACK_FILE_MAX >> 10} KiB; not a track file")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {e}") \
            from None
    if not isinstance(doc, dict):
        raise bad("not a table")
    unknown = set(doc) - {"name", "width_m", "segments", "theme"}
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)} (known: name, width_m, segments, theme)")
    name = doc.get("name", p.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", name):
        raise bad(f"name {name!r}: 1-32 of a-z, 0-9 and -")
    width = doc.get("width_m", 0.8)
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0.2 <= width <= 3.0:
        raise bad(f"width_m {width!r}: a number of metres in 0.2..3")
    segments = _parse_segments(doc.get("segments"), bad)
    _check_closed(segments, bad)
    theme = _parse_theme(doc.get("theme", {}), bad)
    pts = _turtle(segments)
    return Layout(name, float(width), theme, lambda: pts)


def _parse_segments(raw: Any, bad: Callable[[str], SimParamError]) -> list[Segment]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 200:
        raise bad("segments: a list of 2-200 [\"straight\", metres] or "
                  "[\"arc\", radius_m, degrees] entries")
    out: list[Segment] = []
    for n, seg in enumerate(raw):
        where = f"segments[{n}]"
        if not isinstance(seg, list) or not seg or seg[0] not in ("straight", "arc"):
            raise bad(f"{where}: {seg!r} is not [\"straight\", m] or [\"arc\", r, deg]")
        nums = seg[1:]
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
               for v in nums):
            raise bad(f"{where}: {seg!r} needs finite numbers")
        if seg[0] == "straight":
            if len(nums) != 1 or not 0.05 <= nums[0] <= 100:
                raise bad(f"{where}: a straight is [\"straight\", metres 0.05..100]")
            out.append(("S", float(nums[0])))
        else:
            if len(nums) != 2 or not 0.3 <= nums[0] <= 100 or not 0 < abs(nums[1]) <= 360:
                raise bad(f"{where}: an arc is [\"arc\", radius 0.3..100 m, degrees "
                          "-360..360 but not 0, + turns left]")
            out.append(("A", float(nums[0]), float(nums[1])))
    return out


def _check_closed(segments: list[Segment], bad: Callable[[str], SimParamError]) -> None:
    """The segments must come back to where they started, pointing the same way."""
    x = y = h = 0.0
    for seg in segments:
        if len(seg) == 2:
            x, y = x + seg[1] * math.cos(h), y + seg[1] * math.sin(h)
        else:
            radius, turn = seg[1], math.radians(seg[2])  # type: ignore[misc]
            side = 1.0 if turn > 0 else -1.0
            cx, cy = x - side * radius * math.sin(h), y + side * radius * math.cos(h)
            h += turn
            x, y = cx + side * radius * math.sin(h), cy - side * radius * math.cos(h)
    gap = math.hypot(x, y)
    turns = h / (2 * math.pi)
    off = abs(turns - round(turns)) * 360
    if gap > 0.05 or off > 1.0 or round(turns) not in (1, -1):
        raise bad(f"the segments do not close a loop: they end {gap:.2f} m from the start, "
                  f"having turned {math.degrees(h):.1f} degrees (a loop turns +-360 and ends "
                  "where it began)")


def _parse_theme(raw: Any, bad: Callable[[str], SimParamError]) -> Theme:
    base = LAYOUTS["oval"].theme
    if not isinstance(raw, dict):
        raise bad("theme: a table")
    unknown = set(raw) - {*_THEME_KEYS, "lighting", "texture"}
    if unknown:
        raise bad(f"theme: unknown keys {sorted(unknown)}")
    colours: dict[str, Any] = {}
    for key in _THEME_KEYS:
        if key in raw:
            if key == "dashes" and raw[key] == "":
                colours[key] = None
                continue
            try:
                colours[key] = parse_colour(raw[key] if isinstance(raw[key], str) else "",
                                            f"theme.{key}")
            except SimParamError as e:
                raise bad(str(e)) from None
    for key, lo, hi in (("lighting", 0.2, 3.0), ("texture", 0.0, 60.0)):
        v = raw.get(key, getattr(base, key))
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise bad(f"theme.{key} {v!r}: a number in {lo}..{hi}")
        colours[key] = float(v)
    return replace(base, **colours)


def load_track(name: str, width_m: float = 0.0, road_colour: str = "", line_colour: str = "",
               ground_colour: str = "", lighting: float = 1.0, track_file: str = "") -> Track:
    """The named layout (or the one in `track_file`, which wins) with `brain.config.SimProfile`
    -style overrides: width 0 = the layout's own, colours '' = the theme's, `lighting`
    multiplies the theme's own lighting."""
    if not track_file and name not in LAYOUTS:
        raise SimParamError("track", f"unknown track {name!r}; known: {', '.join(TRACK_NAMES)}")
    if not 0.0 < lighting <= 10.0:
        raise SimParamError("lighting", f"{lighting!r} is not a multiplier in (0, 10]")
    layout = load_track_file(track_file) if track_file else LAYOUTS[name]
    theme = layout.theme
    colours: dict[str, RGB] = {}
    for key, text in (("road", road_colour), ("line", line_colour), ("ground", ground_colour)):
        if text:
            colours[key] = parse_colour(text, f"{key}_colour")
    if width_m < 0:
        raise SimParamError("road_width_m", f"{width_m!r} is negative")
    theme = replace(theme, lighting=theme.lighting * lighting, **colours)  # type: ignore[arg-type]
    try:
        return Track(layout.name, width_m or layout.width_m, theme, layout.points())
    except SimParamError as e:
        if track_file and not width_m:  # the file's own width: say so, naming the file
            raise SimParamError("track_file", f"{track_file}: width_m: {e.message}") from None
        raise
