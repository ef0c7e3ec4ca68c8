"""User-facing errors: one clear line saying what is wrong and how to fix it."""


class DynconvError(Exception):
    """An error caused by user input (paths, configs, checkpoints, CLI arguments).

    The CLI prints ``dynconv: error: <message>`` and exits with status 2, without a traceback.
    Keep messages to one line: what is wrong, then how to fix it.
    """
