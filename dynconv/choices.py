"""Every set of allowed values, defined once. The library validates against these, the config schema's
types (``Literal[*STEM_MODES]``) and the CLI's ``choices=`` derive from them. Imports nothing heavy, so
the command line can use it without loading torch."""
from __future__ import annotations

# channel-adaptive first convs
STEM_MODES = ("prefix", "slice", "template_mixing", "hypernet", "depthwise", "target")
STEM_PRESETS = ("torchvision", "study")        # stem geometry: 7x7 stride 2 | the study's 7x7 stride 1
NORM_MODES = ("shared", "recalibrate", "switchable", "group")
SUBSET_NORMS = ("recalibrate", "switchable")   # the norms with statistics per channel subset (calibrated)
SLICED_STEMS = ("prefix", "slice")             # stem modes that slice one weight (DynamicConv2D)
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "constant", "step", "onecycle")
STRATEGIES = ("single", "ddp", "deepspeed")   # train.strategy also accepts "auto"
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_BACKENDS = ("auto", "ffcv", "torchvision")
DATA_ORDERS = ("random", "quasi_random")
AUGMENT_WHERE = ("auto", "device", "loader")    # auto: loader without an accelerator, device with one
DROPOUT_KINDS = ("none", "constant", "uniform_subsets", "hierarchical", "weighted_subsets", "sandwich")
CURRICULA = ("none", "linear", "cosine", "step")
OFFLOAD_DEVICES = ("none", "cpu")
SYNTH_KINDS = ("shapes", "textures", "sensors")  # the embedded synthetic data sets
BETON_STORES = ("jpg", "raw")                    # how `dynconv convert` stores RGB images
DECODERS = ("center_crop", "random_resized_crop")  # how FFCV decodes training images
DEPTHWISE_COMBINE = ("softmax", "weighted", "mean", "sum")  # model.stem_args.combine of the depthwise stem
CLUSTERS = ("slurm", "local", "debug")            # where a submitted job runs (submitit executors)
SWEEP_SCHEDULERS = ("asha", "pbt", "fifo")
SWEEP_SEARCHES = ("random", "grid", "optuna")
SPACE_RANGES = ("uniform", "loguniform", "quniform", "randint")  # search-space distributions over a range
SPACE_LISTS = ("choice", "grid")                                 # ... over listed values
COMPARE_FORMATS = ("table", "markdown", "csv", "json")           # dynconv compare --format


def check_choice(value, choices, what: str):
    """``value`` if it is one of ``choices``, else a one-line error naming them."""
    if value not in choices:
        from .errors import DynconvError

        raise DynconvError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, choices))}")
    return value
