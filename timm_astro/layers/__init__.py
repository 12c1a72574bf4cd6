from timm_astro.layers.checks import check_image_batch, check_in_chans, check_out_indices, reject_drop_block
from timm_astro.layers.relative_attention import (
    ATTN_IMPLS, REL_POS_TYPES, RelativeAttention2d, RelPosBiasBase, RelPosBiasFourier, RelPosBiasTable,
    has_flex_attention,
)
