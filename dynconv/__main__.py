"""``python -m dynconv``: the library has no command line of its own (it must not import the application
above it); the command line is ``dynconv`` or ``python -m dynconv.launch``."""
import sys

sys.stderr.write("dynconv: error: the command line is 'dynconv' or 'python -m dynconv.launch' (the library "
                 "package dynconv runs nothing by itself)\n")
sys.exit(2)
