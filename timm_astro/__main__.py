import sys

from timm_astro.cli import main

sys.exit(main())
