"""`python -m zofed`: the same as the `zofed` command."""

import sys

from zofed.cli import main

sys.exit(main())
