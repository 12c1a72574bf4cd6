"""Synthetic galaxy-morphology images: a small, download-free stand-in for Galaxy10.

Each image is rendered from a physically motivated light model rather than drawn by hand (``_smooth``, ``_disk``,
``_edge_on``, ``_merger``: Sersic spheroids, inclined exponential disks with logarithmic spiral arms and bars,
edge-on slabs with dust lanes, two-galaxy mergers with a tidal tail; old stars red, young stars blue), placed at a
random position, orientation and size, sometimes beside a field star, seen through a Gaussian PSF with a sky level
and Poisson noise, and mapped to 8 bit with a colour-preserving asinh stretch (as survey colour images are).
Rendering is vectorised numpy (small images on an oversampled grid); thousands of 32x32 or 64x64 images take seconds.

The classes mirror Galaxy10's morphologies; the folder names sort in class-id order, so timm's ImageFolder reader
(``timm.data.create_dataset('', root=..., split='train')``) assigns label ``i`` to ``CLASS_NAMES[i]``. The same
seed gives byte-identical PNG files.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from timm_astro.data.splits import SPLITS  # their order keys each image's random stream
from timm_astro.outputs import atomic_output_dir

__all__ = [
    'CLASS_NAMES', 'LABEL_NAMES', 'SPLITS', 'GENERATOR_VERSION', 'render_galaxy', 'image_rng', 'write_image_folder',
]

# Bumped whenever the same seed would render different pixels; a cache of generated images should key on it.
GENERATOR_VERSION = 2

# ImageFolder directory names; the numeric prefix keeps the sorted order equal to the class id.
CLASS_NAMES: Tuple[str, ...] = (
    '0_round_smooth',
    '1_cigar_smooth',
    '2_unbarred_spiral',
    '3_barred_spiral',
    '4_edge_on_disk',
    '5_merger',
)
# Human-readable labels, in the same order (what a model's config.json ``label_names`` should hold).
LABEL_NAMES: Tuple[str, ...] = tuple(name.split('_', 1)[1].replace('_', ' ') for name in CLASS_NAMES)

CREATED_BY = 'timm-astro synthetic galaxies'
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512
_MIN_GRID = 64  # small images are rendered on a finer grid and block-averaged: anti-aliasing of cusps and thin arms

# Linear RGB flux ratios of the stellar populations (per-image jitter is applied on top).
_OLD_STARS = np.array([1.00, 0.70, 0.42])   # bulges, ellipticals: red
_DISK_STARS = np.array([0.80, 0.82, 0.90])  # smooth disk light: white-blue
_YOUNG_STARS = np.array([0.55, 0.75, 1.00])  # spiral arms, star formation: blue
_STAR_COLOURS = (np.array([1.0, 0.85, 0.65]), np.array([0.9, 0.95, 1.0]), np.array([0.75, 0.85, 1.0]))


def _sersic_b(n: float) -> float:
    """b_n such that r_e encloses half the light (Ciotti & Bertin 1999 expansion, good for n > 0.36)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _sersic(r: np.ndarray, r_e: float, n: float) -> np.ndarray:
    """Sersic surface brightness at elliptical radius ``r``, normalised to 1 at ``r_e``."""
    return np.exp(-_sersic_b(n) * ((r / r_e) ** (1.0 / n) - 1.0))


def _frame(x: np.ndarray, y: np.ndarray, x0: float, y0: float, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred on (x0, y0) whose major axis lies at ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - x0, y - y0
    return dx * c + dy * s, -dx * s + dy * c


def _jitter(colour: np.ndarray, rng: np.random.Generator, scale: float = 0.06) -> np.ndarray:
    """A colour varied by a few per cent per channel: no two galaxies of a population are exactly alike."""
    return colour * np.exp(rng.normal(0.0, scale, size=3))


def _unit(light: np.ndarray) -> np.ndarray:
    """Scale a component to unit total flux, so that flux fractions mean what they say."""
    return light / max(float(light.sum()), 1e-12)


def _combine(components: List[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum ``(light, rgb_colour)`` components into one ``(H, W, 3)`` flux image."""
    return sum(light[..., None] * colour for light, colour in components)


def _spiral_pattern(
        r: np.ndarray,
        phi: np.ndarray,
        num_arms: int,
        pitch_deg: float,
        phase: float,
        r_ref: float,
        sharpness: float,
) -> np.ndarray:
    """Logarithmic spiral arm pattern in [0, 1]: constant along ``phi - ln(r / r_ref) / tan(pitch) = phase``."""
    winding = np.log(np.maximum(r, 1e-6) / r_ref) / math.tan(math.radians(pitch_deg))
    return (0.5 * (1.0 + np.cos(num_arms * (phi - phase - winding)))) ** sharpness


def _smooth(
        u: np.ndarray,
        v: np.ndarray,
        rng: np.random.Generator,
        scale: float,
        q_range: Tuple[float, float],
        n_range: Tuple[float, float],
) -> np.ndarray:
    """Smooth (elliptical) galaxy: one red Sersic component of random index ``n`` and axis ratio ``q``."""
    n = rng.uniform(*n_range)
    q = rng.uniform(*q_range)
    r = np.sqrt(u * u + (v / q) ** 2)
    return _combine([(_unit(_sersic(r, scale, n)), _jitter(_OLD_STARS, rng))])


def _disk(
        u: np.ndarray,
        v: np.ndarray,
        rng: np.random.Generator,
        scale: float,
        q_range: Tuple[float, float] = (0.45, 1.0),
        barred: bool = False,
        arm_strength: Tuple[float, float] = (0.35, 0.65),
) -> np.ndarray:
    """Disk galaxy: Sersic bulge + exponential disk (+ bar) (+ logarithmic spiral arms), at an inclination."""
    q = rng.uniform(*q_range)  # cos(inclination)
    v = v / q  # de-project onto the disk plane
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    h = scale / 1.678  # exponential scale length with half-light radius `scale`
    components = []

    bulge_frac = rng.uniform(0.08, 0.35)
    bulge_re = h * rng.uniform(0.2, 0.45)
    bulge = _sersic(r, bulge_re, rng.uniform(1.5, 4.0))
    components.append((bulge_frac * _unit(bulge), _jitter(_OLD_STARS, rng)))

    disk = np.exp(-r / h)
    disk_frac = 1.0 - bulge_frac
    start_r = h * rng.uniform(0.4, 0.8)  # radius where the arms begin (bar end for barred spirals)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    if barred:
        bar_len = h * rng.uniform(0.9, 1.7)
        bar_axis = rng.uniform(0.18, 0.32)
        bu, bv = _frame(u, v, 0.0, 0.0, phase)  # the arms start at the bar's ends
        bar = _sersic(np.sqrt((bu / bar_len) ** 2 + (bv / (bar_len * bar_axis)) ** 2), 0.55, 0.5)  # flat, sharp-ended
        bar_frac = rng.uniform(0.25, 0.45)
        components.append((bar_frac * disk_frac * _unit(bar), _jitter(_OLD_STARS * 0.5 + _DISK_STARS * 0.5, rng)))
        disk_frac *= 1.0 - bar_frac
        start_r = bar_len
        num_arms = 2
    else:
        num_arms = int(rng.choice([2, 2, 2, 3, 4]))

    pitch = rng.uniform(12.0, 32.0)
    pattern = _spiral_pattern(r, phi, num_arms, pitch, phase, start_r, sharpness=rng.uniform(2.0, 5.0))
    inner_taper = 1.0 - np.exp(-(r / start_r) ** 4)  # arms fade into the bulge/bar, not into the centre
    strength = rng.uniform(*arm_strength)
    arm_light = disk * pattern * inner_taper
    components.append((disk_frac * strength * _unit(arm_light), _jitter(_YOUNG_STARS, rng)))
    disk_frac *= 1.0 - strength
    components.append((disk_frac * _unit(disk), _jitter(_DISK_STARS, rng)))
    return _combine(components)


def _edge_on(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Edge-on disk: thin exponential slab (sech^2 vertically), small bulge, often a reddening dust lane."""
    h = scale / 1.678 * rng.uniform(0.9, 1.25)
    z0 = h * rng.uniform(0.08, 0.22)
    disk = np.exp(-np.abs(u) / h) / np.cosh(v / z0) ** 2
    bulge_frac = rng.uniform(0.0, 0.35)
    bulge_q = rng.uniform(0.55, 0.9)
    bulge = _sersic(np.sqrt(u * u + (v / bulge_q) ** 2), h * rng.uniform(0.25, 0.5), rng.uniform(1.5, 4.0))
    flux = _combine([
        ((1.0 - bulge_frac) * _unit(disk), _jitter(_DISK_STARS * 0.6 + _YOUNG_STARS * 0.4, rng)),
        (bulge_frac * _unit(bulge), _jitter(_OLD_STARS, rng)),
    ])
    if rng.random() < 0.6:
        # optical depth of a thin lane in the mid-plane; dust absorbs blue light more than red
        depth = rng.uniform(0.3, 1.2)
        offset = rng.uniform(-0.3, 0.3) * z0
        tau = depth * np.exp(-((v - offset) / (0.5 * z0)) ** 2) * np.exp(-np.abs(u) / (2.0 * h))
        flux = flux * np.exp(-tau[..., None] * np.array([0.6, 0.85, 1.0]))
    return flux


def _merger(
        x: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator,
        scale: float,
        centre: Tuple[float, float],
        angle: float,
) -> np.ndarray:
    """Two galaxies (each smooth or disky) close together, with a faint tidal tail from one of them."""
    separation = scale * rng.uniform(1.2, 2.6)
    offset = 0.5 * separation * np.array([math.cos(angle), math.sin(angle)])
    flux_ratio = rng.uniform(0.35, 1.0)
    total = np.zeros(x.shape + (3,))
    for k, (sign, flux) in enumerate(((1.0, 1.0), (-1.0, flux_ratio))):
        c = (centre[0] + sign * offset[0], centre[1] + sign * offset[1])
        sub_scale = scale * rng.uniform(0.5, 0.85)
        u, v = _frame(x, y, c[0], c[1], rng.uniform(0.0, math.pi))
        if rng.random() < 0.5:
            total += flux * _smooth(u, v, rng, sub_scale, q_range=(0.5, 1.0), n_range=(1.5, 4.0))
        else:
            total += flux * _disk(u, v, rng, sub_scale, q_range=(0.4, 1.0), arm_strength=(0.1, 0.35))
        if k == 0:
            # tidal tail: a single, loosely wound, broad arm reaching well outside the galaxy
            r = np.sqrt(u * u + v * v)
            tail = _spiral_pattern(r, np.arctan2(v, u), 1, rng.uniform(25.0, 45.0), rng.uniform(0, 2 * math.pi),
                                   sub_scale, sharpness=rng.uniform(3.0, 6.0))
            tail = tail * np.exp(-r / (1.5 * sub_scale)) * (1.0 - np.exp(-(r / sub_scale) ** 2))
            total += _combine([(rng.uniform(0.12, 0.3) * _unit(tail), _jitter(_DISK_STARS, rng))])
    return total


def image_rng(seed: int, split: str, class_id: int, index: int) -> np.random.Generator:
    """The generator for one image, independent of every other image (so any subset can be re-rendered alone)."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(class_id), int(index)])


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian PSF blur of an ``(H, W, C)`` image, zero outside the frame.

    Written as a few shifted, weighted sums: small images need no FFT or BLAS (whose threads only add overhead).
    """
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    height, width = image.shape[:2]
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)))
    image = sum(w * padded[i:i + height] for i, w in enumerate(taps))
    padded = np.pad(image, ((0, 0), (radius, radius), (0, 0)))
    return sum(w * padded[:, i:i + width] for i, w in enumerate(taps))


def render_galaxy(class_id: int, rng: np.random.Generator, image_size: int = 64) -> np.ndarray:
    """Render one noisy colour image of class ``class_id`` (an index into ``CLASS_NAMES``).

    Returns a ``(image_size, image_size, 3)`` uint8 array. All randomness comes from ``rng``.
    """
    if not 0 <= int(class_id) < len(CLASS_NAMES):
        raise ValueError(f'class_id must be in [0, {len(CLASS_NAMES) - 1}], got {class_id!r}')
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ValueError(f'image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}')
    class_id, image_size = int(class_id), int(image_size)
    oversample = max(1, -(-_MIN_GRID // image_size))
    grid = image_size * oversample
    # pixel centres in units of the image width, origin at the image centre
    axis = (np.arange(grid, dtype=np.float64) + 0.5) / grid - 0.5
    x, y = np.meshgrid(axis, axis)

    centre = (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08)))
    angle = rng.uniform(0.0, math.pi)
    scale = rng.uniform(0.07, 0.15)  # half-light radius, fraction of the image width

    u, v = _frame(x, y, centre[0], centre[1], angle)  # the galaxy's own frame; a merger places its two members
    if class_id == 0:
        flux = _smooth(u, v, rng, scale, q_range=(0.72, 1.0), n_range=(2.0, 6.0))
    elif class_id == 1:
        flux = _smooth(u, v, rng, scale * 1.2, q_range=(0.28, 0.55), n_range=(1.0, 4.0))
    elif class_id == 2:
        flux = _disk(u, v, rng, scale * 1.25, barred=False)
    elif class_id == 3:
        flux = _disk(u, v, rng, scale * 1.25, barred=True)
    elif class_id == 4:
        flux = _edge_on(u, v, rng, scale * 1.25)
    else:
        flux = _merger(x, y, rng, scale, centre, angle)

    sigma = rng.uniform(0.5, 1.3)  # PSF width in output pixels
    # integrate over each output pixel (block mean), then blur: the two convolutions commute
    flux = flux.reshape(image_size, oversample, image_size, oversample, 3).mean(axis=(1, 3))
    flux = _gaussian_blur(flux, sigma)
    flux /= flux.mean(axis=2).max()  # galaxy peak intensity = 1

    # a field star now and then: a point source seen through the same PSF
    if rng.random() < 0.3:
        sy, sx = rng.uniform(0, image_size, size=2)
        pix = np.arange(image_size) + 0.5
        star = np.exp(-0.5 * (((pix[:, None] - sy) ** 2 + (pix[None, :] - sx) ** 2) / sigma ** 2))
        colour = _STAR_COLOURS[int(rng.integers(len(_STAR_COLOURS)))]
        flux += rng.uniform(0.1, 1.0) * star[..., None] * colour / colour.mean()

    # counts: the galaxy's brightest pixel gets `peak` photons on top of a `sky` background, then Poisson noise
    peak = rng.uniform(60.0, 600.0)
    sky = rng.uniform(10.0, 60.0)
    noisy = rng.poisson(flux * peak + sky).astype(np.float64) - sky

    # colour-preserving asinh stretch (Lupton et al. 2004), softening set from the noise level
    softening = rng.uniform(1.5, 4.0) * math.sqrt(sky)
    intensity = np.maximum(noisy.mean(axis=2, keepdims=True), 1e-6)
    full_scale = math.asinh(peak / softening)  # the noiseless galaxy peak maps to 1
    image = noisy * np.arcsinh(intensity / softening) / (intensity * full_scale)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image_folder(
        root: Union[str, Path],
        num_per_class: int,
        *,
        num_val_per_class: Optional[int] = None,
        num_test_per_class: int = 0,
        seed: int = 0,
        image_size: int = 64,
        overwrite: bool = False,
) -> Dict[str, int]:
    """Write ``root/train/<class>/*.png``, ``root/validation/<class>/*.png`` (and ``root/test/``) in timm's
    ImageFolder layout, all or nothing (``timm_astro.outputs.atomic_output_dir``).

    Args:
        root: dataset directory: new, empty, or (``overwrite``) an earlier one of these.
        num_per_class: training images per class.
        num_val_per_class: validation images per class; default ``max(1, num_per_class // 4)``.
        num_test_per_class: test images per class; 0 for no test split.
        seed: same seed, same bytes. No two images, of any split, share a random stream.
        image_size: side length in pixels (32 and 64 are the intended sizes).
        overwrite: replace an earlier output instead of refusing.

    Returns:
        Number of images written per split.
    """
    if num_val_per_class is None:
        num_val_per_class = max(1, num_per_class // 4)
    for name, value, least in (('num_per_class', num_per_class, 1), ('num_val_per_class', num_val_per_class, 1),
                               ('num_test_per_class', num_test_per_class, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be a {'positive' if least else 'non-negative'} integer, got {value!r}")
    if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f'image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}')
    counts = {}
    with atomic_output_dir(root, CREATED_BY, overwrite=overwrite,
                           marker_info={'seed': int(seed), 'image_size': int(image_size),
                                        'generator_version': GENERATOR_VERSION}) as tmp:
        for split, count in zip(SPLITS, (num_per_class, num_val_per_class, num_test_per_class)):
            if not count:
                continue
            for class_id, class_name in enumerate(CLASS_NAMES):
                class_dir = tmp / split / class_name
                class_dir.mkdir(parents=True)
                for index in range(count):
                    pixels = render_galaxy(class_id, image_rng(seed, split, class_id, index), image_size)
                    # no pnginfo, no timestamps: the bytes depend only on the pixels
                    Image.fromarray(pixels, mode='RGB').save(class_dir / f'{class_name}_{index:05d}.png', format='PNG')
            counts[split] = count * len(CLASS_NAMES)
    return counts
