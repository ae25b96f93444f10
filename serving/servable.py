"""One loaded version of a model, as TF Serving holds it: a SavedModel in its own Graph and Session.

TF Serving loads each version into a session of its own (SavedModelBundle) and
frees it on unload. `tf.saved_model.load` keeps about 60 MB of every load for
the life of the process (TF 2.20; the function graphs it imports stay
referenced after the model is gone), so a server that swaps in a new version
every minute would grow without bound. Here a version is its graph and
session, which go away with the last call that uses them.
"""

import dataclasses
from typing import Dict

import numpy as np
import tensorflow as tf

SERVE_TAG = "serve"


class Signature:
  """One SignatureDef run in the version's session: `signature(**arrays)` -> {output: array}."""

  def __init__(self, session: tf.compat.v1.Session, signature_def):
    self._session = session  # held so the session lives as long as any caller holds this
    self.inputs: Dict[str, tf.TensorSpec] = {
        name: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.dtypes.as_dtype(info.dtype), name)
        for name, info in sorted(signature_def.inputs.items())}
    self.outputs = sorted(signature_def.outputs)
    self._run = session.make_callable([signature_def.outputs[k].name for k in self.outputs],
                                      feed_list=[signature_def.inputs[k].name for k in self.inputs])

  def __call__(self, **arrays: np.ndarray) -> Dict[str, np.ndarray]:
    return dict(zip(self.outputs, self._run(*(arrays[name] for name in self.inputs))))


@dataclasses.dataclass
class Servable:
  version: int
  signatures: Dict[str, Signature]      # name -> runnable signature
  signature_defs: Dict[str, object]     # name -> SignatureDef proto (for metadata)


def load(path: str, version: int = 0) -> Servable:
  """The SavedModel at `path` in a new graph and session, with TensorFlow's thread settings."""
  config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
      inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads())
  session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
  meta_graph = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], path)
  defs = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
  return Servable(version, {k: Signature(session, v) for k, v in defs.items()}, defs)
