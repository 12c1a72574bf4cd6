"""Pictures of what an Astroformer learned: the relative-position kernel W of each head, and where S4 attends.

* ``write_kernel_pictures(model, folder)``: one PNG per relative attention module, each head's ``W_h`` as a
  ``(2H-1) x (2W-1)`` image over 2-D offsets (zero offset at the centre, H x W the module's feature size at the
  model's default input).
* ``write_attention_pictures(model, images, folder)``: for each image, the S4 attention of a few query positions per
  head, drawn over the image as the model saw it (after its own preprocessing).
* ``inspect_model(spec, images, out)``: load a model as ``timm_astro.loading.load_model`` does and write both.

matplotlib is imported only when a picture is drawn (``pip install 'timm-astro[plot]'``).
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm.data import create_transform, resolve_model_data_config

from timm_astro.data.fits import is_fits
from timm_astro.data.images import (
    ImageReader, band_data_config, image_problem, read_array, read_image, reader_for_model)
from timm_astro.data.stretch import Stretch
from timm_astro.errors import UserError
from timm_astro.evaluation.plots import pyplot
from timm_astro.layers.relative_attention import RelativeAttention2d
from timm_astro.outputs import atomic_output_dir, check_output_location, write_json

__all__ = ['write_kernel_pictures', 'write_attention_pictures', 'inspect_model', 'QUERY_POINTS']

PathLike = Union[str, os.PathLike]
CREATED_BY = 'timm-astro inspect'
# query positions, as fractions of the feature map's height and width: the centre and four off-centre points
QUERY_POINTS: Tuple[Tuple[float, float], ...] = ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))


def _attention_modules(model: nn.Module) -> List[Tuple[str, RelativeAttention2d]]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, RelativeAttention2d)]
    if not found:
        raise UserError(f'{type(model).__name__} has no RelativeAttention2d: expected an Astroformer model')
    return found


def _default_feature_size(model: nn.Module) -> Tuple[int, int]:
    """S4's feature size at the model's default input: input size over the last stage's reduction."""
    height, width = resolve_model_data_config(model)['input_size'][-2:]
    reduction = model.feature_info[-1]['reduction']
    return height // reduction, width // reduction


def write_kernel_pictures(
        model: nn.Module,
        folder: PathLike,
        feature_size: Optional[Tuple[int, int]] = None,
) -> List[Path]:
    """Write one PNG per relative attention module of ``model`` into ``folder`` (created if needed): each head's
    kernel ``W_h[dy, dx]`` for the offsets of an H x W map, zero offset at the centre; returns the files.

    Args:
        model: An Astroformer (either family).
        folder: Where the PNGs go (``kernel_<module>.png``).
        feature_size: The H x W map whose offsets are drawn; S4's map at the model's default input if None.
    """
    modules = [(name, m) for name, m in _attention_modules(model) if m.rel_pos is not None]
    if not modules:
        raise UserError("this model has no relative-position kernel to draw (rel_pos_type='none')")
    height, width = feature_size or _default_feature_size(model)
    plt = pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, attn in modules:
        with torch.no_grad():
            kernel = attn.rel_pos.offset_kernel(height, width).detach().float().cpu()
        heads = kernel.shape[0]
        cols = min(heads, 8)
        rows = -(-heads // cols)
        limit = float(kernel.abs().max()) or 1.0
        fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1.0, 1.9 * rows + 0.6), squeeze=False)
        extent = (-(width - 1) - .5, width - 1 + .5, height - 1 + .5, -(height - 1) - .5)
        for h, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= heads:
                ax.axis('off')
                continue
            image = ax.imshow(kernel[h], cmap='RdBu_r', vmin=-limit, vmax=limit, extent=extent, interpolation='nearest')
            ax.plot(0, 0, '+', color='black', markersize=5)  # the zero offset
            ax.set_title(f'head {h}', fontsize=8)
        kind = type(attn.rel_pos).__name__
        fig.suptitle(f'{name}: W_h[dy, dx] over {2 * height - 1}x{2 * width - 1} offsets ({kind}, {height}x{width} map)',
                     fontsize=9)
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
        path = folder / f'kernel_{name}.png'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _load_image(path: Path, model: nn.Module, reader: Optional[ImageReader] = None
                ) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``path`` read as ``evaluate`` and ``predict`` read it (``timm_astro.data.images``: the model's reader, its
    stretch for FITS and N-band data), preprocessed for it."""
    reader = reader or reader_for_model(model)
    config = band_data_config(resolve_model_data_config(model), reader.in_chans)
    return create_transform(**config, is_training=False)(reader(path)), config


def _display(x: torch.Tensor, config: Dict[str, Any]) -> torch.Tensor:
    """The preprocessed image undone to [0, 1] for display, ``[H, W, C]``; N bands other than 1 or 3 are shown as
    their mean, in grey."""
    mean = torch.tensor(config['mean']).view(-1, 1, 1)
    std = torch.tensor(config['std']).view(-1, 1, 1)
    shown = (x * std + mean).clamp(0, 1)
    if shown.shape[0] not in (1, 3):
        shown = shown.mean(0, keepdim=True)
    return shown.permute(1, 2, 0)


def write_attention_pictures(
        model: nn.Module,
        images: Sequence[PathLike],
        folder: PathLike,
        query_points: Sequence[Tuple[float, float]] = QUERY_POINTS,
        max_heads: int = 8,
        reader: Optional[ImageReader] = None,
) -> List[Path]:
    """For each image, one PNG per relative attention module: rows are query positions, columns the image (query
    marked) and the attention of up to ``max_heads`` heads over it. Returns the files written into ``folder``.
    Images are read by ``reader`` (default: ``reader_for_model(model)``)."""
    plt = pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = _attention_modules(model)
    model.eval()
    written = []
    for number, image_path in enumerate(map(Path, images)):
        x, config = _load_image(image_path, model, reader)
        seen: Dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
                 for name, m in modules]
        try:
            with torch.no_grad():
                probs = model(x.unsqueeze(0)).softmax(-1)[0]
        finally:
            for hook in hooks:
                hook.remove()
        shown = _display(x, config)
        img_h, img_w = shown.shape[:2]
        for name, attn in modules:
            feats = seen[name]
            height, width = feats.shape[-2:]
            points = [(min(int(fy * height), height - 1), min(int(fx * width), width - 1)) for fy, fx in query_points]
            queries = torch.tensor([py * width + px for py, px in points])
            with torch.no_grad():
                maps = attn.attention_probs(feats, queries)[0].reshape(attn.num_heads, len(points), height, width)
            heads = min(attn.num_heads, max_heads)
            fig, axes = plt.subplots(len(points), heads + 1, figsize=(1.6 * (heads + 1), 1.6 * len(points) + 0.6),
                                     squeeze=False)
            extent = (0, img_w, img_h, 0)
            for row, (py, px) in enumerate(points):
                marker = ((px + .5) * img_w / width, (py + .5) * img_h / height)
                for col, ax in enumerate(axes[row]):
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.imshow(shown.squeeze(-1), cmap='gray' if shown.shape[-1] == 1 else None, extent=extent)
                    if col:
                        ax.imshow(maps[col - 1, row], cmap='magma', alpha=0.65, extent=extent, interpolation='nearest')
                    ax.plot(*marker, 'c+', markersize=8, markeredgewidth=1.5)
                    if row == 0:
                        ax.set_title('input' if col == 0 else f'head {col - 1}', fontsize=8)
            top = int(probs.argmax())
            labels = model.pretrained_cfg.get('label_names') if getattr(model, 'pretrained_cfg', None) else None
            label = labels[top] if labels and top < len(labels) else f'class {top}'
            fig.suptitle(f'{image_path.name}: {name} ({height}x{width} map, heads 0-{heads - 1} of {attn.num_heads}); '
                         f'predicted {label} ({float(probs[top]):.2f})', fontsize=8)
            path = folder / f'attention_{number:03d}_{image_path.stem}_{name}.png'  # numbered: stems may repeat
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def inspect_model(
        spec: str,
        images: Sequence[PathLike],
        out: PathLike,
        checkpoint: Optional[PathLike] = None,
        overwrite: bool = False,
        stretch: Optional[Stretch] = None,
        hdu: Optional[Union[int, str]] = None,
        bands: Optional[Sequence[Union[int, str]]] = None,
) -> Path:
    """Load ``spec`` (see ``timm_astro.loading.load_model``) and write into ``out`` its kernel pictures
    (``kernels/``), the attention pictures of ``images`` (``attention/``) and ``inspect.json`` listing them.

    The images (each read once: a file that is not an image, a FIFO, a decompression bomb, float pixels without a
    stretch, a FITS file without image data are one line), ``out`` and matplotlib are checked before the model is
    loaded (perhaps a Hub download); then they are read through the model's reader (``reader_for_model``: its
    stretch, or ``stretch`` / ``hdu`` / ``bands`` for a model that records none), and another band count than the
    model's is one line before anything is written."""
    from timm_astro.loading import load_model

    missing = [str(p) for p in images if image_problem(p) == 'not found']
    if missing:
        raise UserError(f"{', '.join(missing)}: not found; expected image files")
    for path in images:  # FITS data read with any stretch: whether they read does not depend on it
        if stretch is not None or is_fits(path):
            read_array(path, stretch or Stretch(), hdu=hdu, bands=bands)
        else:
            read_image(path)
    check_output_location(out, overwrite=overwrite, created_by=CREATED_BY)
    pyplot()
    model = load_model(spec, checkpoint)
    reader = reader_for_model(model, stretch, hdu, bands)
    for path in images:
        reader(path)
    has_kernel = any(m.rel_pos is not None for _, m in _attention_modules(model))
    with atomic_output_dir(out, CREATED_BY, overwrite=overwrite) as tmp:
        kernels = write_kernel_pictures(model, tmp / 'kernels') if has_kernel else []
        attention = write_attention_pictures(model, images, tmp / 'attention', reader=reader) if images else []
        write_json(tmp / 'inspect.json', {
            'model': spec,
            'checkpoint': str(checkpoint) if checkpoint else None,
            'feature_size': list(_default_feature_size(model)),
            'kernels': [str(p.relative_to(tmp)) for p in kernels],
            'attention': [str(p.relative_to(tmp)) for p in attention],
            'note': None if has_kernel else "rel_pos_type='none': no relative-position kernel to draw",
            **({'stretch': reader.stretch.to_config()} if reader.stretch is not None else {}),
        })
    return Path(out)
