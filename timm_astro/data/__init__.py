"""Data for Astroformer training: Galaxy10 (HDF5 file -> Dataset or ImageFolder) and synthetic galaxies."""
from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES, GALAXY10_SDSS_CLASSES, Galaxy10Dataset
from timm_astro.data.synthetic_galaxies import CLASS_NAMES as SYNTHETIC_CLASS_NAMES, render_galaxy, write_image_folder
