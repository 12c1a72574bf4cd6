"""Data for Astroformer training: Galaxy10 (HDF5 file -> Dataset or ImageFolder) and synthetic galaxies."""
from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES, GALAXY10_SDSS_CLASSES, Galaxy10Dataset
