from timm_astro.layers.checks import check_image_batch, reject_drop_block
from timm_astro.layers.relative_attention import (
    RelativeAttention2d, RelPosBiasFourier, RelPosBiasTable, relative_offset_index,
)
