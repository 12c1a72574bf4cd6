"""The stretch that turns survey data (floats in physical units, 16-bit counts) into network input in [0, 1].

A model trained on stretched data must see every later image stretched the same way, so a ``Stretch`` is a small
value object that is written into the model's config at export (``to_config``) and read back by ``evaluate`` and
``predict`` (``from_config``). It works per band (per channel) and per image:

1. clip each band to ``[low, high]``: either fixed values in the data's units (``low``/``high``, one per band or one
   for all) or the ``low_percentile`` / ``high_percentile`` of the band's finite pixels in this image;
2. scale to [0, 1], linearly or with ``asinh`` (the luptitude-like stretch of Lupton et al. 2004 that survey
   cutouts use: faint structure lifted, bright cores not saturated; ``softening`` is the fraction of the clipped
   range where it turns from linear to logarithmic);
3. non-finite pixels (NaN, inf: blanked or masked pixels in survey data) become 0, the black level, after the
   stretch; a band with no finite pixel is refused.
"""
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from timm_astro.errors import UserError

__all__ = ['Stretch', 'StretchError', 'STRETCH_KINDS']

STRETCH_KINDS = ('linear', 'asinh')
Limit = Union[None, float, Sequence[float]]


class StretchError(UserError):
    """Data the stretch cannot turn into input (a band with no finite pixel, a band count its limits lack):
    ``'<source>: <reason>'``, with ``reason`` kept for readers that name the file their own way."""

    def __init__(self, source: str, reason: str):
        super().__init__(f'{source}: {reason}')
        self.reason = reason


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f'stretch {name} must be a finite number, got {value!r}')
    return float(value)


@dataclass(frozen=True)
class Stretch:
    """Per-band clip and scale of float data to [0, 1]; see the module docstring."""
    kind: str = 'asinh'
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    low: Limit = None  # fixed limits in the data's units, instead of the percentiles (both or neither)
    high: Limit = None
    softening: float = 0.1  # asinh only: in (0, 1]; smaller lifts faint structure more

    def __post_init__(self):
        if self.kind not in STRETCH_KINDS:
            raise UserError(f"stretch kind must be one of {', '.join(STRETCH_KINDS)}, got {self.kind!r}")
        low_p = _finite_number(self.low_percentile, 'low_percentile')
        high_p = _finite_number(self.high_percentile, 'high_percentile')
        if not 0 <= low_p < high_p <= 100:
            raise UserError(f'stretch percentiles must satisfy 0 <= low < high <= 100, got {low_p} and {high_p}')
        if (self.low is None) != (self.high is None):
            raise UserError('stretch needs both low and high limits, or neither (then the percentiles are used)')
        if self.low is not None:
            lows, highs = self._per_band(self.low, 'low'), self._per_band(self.high, 'high')
            if len(lows) != len(highs) or any(lo >= hi for lo, hi in zip(lows, highs)):
                raise UserError(f'stretch limits must give low < high for every band, got low={self.low!r} '
                                f'high={self.high!r}')
        softening = _finite_number(self.softening, 'softening')
        if not 0 < softening <= 1:
            raise UserError(f'stretch softening must be in (0, 1], got {softening}')

    @staticmethod
    def _per_band(value: Limit, name: str) -> list:
        values = [value] if isinstance(value, (int, float)) else list(value)
        return [_finite_number(v, name) for v in values]

    def limit_bands(self) -> Optional[int]:
        """How many bands the fixed limits are for (None: percentiles, or one pair for every band)."""
        if self.low is None or isinstance(self.low, (int, float)):
            return None
        count = len(self._per_band(self.low, 'low'))
        return None if count == 1 else count

    def _limits(self, band: np.ndarray, index: int, bands: int, source: str):
        if self.low is None:
            return np.percentile(band, [self.low_percentile, self.high_percentile])
        lows, highs = self._per_band(self.low, 'low'), self._per_band(self.high, 'high')
        if len(lows) not in (1, bands):
            raise StretchError(source, f'the stretch has limits for {len(lows)} bands; the image has {bands}')
        pick = 0 if len(lows) == 1 else index
        return lows[pick], highs[pick]

    def __call__(self, data: np.ndarray, source: str = 'the image') -> np.ndarray:
        """``data`` shaped ``(bands, height, width)`` in any numeric dtype -> float32 in [0, 1], same shape."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 3:
            raise StretchError(source, f'expected bands x height x width data, got shape {data.shape}')
        out = np.zeros(data.shape, dtype=np.float32)
        for index, band in enumerate(data):
            finite = np.isfinite(band)
            if not finite.any():
                raise StretchError(source, f'band {index} has no finite pixel (all NaN or inf); expected image data')
            low, high = self._limits(band[finite], index, len(data), source)
            scaled = np.zeros_like(band)
            if high > low:  # a flat band stays 0 rather than dividing by zero
                scaled = np.clip((np.where(finite, band, low) - low) / (high - low), 0.0, 1.0)
                if self.kind == 'asinh':
                    scaled = np.arcsinh(scaled / self.softening) / math.asinh(1.0 / self.softening)
            out[index] = np.where(finite, scaled, 0.0)
        return out

    def to_config(self) -> dict:
        """A JSON-able dict for a model's config (``from_config`` reads it back)."""
        config = asdict(self)
        for key in ('low', 'high'):
            if config[key] is not None and not isinstance(config[key], (int, float)):
                config[key] = list(config[key])
        return config

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]]) -> 'Stretch':
        if not isinstance(config, Mapping):
            raise UserError(f'a stretch config must be a mapping of its parameters, got {config!r}')
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown stretch parameter {unknown[0]!r}; expected some of "
                            f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**config)

    def __str__(self) -> str:
        """The parameters that differ from the defaults, as ``parse`` reads them: ``asinh:softening=0.05``."""
        changed = [f'{k}={v}' for k, v in self.to_config().items()
                   if k != 'kind' and v != self.__dataclass_fields__[k].default]
        return self.kind + (':' + ','.join(changed) if changed else '')

    @classmethod
    def parse(cls, text: str) -> 'Stretch':
        """``'asinh'``, ``'linear'`` or ``'asinh:softening=0.05,high_percentile=99'`` (a command-line option)."""
        kind, _, rest = text.partition(':')
        params: dict = {'kind': kind.strip()}
        for item in filter(None, (p.strip() for p in rest.split(','))):
            key, sep, value = item.partition('=')
            if not sep:
                raise UserError(f'stretch parameter {item!r} must be KEY=VALUE (e.g. asinh:softening=0.05)')
            try:
                params[key.strip()] = float(value)
            except ValueError:
                raise UserError(f'stretch parameter {key.strip()} must be a number, got {value!r}') from None
        return cls.from_config(params)
