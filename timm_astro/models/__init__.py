"""Model definitions; importing this package registers them with timm."""
from timm_astro.models.astroformer import *  # noqa: F401,F403  astroformer_0 ... astroformer_5
from timm_astro.models.astroformer_fullres import *  # noqa: F401,F403  astroformer_small / base / large
