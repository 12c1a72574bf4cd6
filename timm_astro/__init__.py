"""Astroformer image classifiers for timm.

``import timm_astro`` registers every model with timm, after which ``timm.create_model('astroformer_small')``,
``'astroformer_0'`` ... ``'astroformer_5'`` and ``'hf-hub:...'`` checkpoints of them work like any timm model.
"""
from timm_astro.version import __version__
from timm_astro.environment import check_environment

check_environment()  # before timm (and huggingface_hub) are imported: they fail on a bad HF_ENDPOINT with a traceback
from timm_astro import models  # noqa: F401  (registers the models with timm)
