"""Training recipes in train.py's own terms, for the code that trains in-process (the demo, the benchmarks).

Each recipe here is also a ``train_configs/`` file for timm's unchanged train.py, where every value carries its
provenance; ``tests/test_train_configs.py`` keeps the two equal. Keys are train.py's argparse dest names, read by
``timm_astro.training.train_args``.
"""
from typing import Any, Dict

__all__ = ['LOWDATA_GALAXY_RECIPE', 'LOWDATA_GALAXY_CONFIG']

# The low-data galaxy recipe (train_configs/galaxy_lowdata_astroformer_small.yaml): the paper's choices (AdamW,
# cosine, Mixup + RandAugment, label smoothing, stochastic depth; no CutMix, Cutout or DropBlock) with the values the
# paper leaves open set for a few hundred labelled images.
LOWDATA_GALAXY_CONFIG = 'galaxy_lowdata_astroformer_small.yaml'
LOWDATA_GALAXY_RECIPE: Dict[str, Any] = {
    'opt': 'adamw',
    'lr': 2e-3,
    'weight_decay': 0.05,
    'sched': 'cosine',
    'epochs': 100,
    'warmup_epochs': 5,
    'warmup_lr': 1e-5,
    'min_lr': 1e-5,
    'batch_size': 32,
    'mixup': 0.8,
    'cutmix': 0.0,
    'smoothing': 0.1,
    'aa': 'rand-m9-mstd0.5',
    'reprob': 0.0,
    'hflip': 0.5,
    'vflip': 0.5,
    'scale': [0.5, 1.0],
    'color_jitter': 0.0,
    'drop_path': 0.1,
    'model_ema': False,
}
