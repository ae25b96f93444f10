"""Loading and versioning of SavedModels, as TF Serving's file-system source does.

Versions are numbered subdirectories of `base_path`. The newest loadable one
is served; a new version is loaded and warmed up before it takes traffic; a
version that fails to load never replaces a working one; old versions are
unloaded after the swap.
"""

import dataclasses
import logging
import os
import re
import threading
from typing import Dict, Optional

import tensorflow as tf

log = logging.getLogger("serving.model_manager")


@dataclasses.dataclass
class VersionState:
  state: str                      # START, LOADING, AVAILABLE, UNLOADING, END (TF Serving's names)
  error: str = ""                 # non-empty when the version failed to load


@dataclasses.dataclass
class Servable:
  version: int
  model: object                   # the loaded SavedModel
  signatures: Dict[str, object]   # name -> ConcreteFunction
  signature_defs: Dict[str, object]  # name -> tensorflow SignatureDef proto (for metadata)


def read_signature_defs(path: str):
  """The serve MetaGraph's SignatureDefs, as TF Serving reports them."""
  from tensorflow.core.protobuf import saved_model_pb2
  saved = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  graph = next(m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags)
  return {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}


class ModelNotFound(LookupError):
  pass


class ModelManager:

  def __init__(self, name: str, base_path: str, warmup=None):
    self.name = name
    self.base_path = base_path
    self._warmup = warmup  # callable(Servable) run before a version takes traffic
    self._lock = threading.Lock()
    self._servable: Optional[Servable] = None
    self.states: Dict[int, VersionState] = {}

  def on_disk(self):
    if not tf.io.gfile.isdir(self.base_path):
      return []
    return sorted(int(d.rstrip("/")) for d in tf.io.gfile.listdir(self.base_path)
                  if re.fullmatch(r"\d+/?", d))

  def poll(self) -> None:
    """Loads the newest version on disk if it is newer than the served one."""
    versions = [v for v in self.on_disk() if not self.states.get(v, VersionState("")).error]
    current = self._servable.version if self._servable else None
    if not versions or versions[-1] == current:
      return
    newest = versions[-1]
    if current is not None and newest < current:
      return
    self.states[newest] = VersionState("LOADING")
    try:
      servable = self._load(newest)
    except Exception as e:  # A broken version must not take down the served one.
      log.error("version %d of %s failed to load: %s", newest, self.name, e)
      self.states[newest] = VersionState("END", error=f"{type(e).__name__}: {e}")
      return
    with self._lock:
      old, self._servable = self._servable, servable
    self.states[newest] = VersionState("AVAILABLE")
    if old is not None:
      self.states[old.version] = VersionState("END")
    log.info("serving %s version %d", self.name, newest)

  def _load(self, version: int) -> Servable:
    path = os.path.join(self.base_path, str(version))
    model = tf.saved_model.load(path)
    servable = Servable(version, model, dict(model.signatures), read_signature_defs(path))
    if self._warmup is not None:
      self._warmup(servable)
    return servable

  def get(self, version: Optional[int] = None) -> Servable:
    servable = self._servable
    if servable is None:
      raise ModelNotFound(f"Servable not found for request: Latest({self.name})")
    if version is not None and version != servable.version:
      raise ModelNotFound(f"Servable not found for request: Specific({self.name}, {version})")
    return servable

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
