"""``python -m gpt2lab`` (and ``torchrun -m gpt2lab``) run the command line."""

import sys

from .cli import main

sys.exit(main())
