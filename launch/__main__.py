"""``python -m dynconv.launch`` runs the command line (what torchrun and the DeepSpeed launcher start; the
same as the ``dynconv`` command)."""
import sys

from .cli import main

sys.exit(main())
