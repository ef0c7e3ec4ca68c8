"""`dynconv export`: a DeepSpeed (ZeRO 0-3) checkpoint -> a plain dynconv weights file for `dynconv eval`."""
from __future__ import annotations

from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.train import atomic_torch_save, latest_checkpoint, load_checkpoint
from dynconv.train.checkpoint import is_deepspeed_checkpoint, model_from_checkpoint


def _source(path: Path) -> Path:
    """The checkpoint ``path`` names: a DeepSpeed tag folder, a checkpoints folder (its ``latest``), a
    run.dir (its newest complete checkpoint) or a dynconv checkpoint file."""
    if not path.exists():
        raise DynconvError(f"{path} does not exist: pass a DeepSpeed checkpoint folder (run.dir/checkpoints/epoch_NNNN) "
                           "or a dynconv checkpoint file")
    if path.is_file() or is_deepspeed_checkpoint(path):
        return path
    if (path / "latest").is_file():
        tag = path / (path / "latest").read_text().strip()
        if is_deepspeed_checkpoint(tag):
            return tag
    if (path / "checkpoints").is_dir() and (found := latest_checkpoint(path)) is not None:
        return found
    raise DynconvError(f"{path} holds no DeepSpeed checkpoint (no *_model_states.pt) and is not a dynconv checkpoint "
                       "file: pass run.dir, run.dir/checkpoints or run.dir/checkpoints/epoch_NNNN")


def run_export(checkpoint: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write the consolidated fp32 weights of ``checkpoint`` to ``out``; returns (out, what was read)."""
    source = _source(Path(checkpoint))
    if source.is_file():  # already plain: keep the weights-only part
        ckpt = load_checkpoint(source)
        plain = {"dynconv": ckpt["dynconv"], "model": ckpt["model"], "epoch": ckpt.get("epoch")}
        what = f"dynconv checkpoint {source}"
    else:
        from dynconv.train.strategies.deepspeed_engine import consolidate

        record, state = consolidate(source)
        plain = {"dynconv": record["dynconv"], "model": state, "epoch": record["epoch"]}
        step = f" step {record['step']}" if record.get("step") is not None else ""
        what = (f"DeepSpeed ZeRO-{record['zero_stage']} checkpoint {source} ({record['world_size']} process(es), "
                f"{record['epoch']} epoch(s){step})")
    model_from_checkpoint(plain, source)  # the weights fit the model the manifest describes
    return atomic_torch_save(plain, out), what
