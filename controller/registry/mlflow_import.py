"""Import a model version from an MLflow model registry, with its lineage.

``download_mlflow_model`` resolves ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``)
on an MLflow server over its REST API (``mlflow_rest``), downloads the version's one
``.onnx`` or ``.tflite`` file and, when there is one, its validation set, and gathers the
lineage: run, experiment, parameters, metrics, datasets. ``import_mlflow_model`` then
registers the file exactly like an upload (``models.register_model_file``).

Invariants:
- MLflow's answers are untrusted: every artifact path is verified before it is fetched
  (relative, no ``..``, no backslash or control characters); files are read only through
  the server's artifact proxy (``mlflow-artifacts:`` URIs); local file names are ours,
  never the server's; each download has its own byte limit;
- the validation set is a file named ``validation.npz``: the shallowest one in the model
  version's artifact directory, else one at the top of the run's artifacts;
- lineage is bounded (``mlflow_lineage``);
- a refused import leaves nothing: every check runs before the store keeps a file, and
  the downloads' temporary directory is removed whatever happens (``discard``).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlmodel import Session

from ..context import ControllerContext
from ..errors import (
    BadRequestError,
    ModelRejectedError,
    NotFoundError,
    UploadTooLargeError,
    UpstreamError,
)
from ..tokens import Principal
from .mlflow_lineage import MAX_LINEAGE_TEXT_CHARS, bounded_text, lineage_of, mapping_at
from .mlflow_rest import MlflowRest
from .models import FORMAT_EXTENSIONS, register_model_file
from .tables import ModelVersion

__all__ = [
    "DownloadedModel",
    "MlflowFile",
    "MlflowModelRef",
    "choose_model_file",
    "choose_validation_file",
    "download_mlflow_model",
    "import_mlflow_model",
    "parse_model_uri",
    "proxy_path_of",
    "verify_artifact_path",
]

logger = logging.getLogger(__name__)

# How much of a model version's artifact tree is looked at for its files.
MAX_LISTED_FILES = 1000
MAX_LISTING_DEPTH = 4
VALIDATION_FILENAME = "validation.npz"
ARTIFACTS_ROUTE = "/api/2.0/mlflow-artifacts/artifacts"
API = "/api/2.0/mlflow"

_MODEL_URI = re.compile(
    r"^models:/(?P<name>[^/@\x00-\x1f]{1,256})"
    r"(?:/(?P<version>[1-9][0-9]{0,9})|@(?P<alias>[A-Za-z0-9_-]{1,255}))$"
)
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class MlflowModelRef:
    """A registered model version, by number or by alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}" + (f"/{self.version}" if self.version else f"@{self.alias}")


@dataclass(frozen=True)
class MlflowFile:
    """A file under an artifact directory: its verified relative path and declared size."""

    path: str
    size_bytes: int | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass
class DownloadedModel:
    """The files of an imported version, in a temporary directory ``discard`` removes."""

    registered_name: str
    directory: Path
    model_path: Path
    filename: str
    validation_path: Path | None
    lineage: dict[str, Any] = field(default_factory=dict)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def parse_model_uri(text: str) -> MlflowModelRef:
    match = _MODEL_URI.match(text.strip())
    if match is None:
        raise BadRequestError(f"{text!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    return MlflowModelRef(match["name"], match["version"], match["alias"])


def verify_artifact_path(path: str) -> str:
    """``path`` if it is a plain relative path, else ``ModelRejectedError``."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or _UNSAFE_CHARS.search(path)
        or any(part in ("", ".", "..") for part in parts)
        or re.match(r"^[A-Za-z]:", path)
    ):
        raise ModelRejectedError(
            f"MLflow named an unsafe artifact path {path[:MAX_LINEAGE_TEXT_CHARS]!r}",
            "unsafe_artifact_path",
        )
    return path


def proxy_path_of(artifact_uri: str) -> str:
    """The path under the artifact proxy of an ``mlflow-artifacts:`` URI, verified."""
    scheme, _, rest = artifact_uri.partition(":")
    if scheme != "mlflow-artifacts" or not rest:
        raise ModelRejectedError(
            f"MLflow stores this model at {artifact_uri[:MAX_LINEAGE_TEXT_CHARS]!r}, which the "
            "controller cannot read: only servers that proxy artifacts (mlflow server "
            "--serve-artifacts, the default) are supported",
            "artifacts_not_proxied",
        )
    if rest.startswith("//"):  # mlflow-artifacts://host:port/path: the host is ours anyway
        rest = "/" + rest[2:].partition("/")[2]
    return verify_artifact_path(rest.lstrip("/").rstrip("/"))


def choose_model_file(files: list[MlflowFile], where: str) -> MlflowFile:
    """The one ``.onnx``/``.tflite`` file; ``model.*`` at the top wins among several."""
    candidates = [f for f in files if PurePosixPath(f.path).suffix.lower() in _EXTENSIONS]
    if not candidates:
        found = ", ".join(sorted(f.path for f in files)[:8]) or "no files"
        raise ModelRejectedError(
            f"{where} has no .onnx or .tflite file (found: {found[:MAX_LINEAGE_TEXT_CHARS]}); "
            "log the model in ONNX or TFLite (mlflow.onnx.log_model, or an .onnx artifact)",
            "no_model_file",
        )
    if len(candidates) == 1:
        return candidates[0]
    top = [f for f in candidates if "/" not in f.path and PurePosixPath(f.path).stem == "model"]
    if len(top) == 1:
        return top[0]
    names = ", ".join(sorted(f.path for f in candidates)[:8])
    raise ModelRejectedError(
        f"{where} has several model files ({names[:MAX_LINEAGE_TEXT_CHARS]}); "
        "register a directory with one, or name the one to ship model.onnx",
        "ambiguous_model_file",
    )


def choose_validation_file(files: list[MlflowFile]) -> MlflowFile | None:
    named = [f for f in files if f.name == VALIDATION_FILENAME]
    return min(named, key=lambda f: (f.path.count("/"), f.path)) if named else None


def download_mlflow_model(
    source: str,
    *,
    mlflow_uri: str,
    directory: Path,
    max_model_bytes: int,
    max_validation_bytes: int,
) -> DownloadedModel:
    """Resolve ``source`` on the MLflow server and download its model and validation set."""
    ref = parse_model_uri(source)
    with MlflowRest(mlflow_uri) as rest:
        version = _model_version(rest, ref)
        number = str(version.get("version", ""))
        if not number.isdigit():
            raise UpstreamError(f"MLflow answered {ref} with no version number")
        status = str(version.get("status") or "READY")
        if status != "READY":
            raise ModelRejectedError(f"MLflow's {ref} is {status[:32]}, not READY", "not_ready")
        where = f"models:/{ref.name}/{number}"
        located = rest.get_json(
            f"{API}/model-versions/get-download-uri", {"name": ref.name, "version": number}
        )
        artifact_uri = located.get("artifact_uri")
        if not isinstance(artifact_uri, str):
            raise UpstreamError(f"MLflow answered {where} with no artifact_uri")
        root, files = _files_of(rest, proxy_path_of(artifact_uri), where)
        model_file = choose_model_file(files, where)
        run_id = bounded_text(version.get("run_id"))
        run, experiment = _run_and_experiment(rest, run_id)
        validation_file, validation_root = choose_validation_file(files), root
        if validation_file is None and run is not None:
            validation_file, validation_root = _run_validation_file(rest, run)
        lineage = lineage_of(
            source_uri=where,
            alias=ref.alias,
            mlflow_uri=rest.display_url,
            version=version,
            artifact_uri=artifact_uri,
            model_file=model_file.path,
            validation_file=(
                f"{validation_root}/{validation_file.path}" if validation_file else None
            ),
            run=run,
            experiment=experiment,
        )
        work = Path(tempfile.mkdtemp(dir=directory, prefix="mlflow-"))
        try:
            model_path = work / f"model{PurePosixPath(model_file.path).suffix.lower()}"
            _download(rest, root, model_file, model_path, max_model_bytes, "model file")
            validation_path = None
            if validation_file is not None:
                validation_path = work / VALIDATION_FILENAME
                _download(
                    rest,
                    validation_root,
                    validation_file,
                    validation_path,
                    max_validation_bytes,
                    "validation set",
                )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return DownloadedModel(
        registered_name=bounded_text(version.get("name")) or ref.name,
        directory=work,
        model_path=model_path,
        filename=model_file.name,
        validation_path=validation_path,
        lineage=lineage,
    )


def import_mlflow_model(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    downloaded: DownloadedModel,
    allow_signature_change: bool,
    principal: Principal,
) -> ModelVersion:
    """Register a downloaded model as the next version of ``name`` (origin ``import``)."""
    return register_model_file(
        session,
        ctx,
        name=name,
        model_path=downloaded.model_path,
        filename=downloaded.filename,
        validation_path=downloaded.validation_path,
        allow_signature_change=allow_signature_change,
        principal=principal,
        origin="import",
        lineage={**downloaded.lineage, "imported_by": principal.name},
    )


_EXTENSIONS = set(FORMAT_EXTENSIONS.values())


def _model_version(rest: MlflowRest, ref: MlflowModelRef) -> dict[str, Any]:
    try:
        if ref.version is not None:
            answer = rest.get_json(
                f"{API}/model-versions/get", {"name": ref.name, "version": ref.version}
            )
        else:
            answer = rest.get_json(
                f"{API}/registered-models/alias", {"name": ref.name, "alias": ref.alias or ""}
            )
    except NotFoundError as exc:
        raise NotFoundError(f"MLflow at {rest.display_url} has no {ref}: {exc}") from exc
    version = answer.get("model_version")
    if not isinstance(version, dict):
        raise UpstreamError(f"MLflow answered {ref} with no model_version")
    return version


def _files_of(rest: MlflowRest, root: str, where: str) -> tuple[str, list[MlflowFile]]:
    """The directory to fetch from and its files: ``root``'s tree, or ``root`` itself when
    the version's source is a model file rather than a directory."""
    parent, _, name = root.rpartition("/")
    if PurePosixPath(name).suffix.lower() in _EXTENSIONS and parent:
        return parent, [MlflowFile(name)]
    files: list[MlflowFile] = []
    pending = [("", 0)]
    while pending:
        relative, depth = pending.pop()
        listing = rest.get_json(ARTIFACTS_ROUTE, {"path": f"{root}/{relative}".rstrip("/")})
        entries = listing.get("files", [])
        if not isinstance(entries, list):
            raise UpstreamError(f"MLflow listed the artifacts of {where} with no file list")
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name = verify_artifact_path(str(entry.get("path", "")))
            path = verify_artifact_path(f"{relative}/{name}" if relative else name)
            if entry.get("is_dir"):
                if depth + 1 < MAX_LISTING_DEPTH:
                    pending.append((path, depth + 1))
                continue
            size = entry.get("file_size")
            files.append(MlflowFile(path, size if isinstance(size, int) else None))
            if len(files) > MAX_LISTED_FILES:
                raise ModelRejectedError(
                    f"{where} holds over {MAX_LISTED_FILES} files", "too_many_files"
                )
    return root, files


def _run_validation_file(rest: MlflowRest, run: dict[str, Any]) -> tuple[MlflowFile | None, str]:
    """``validation.npz`` at the top of the run's artifacts, when the run logged one there."""
    uri = mapping_at(run, "info").get("artifact_uri")
    try:
        root = proxy_path_of(uri if isinstance(uri, str) else "")
    except ModelRejectedError as exc:
        if exc.kind != "artifacts_not_proxied":
            raise
        logger.info("run artifacts at %s are not proxied: no validation set", bounded_text(uri))
        return None, ""
    listing = rest.get_json(ARTIFACTS_ROUTE, {"path": root})
    for entry in listing.get("files", []) if isinstance(listing.get("files"), list) else []:
        if isinstance(entry, dict) and entry.get("path") == VALIDATION_FILENAME:
            size = entry.get("file_size")
            return MlflowFile(VALIDATION_FILENAME, size if isinstance(size, int) else None), root
    return None, root


def _run_and_experiment(
    rest: MlflowRest, run_id: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if not run_id:
        return None, None
    try:
        run = rest.get_json(f"{API}/runs/get", {"run_id": run_id}).get("run")
    except NotFoundError:
        logger.info("MLflow run %s is gone: the import records its id only", run_id)
        return None, None
    if not isinstance(run, dict):
        raise UpstreamError(f"MLflow answered run {run_id} with no run")
    experiment_id = bounded_text(mapping_at(run, "info").get("experiment_id"))
    if not experiment_id:
        return run, None
    try:
        return run, rest.get_json(f"{API}/experiments/get", {"experiment_id": experiment_id})
    except NotFoundError:
        return run, None


def _download(
    rest: MlflowRest, root: str, file: MlflowFile, destination: Path, limit: int, what: str
) -> None:
    # The listing's size is the server's word: refused early here, enforced while streaming.
    if file.size_bytes is not None and file.size_bytes > limit:
        raise UploadTooLargeError(
            f"the {what} {file.path!r} is {file.size_bytes} bytes, over its limit of {limit}"
        )
    path = verify_artifact_path(f"{root}/{file.path}")
    rest.download(f"{ARTIFACTS_ROUTE}/{path}", destination, max_bytes=limit, what=what)
