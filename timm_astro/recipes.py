"""Training recipes in train.py's own terms, for the code that trains in-process (the demo, the benchmarks).

Each recipe here is also a ``train_configs/`` file for timm's unchanged train.py, where every value carries its
provenance; ``tests/test_train_configs.py`` keeps the two equal. Keys are train.py's argparse dest names, read by
``timm_astro.training.train_args``.
"""
from typing import Any, Dict

__all__ = ['LOWDATA_GALAXY_RECIPE', 'LOWDATA_GALAXY_CONFIG']

# The low-data galaxy recipe (train_configs/galaxy_lowdata_astroformer_small.yaml): the paper's AdamW, cosine, label
# smoothing and stochastic depth (no CutMix, Cutout or DropBlock), with RandAugment and Mixup off and lr 1e-3, chosen
# on the validation split of the real Galaxy10 DECals sample at ~160 steps for every model tried
# (benchmarks/RESULTS.md, "Tuning the recipe"). 'epochs' is the study's budget at 30 images per class;
# benchmarks/lowdata.py sets it from its step count.
LOWDATA_GALAXY_CONFIG = 'galaxy_lowdata_astroformer_small.yaml'
LOWDATA_GALAXY_RECIPE: Dict[str, Any] = {
    'opt': 'adamw',
    'lr': 1e-3,
    'weight_decay': 0.05,
    'sched': 'cosine',
    'epochs': 17,
    'warmup_epochs': 1,
    'warmup_lr': 1e-5,
    'min_lr': 1e-5,
    'batch_size': 32,
    'mixup': 0.0,
    'cutmix': 0.0,
    'smoothing': 0.1,
    'aa': None,
    'reprob': 0.0,
    'hflip': 0.5,
    'vflip': 0.5,
    'scale': [0.5, 1.0],
    'color_jitter': 0.0,
    'drop': 0.0,
    'drop_path': 0.1,
    'model_ema': False,
}
