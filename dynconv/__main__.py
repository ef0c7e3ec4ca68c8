"""``python -m dynconv`` runs the command line (also what torchrun and the DeepSpeed launcher start)."""
import sys

from dynconv.launch.cli import main

sys.exit(main())
