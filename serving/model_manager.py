"""Loading and versioning of SavedModels, as TF Serving's file-system source does.

Each model is described by TF Serving's own `ModelConfig` proto (name,
base_path, model_version_policy, version_labels). Versions are numbered
subdirectories of base_path; the policy picks the ones to serve (default: the
newest). A new version is loaded and warmed up before it takes traffic; a
version that fails to load never replaces a working one; versions the policy
no longer wants are unloaded after the swap.
"""

import dataclasses
import logging
import os
import re
import threading
from typing import Dict, List, Optional

import tensorflow as tf
from tensorflow_serving.config import model_server_config_pb2

from serving import metrics, servable as servable_lib
from serving.errors import InvalidArgument, NotFound
from serving.servable import Servable

log = logging.getLogger("serving.model_manager")
ModelConfig = model_server_config_pb2.ModelConfig


@dataclasses.dataclass
class VersionState:
  state: str                      # START, LOADING, AVAILABLE, UNLOADING, END (TF Serving's names)
  error: str = ""                 # non-empty when the version failed to load



def wanted_versions(config: ModelConfig, candidates: List[int]) -> List[int]:
  """The versions `config.model_version_policy` serves out of `candidates` (sorted)."""
  policy = config.model_version_policy
  kind = policy.WhichOneof("policy_choice") or "latest"
  if kind == "all":
    return list(candidates)
  if kind == "specific":
    return [v for v in candidates if v in set(policy.specific.versions)]
  return candidates[-max(1, policy.latest.num_versions):] if candidates else []


class ModelManager:
  """Serves the versions of one model; `poll()` brings them in line with the disk."""

  def __init__(self, config: ModelConfig, warmup=None):
    self.config = config
    self.name = config.name
    self.base_path = config.base_path
    self._warmup = warmup  # callable(Servable) run before a version takes traffic
    self._servables: Dict[int, Servable] = {}  # replaced whole, never mutated: readers need no lock
    self._poll_lock = threading.Lock()
    self.states: Dict[int, VersionState] = {}

  def on_disk(self) -> List[int]:
    if not tf.io.gfile.isdir(self.base_path):
      return []
    return sorted(int(d.rstrip("/")) for d in tf.io.gfile.listdir(self.base_path)
                  if re.fullmatch(r"\d+/?", d))

  def _loadable(self) -> List[int]:
    return [v for v in self.on_disk() if not self.states.get(v, VersionState("")).error]

  def poll(self) -> None:
    """Loads the versions the policy wants, then unloads the ones it no longer wants."""
    with self._poll_lock:
      while True:  # Each failed load shrinks the loadable set, so this ends.
        wanted = wanted_versions(self.config, self._loadable())
        missing = [v for v in wanted if v not in self._servables]
        if not missing:
          break
        for version in missing:
          self._load(version)
      if not wanted:  # Nothing loadable on disk: keep what serves rather than go dark.
        return
      for version in set(self._servables) - set(wanted):
        self.states[version] = VersionState("UNLOADING")
        self._set_servables({v: s for v, s in self._servables.items() if v != version})
        self.states[version] = VersionState("END")
        log.info("unloaded %s version %d", self.name, version)

  def _set_servables(self, servables: Dict[int, Servable]) -> None:
    self._servables = servables
    metrics.SERVED_VERSION.labels(self.name).set(max(servables, default=0))

  def _load(self, version: int) -> None:
    self.states[version] = VersionState("LOADING")
    path = os.path.join(self.base_path, str(version))
    try:
      servable = servable_lib.load(path, version)
      if self._warmup is not None:
        self._warmup(servable, path)
    except Exception as e:  # A broken version must not take down the served one.
      log.error("version %d of %s failed to load: %s", version, self.name, e)
      self.states[version] = VersionState("END", error=f"{type(e).__name__}: {e}")
      return
    self._set_servables({**self._servables, version: servable})
    self.states[version] = VersionState("AVAILABLE")
    log.info("serving %s version %d", self.name, version)

  @property
  def versions(self) -> List[int]:
    return sorted(self._servables)

  def get(self, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
    """The servable for a request: newest loaded, a specific version, or a label's."""
    servables = self._servables
    if label is not None:
      if label not in self.config.version_labels:
        raise InvalidArgument(f"Unrecognized servable version label: {label}")
      version = self.config.version_labels[label]
    if version is None:
      if not servables:
        raise NotFound(f"Servable not found for request: Latest({self.name})")
      return servables[max(servables)]
    if version not in servables:
      raise NotFound(f"Servable not found for request: Specific({self.name}, {version})")
    return servables[version]

  def start_polling(self, interval_s: float) -> threading.Thread:
    stop = threading.Event()

    def loop():
      while not stop.wait(interval_s):
        try:
          self.poll()
        except Exception:  # Keep polling whatever one scan hit.
          log.exception("polling %s failed", self.base_path)

    thread = threading.Thread(target=loop, name=f"poll-{self.name}", daemon=True)
    thread.stop = stop
    thread.start()
    return thread
