"""A trained dynconv model as an MLflow model (a pyfunc), so that MLflow's "Register model" works and a
registered model can be evaluated again: ``dynconv eval models:/NAME/VERSION`` or ``runs:/RUN_ID/model``.

The pyfunc takes a normalised float batch (N, C, H, W) of every dataset channel and a ``subset`` parameter
(``"RG"``; default all channels) and returns the logits; the dynconv checkpoint travels inside it."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from dynconv import __version__
from dynconv.errors import DynconvError
from dynconv.run_files import MODEL

MODEL_ARTIFACT = "model"        # the MLflow model's folder among the run's artifacts
CHECKPOINT_KEY = "checkpoint"   # its artifact holding the dynconv checkpoint

_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def _advice_silenced():
    """MLflow advises on every save (an input example, cloudpickle) although the signature is given explicitly:
    lines a user can do nothing about."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level, bar = pyfunc_log.level, os.environ.get(_PROGRESS_BAR)
    pyfunc_log.setLevel(logging.ERROR)
    os.environ[_PROGRESS_BAR] = "false"  # copying the checkpoint into the model folder is not a download
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*An input example was not provided")
            yield
    finally:
        pyfunc_log.setLevel(level)
        if bar is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = bar


try:  # the class must exist for MLflow to unpickle the model, also where mlflow is the only extra missing
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - tracking not installed: nothing is logged or loaded
    PythonModel = object


class SubsetClassifier(PythonModel):
    """predict(batch, params={"subset": "RG"}) -> logits, for the channels of that subset."""

    def load_context(self, context) -> None:
        import torch

        from dynconv.train.checkpoint import load_checkpoint, model_from_checkpoint

        path = context.artifacts[CHECKPOINT_KEY]
        ckpt = load_checkpoint(path)
        self.channels = ckpt["dynconv"]["channels"]
        self.model = model_from_checkpoint(ckpt, path).eval()
        self.torch = torch

    # np.ndarray: a hint MLflow infers no schema from (the explicit signature rules) and does not warn about
    def predict(self, context, model_input: np.ndarray, params=None):
        from dynconv.channel_select import forward_subset
        from dynconv.channels import parse_subset

        subset = parse_subset((params or {}).get("subset") or self.channels, self.channels)
        if isinstance(model_input, dict):  # MLflow passes a named tensor input as {name: array}
            model_input = model_input.get("images", next(iter(model_input.values())))
        x = self.torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with self.torch.no_grad():
            return forward_subset(self.model, x, subset).numpy()


def save_pyfunc(checkpoint: Path, manifest: dict, folder: Path, mlflow_model=None) -> Path:
    """Write the MLflow model of ``checkpoint`` into ``folder`` (with its signature); returns the folder.
    ``mlflow_model``: the ``mlflow.models.Model`` whose metadata the folder's MLmodel holds (a logged model's id)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from dynconv.channels import num_channels

    c, size = num_channels(manifest["channels"]), manifest["image_size"]
    classes = len(manifest.get("classes") or []) or manifest["model_kwargs"].get("num_classes")
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, size, size), "images")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "logits")]),
                               params=ParamSchema([ParamSpec("subset", "string", manifest["channels"])]))
    with _advice_silenced():
        mlflow.pyfunc.save_model(str(folder), python_model=SubsetClassifier(),
                                 artifacts={CHECKPOINT_KEY: str(checkpoint)}, signature=signature, mlflow_model=mlflow_model,
                                 pip_requirements=[f"dynconv=={__version__}"])
    return folder


def log_logged_model(uri: str, run_id: str, checkpoint: Path, folder: Path, metrics: dict[str, float], step: int,
                     register_as: str | None = None, tags: dict[str, str] | None = None) -> str:
    """The model of ``checkpoint`` as an MLflow 3 logged model named ``model``, output of run ``run_id`` at
    ``step`` (its last epoch), with ``metrics`` (the final per-subset evaluation) logged to the run and linked
    to it, the run's params and ``tags`` (its source), registered as ``register_as`` if given; its id.
    ``folder`` receives the model's files (kept, so a buffered record can be replayed). What
    ``mlflow.pyfunc.log_model`` does, in store ``uri`` (the run's) rather than MLflow's global one."""
    import shutil
    import time

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from dynconv.train.checkpoint import checkpoint_manifest

    from .mlflow_store import BATCH_METRICS

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id,
                                       params=dict(run.data.params), tags=tags, model_type="dynconv")
    try:
        if folder.exists():
            shutil.rmtree(folder)
        save_pyfunc(checkpoint, checkpoint_manifest(checkpoint), folder,
                    Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                          model_id=model.model_id))
        client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step, model_id=model.model_id, run_id=run_id) for k, v in metrics.items()]
    for i in range(0, len(items), BATCH_METRICS):
        client.log_batch(run_id, metrics=items[i:i + BATCH_METRICS], synchronous=True)
    if register_as:
        register(client, register_as, model, run_id)
    return model.model_id


def register(client, name: str, model, run_id: str):
    """A new version of registered model ``name`` (created if needed) in ``client``'s registry, from logged
    model ``model``. Its source is the model's artifact location: a ``models:/<id>`` source is resolved through
    MLflow's global store, not the client's."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, model.artifact_location, run_id=run_id, model_id=model.model_id)


def fetch_checkpoint(uri: str, tracking_uri: str | None, into: Path) -> Path:
    """The dynconv checkpoint behind ``models:/MODEL_ID`` (a logged model), ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/model`` (a run's logged model) or ``runs:/RUN_ID/checkpoints/model.pt``, downloaded into
    ``into``."""
    from dynconv.extras import require

    require("track")
    import mlflow.artifacts

    from .mlflow_store import store_errors

    with store_errors(tracking_uri or "the default MLflow store", f"download {uri} from"):
        source = uri
        if uri.startswith("models:/"):  # the same store: a logged model's id, NAME/VERSION or NAME@ALIAS
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            name, slash, version = uri[len("models:/"):].partition("/")
            name, at, alias = name.partition("@")
            if not slash and not at:
                source = client.get_logged_model(name).artifact_location
            else:
                mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
                source = client.get_model_version_download_uri(mv.name, mv.version)
        if source.startswith("runs:/") and source.rstrip("/").endswith(f"/{MODEL_ARTIFACT}"):
            # a run's logged model; runs logged before dynconv used MLflow 3's logged models: an artifact folder
            source = _run_model_location(source, tracking_uri) or source
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into),
                                                         tracking_uri=tracking_uri))
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise DynconvError(f"{uri} holds no dynconv checkpoint: pass a model logged by 'dynconv train' "
                           f"(runs:/RUN_ID/{MODEL_ARTIFACT}) or runs:/RUN_ID/checkpoints/{MODEL}")
    return found[0]


def _run_model_location(uri: str, tracking_uri: str | None) -> str | None:
    """Where the logged model ``model`` of the run in ``runs:/RUN_ID/model`` is (its last, if several), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(uri[len("runs:/"):].split("/")[0])
    outputs = sorted(run.outputs.model_outputs if run.outputs else [], key=lambda o: o.step)
    for output in reversed(outputs):
        model = client.get_logged_model(output.model_id)
        if model.name == MODEL_ARTIFACT:
            return model.artifact_location
    return None


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="dynconv-mlflow-")
