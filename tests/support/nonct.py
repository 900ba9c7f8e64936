"""Generated images that are NOT chest CT slices, for the not_chest_ct gate's tests.

Every picture is made here from a fixed seed (nothing derived from shared data is committed):
drawings of a chest (a grey ellipse with two dark ovals, the picture issue 18 found scored
COVID 0.991), the same with smooth noise, a cartoon, radiograph-like projections of a synthetic
CT volume, photograph-like scenes (grey and colour landscapes, a grey portrait, a grey room),
white and smooth noise (also inside a body-shaped mask), screenshots of text and charts.
:func:`projection` also takes a real volume, so a data test can project a shared CT series
at test time.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from tests.unit.synthetic import chest_phantom

U8 = NDArray[np.uint8]
F32 = NDArray[np.float32]


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> NDArray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _u8(image: NDArray) -> U8:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _smooth_noise(shape: tuple[int, int], sigma: float, seed: int) -> F32:
    """Gaussian-filtered white noise, scaled to unit standard deviation."""
    noise = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    smooth = np.asarray(cv2.GaussianBlur(noise, (0, 0), sigma), dtype=np.float32)
    return smooth / max(float(smooth.std()), 1e-6)


def _chest_shapes(size: int) -> tuple[NDArray, NDArray]:
    """The body ellipse and the two lung ovals of a chest drawing."""
    s = size / 256
    body = _ellipse((size, size), 128 * s, 128 * s, 88 * s, 116 * s)
    lungs = _ellipse((size, size), 122 * s, 82 * s, 58 * s, 34 * s) | _ellipse(
        (size, size), 122 * s, 174 * s, 58 * s, 34 * s
    )
    return body, lungs


def drawing_flat(size: int = 512, seed: int = 0) -> U8:
    """A flat grey ellipse with two dark ovals on black: the picture issue 18 found."""
    rng = np.random.default_rng(seed)
    body, lungs = _chest_shapes(size)
    img = np.zeros((size, size), np.float32)
    img[body] = rng.integers(150, 210)
    img[lungs] = rng.integers(20, 70)
    return _u8(img)


def drawing_smooth_noise(size: int = 512, seed: int = 0) -> U8:
    """The chest drawing with smooth (low-pass) noise inside the body (issue 18: 0.965)."""
    body, lungs = _chest_shapes(size)
    img = np.zeros((size, size), np.float32)
    img[body] = 180
    img[lungs] = 50
    noise = _smooth_noise((size, size), sigma=size / 64, seed=seed)
    img[body] += 18 * noise[body]
    return _u8(img)


def drawing_cartoon(size: int = 512, seed: int = 0) -> U8:
    """A cartoon chest: outlined body and lungs, a branching airway tree, ribs as strokes."""
    rng = np.random.default_rng(seed)
    s = size / 256
    img = np.full((size, size), 235, np.uint8)
    c = (size // 2, size // 2)
    cv2.ellipse(img, c, (int(116 * s), int(88 * s)), 0, 0, 360, 200, -1)
    cv2.ellipse(img, c, (int(116 * s), int(88 * s)), 0, 0, 360, 30, max(2, int(2 * s)))
    for cx in (82, 174):
        centre = (int(cx * s), int(122 * s))
        cv2.ellipse(img, centre, (int(34 * s), int(58 * s)), 0, 0, 360, 90, -1)
        cv2.ellipse(img, centre, (int(34 * s), int(58 * s)), 0, 0, 360, 30, max(2, int(2 * s)))
    trunk = (int(128 * s), int(70 * s))
    for _ in range(10):  # airway branches
        end = (int(rng.integers(60, 200) * s), int(rng.integers(90, 170) * s))
        cv2.line(img, trunk, end, 40, max(1, int(s)))
    cv2.circle(img, (int(128 * s), int(196 * s)), int(13 * s), 250, -1)  # spine
    cv2.circle(img, (int(128 * s), int(196 * s)), int(13 * s), 30, max(1, int(s)))
    return img


def drawing_antialiased_jpeg_like(size: int = 512, seed: int = 0) -> U8:
    """The chest drawing blurred (anti-aliased, as a resized drawing) with light grain."""
    img = drawing_flat(size, seed).astype(np.float32)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), size / 256), dtype=np.float32)
    return _u8(img)


def synthetic_volume(seed: int = 0) -> NDArray[np.int16]:
    """A chest-CT phantom volume (HU) with roughly isotropic voxels for projecting."""
    hu, _ = chest_phantom(slices=100, size=256, seed=seed)
    return hu


def projection(
    hu: NDArray[np.integer], axis: int = 1, radiograph: bool = True, z_scale: float = 1.0
) -> U8:
    """A radiograph-like projection of a (z, y, x) HU volume along ``axis`` (1: frontal,
    2: lateral): attenuation summed along the rays, shown as a radiograph (dense = bright)
    or, with ``radiograph=False``, as the plain min-max normalised sum. ``z_scale``: slice
    spacing over pixel spacing, so that the picture has the body's proportions."""
    mu = np.clip(hu.astype(np.float32) + 1000.0, 0.0, None) / 1000.0  # water = 1
    path = mu.sum(axis=axis)
    if radiograph:
        path = 1.0 - np.exp(-path / max(float(np.percentile(path, 95)), 1e-6) * 2.0)
    low, high = float(path.min()), float(path.max())
    img = (path - low) / max(high - low, 1e-6) * 255.0
    img = img[::-1]  # head up, as radiographs are shown
    h, w = img.shape
    side = 512
    size = (side, max(64, round(side * h * z_scale / w)))
    return _u8(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR))


def photo_gray(size: int = 480, seed: int = 0) -> U8:
    """A grey photograph-like scene: sky gradient, a sun, hills, a house, grassy texture."""
    return np.asarray(cv2.cvtColor(photo_colour(size, seed), cv2.COLOR_RGB2GRAY), np.uint8)


def photo_colour(size: int = 480, seed: int = 0) -> U8:
    """A colour photograph-like scene with smooth gradients, edges, texture and camera grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    rgb = np.zeros((size, size, 3), np.float32)
    rgb[..., 0] = 110 + 90 * yy
    rgb[..., 1] = 150 + 50 * yy
    rgb[..., 2] = 235 - 60 * yy
    horizon = 0.6 + 0.08 * np.sin(xx * 7 + rng.uniform(0, 6))
    hill = yy > horizon
    grass = _smooth_noise((size, size), 1.5, seed + 1)
    rgb[hill] = np.stack([70 + 12 * grass[hill], 120 + 20 * grass[hill], 50 + 8 * grass[hill]], -1)
    cv2.circle(rgb, (int(0.78 * size), int(0.18 * size)), int(0.07 * size), (255, 235, 120), -1)
    x0, y0 = int(rng.uniform(0.15, 0.3) * size), int(0.42 * size)
    cv2.rectangle(rgb, (x0, y0), (x0 + size // 4, y0 + size // 5), (190, 170, 150), -1)
    cv2.fillPoly(
        rgb,
        [np.array([[x0 - 10, y0], [x0 + size // 8, y0 - size // 8], [x0 + size // 4 + 10, y0]])],
        (150, 50, 40),
    )
    cv2.rectangle(rgb, (x0 + 20, y0 + 30), (x0 + 50, y0 + 60), (60, 80, 110), -1)  # window
    cv2.circle(rgb, (int(0.7 * size), int(0.55 * size)), int(0.09 * size), (40, 100, 40), -1)
    rgb = np.asarray(cv2.GaussianBlur(rgb, (0, 0), 0.8), np.float32)  # optics
    rgb += rng.normal(0, 2.0, rgb.shape).astype(np.float32)  # sensor grain
    return _u8(rgb)


def _grain(img: F32, rng: np.random.Generator, sd: float) -> U8:
    """Camera optics (a slight blur) and sensor grain over a grey scene."""
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 0.8), np.float32)
    return _u8(img + rng.normal(0, sd, img.shape).astype(np.float32))


def photo_portrait(size: int = 480, seed: int = 0) -> U8:
    """A grey head-and-shoulders portrait: a softly lit face (an oval with two dark eyes,
    the layout of a chest drawing), hair, a shaded backdrop, fabric texture, grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    light = rng.choice([-1, 1]) * rng.uniform(0.5, 1)  # a key light from one side
    img = 95 + 60 * (0.5 + 0.5 * light * (xx - 0.5) * 2) - 40 * (yy - 0.5) ** 2  # backdrop
    cx, cy, rx, ry = 0.5 + rng.uniform(-0.05, 0.05), 0.42, 0.2, 0.27
    shoulders = _ellipse((size, size), 1.05 * size, cx * size, 0.3 * size, 0.48 * size)
    img[shoulders] = (70 + 14 * _smooth_noise((size, size), 2.0, seed + 3))[shoulders]
    neck = (np.abs(xx - cx) < 0.07) & (yy > 0.6) & (yy < 0.8)
    face = _ellipse((size, size), cy * size, cx * size, ry * size, rx * size) | neck
    shade = 150 + 45 * light * (xx - cx) / rx - 25 * ((yy - cy) / ry) ** 2  # round, side-lit
    img[face] = shade[face]
    hair = _ellipse((size, size), (cy - 0.12) * size, cx * size, 0.2 * size, 0.23 * size) & (
        yy < cy - 0.08
    )
    img[hair] = (35 + 10 * _smooth_noise((size, size), 1.0, seed + 4))[hair]
    for side in (-1, 1):
        eye = _ellipse((size, size), (cy - 0.02) * size, (cx + side * 0.08) * size, 9, 16)
        img[eye] = 40
    mouth = _ellipse((size, size), (cy + 0.15) * size, cx * size, 6, 28)
    img[mouth] = 90
    return _grain(img.astype(np.float32), rng, 2.5)


def photo_indoor(size: int = 480, seed: int = 0) -> U8:
    """A grey room: a lamp-lit wall, a bright window with its frame, a floor in perspective,
    a dark table, a picture on the wall, wood grain and sensor grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    lx, ly = rng.uniform(0.2, 0.8), 0.15
    img = 120 + 80 * np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / 0.15)  # wall under a lamp
    floor = yy > 0.7
    grain = _smooth_noise((size, size), 1.2, seed + 5)
    img[floor] = 70 + 50 * (yy[floor] - 0.7) + 6 * grain[floor]
    x0 = int(rng.uniform(0.55, 0.65) * size)
    cv2.rectangle(img, (x0, int(0.15 * size)), (x0 + size // 4, int(0.5 * size)), 235, -1)
    cv2.rectangle(img, (x0, int(0.15 * size)), (x0 + size // 4, int(0.5 * size)), 60, 6)
    cv2.line(img, (x0 + size // 8, int(0.15 * size)), (x0 + size // 8, int(0.5 * size)), 60, 5)
    cv2.rectangle(img, (int(0.1 * size), int(0.2 * size)), (int(0.3 * size), int(0.35 * size)),
                  50, -1)  # fmt: skip
    cv2.rectangle(img, (int(0.12 * size), int(0.22 * size)), (int(0.28 * size), int(0.33 * size)),
                  110, -1)  # fmt: skip
    table = (yy > 0.55) & (yy < 0.62) & (xx > 0.15) & (xx < 0.75)
    img[table] = 45 + 5 * grain[table]
    for leg in (0.18, 0.7):
        img[(yy >= 0.62) & (yy < 0.85) & (xx > leg) & (xx < leg + 0.03)] = 40
    cv2.circle(img, (int(0.35 * size), int(0.5 * size)), int(0.05 * size), 200, -1)  # a vase
    cv2.circle(img, (int(0.5 * size), int(0.51 * size)), int(0.035 * size), 30, -1)  # a cup
    return _grain(img.astype(np.float32), rng, 2.5)


def white_noise(size: int = 512, seed: int = 0) -> U8:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def smooth_noise(size: int = 512, seed: int = 0) -> U8:
    """Low-pass noise over the whole image (clouds)."""
    return _u8(128 + 45 * _smooth_noise((size, size), size / 64, seed))


def noise_in_body(size: int = 512, seed: int = 0) -> U8:
    """White noise inside a body-shaped ellipse, black around it."""
    body, _ = _chest_shapes(size)
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    img[body] = rng.integers(0, 256, int(body.sum()))
    return _u8(img)


def smooth_noise_in_body(size: int = 512, seed: int = 0) -> U8:
    """Smooth noise inside a body-shaped ellipse, black around it."""
    body, _ = _chest_shapes(size)
    img = np.zeros((size, size), np.float32)
    img[body] = (128 + 50 * _smooth_noise((size, size), size / 48, seed))[body]
    return _u8(img)


_TEXT = (
    "CT CHEST WITHOUT CONTRAST",
    "Findings: bilateral ground-glass opacities,",
    "peripheral and basal predominance.",
    "Impression: typical appearance for COVID-19.",
    "Patient: DOE^JANE  Accession 1234567",
    "Radiologist: ...  Signed 2020-04-01 10:32",
)


def text_screenshot(size: int = 512, seed: int = 0, dark: bool = False) -> U8:
    """A screenshot of a report in PIL's default font: dark on white, or a terminal."""
    rng = np.random.default_rng(seed)
    back, ink = (20, 220) if dark else (250, 15)
    im = Image.new("L", (size, size), back)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    y = 10
    while y < size - 20:
        line = _TEXT[int(rng.integers(len(_TEXT)))]
        draw.text((10, y), line, fill=ink, font=font)
        y += 14
    return np.asarray(im, dtype=np.uint8)


def chart(size: int = 512, seed: int = 0) -> U8:
    """A bar chart with axes, grid lines and a line plot, grey."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 245, np.uint8)
    left, bottom = size // 8, size - size // 8
    for k in range(1, 6):
        y = bottom - k * (bottom - size // 10) // 5
        cv2.line(img, (left, y), (size - 20, y), 215, 1)
    bars = rng.uniform(0.2, 0.9, 8)
    width = (size - left - 40) // len(bars)
    for i, h in enumerate(bars):
        x = left + 10 + i * width
        cv2.rectangle(img, (x, bottom), (x + width - 12, int(bottom - h * (bottom - 40))), 110, -1)
    pts = np.array(
        [[left + 10 + i * width + width // 2, int(bottom - h * 0.8 * (bottom - 40))]
         for i, h in enumerate(rng.uniform(0.2, 0.9, 8))], np.int32
    )  # fmt: skip
    cv2.polylines(img, [pts], False, 30, 2)
    cv2.line(img, (left, 20), (left, bottom), 0, 2)
    cv2.line(img, (left, bottom), (size - 20, bottom), 0, 2)
    return img


def _projection_frontal(size: int = 512, seed: int = 0) -> U8:
    return projection(synthetic_volume(seed), axis=1)


def _projection_lateral(size: int = 512, seed: int = 0) -> U8:
    return projection(synthetic_volume(seed), axis=2)


def _projection_sum(size: int = 512, seed: int = 0) -> U8:
    return projection(synthetic_volume(seed), axis=1, radiograph=False)


def _text_dark(size: int = 512, seed: int = 0) -> U8:
    return text_screenshot(size, seed, dark=True)


# name -> generator(size, seed); every kind the gate must refuse as not_chest_ct.
KINDS: dict[str, Callable[..., U8]] = {
    "drawing_flat": drawing_flat,
    "drawing_smooth_noise": drawing_smooth_noise,
    "drawing_cartoon": drawing_cartoon,
    "drawing_blurred": drawing_antialiased_jpeg_like,
    "projection_frontal": _projection_frontal,
    "projection_lateral": _projection_lateral,
    "projection_sum": _projection_sum,
    "photo_gray": photo_gray,
    "photo_colour": photo_colour,
    "photo_portrait": photo_portrait,
    "photo_indoor": photo_indoor,
    "white_noise": white_noise,
    "smooth_noise": smooth_noise,
    "noise_in_body": noise_in_body,
    "smooth_noise_in_body": smooth_noise_in_body,
    "text_screenshot": text_screenshot,
    "text_terminal": _text_dark,
    "chart": chart,
}


def generate(kind: str, size: int = 512, seed: int = 0) -> U8:
    """One image of ``kind`` (a key of :data:`KINDS`), grey (H, W) or RGB (H, W, 3)."""
    return KINDS[kind](size=size, seed=seed)
