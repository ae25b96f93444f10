"""What the REST and gRPC surfaces share: resolve a model spec, check inputs, run a signature.

Errors are raised as NotFound (unknown model, version, label or signature) or
InvalidArgument (inputs that do not fit the signature, or that the graph
rejects); each API maps them to its own codes, as TF Serving does.
"""

import concurrent.futures
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from serving.batching import BatchScheduler
from serving.model_manager import ModelManager, ModelNotFound, Servable, VersionState

DEFAULT_SIGNATURE = "serving_default"
NotFound = ModelNotFound
Arrays = Dict[str, np.ndarray]


class InvalidArgument(ValueError):
  pass


def input_specs(signature) -> Dict[str, tf.TensorSpec]:
  return dict(signature.structured_input_signature[1])


def check_inputs(arrays: Arrays, signature) -> None:
  """Names, dtypes, ranks and batch sizes of `arrays` against the signature."""
  specs = input_specs(signature)
  missing, extra = set(specs) - set(arrays), set(arrays) - set(specs)
  if missing or extra:
    raise InvalidArgument(
        f"input size does not match signature: {len(arrays)}!={len(specs)} "
        f"len({{{','.join(sorted(arrays))}}}) != len({{{','.join(sorted(specs))}}}). "
        f"Sent extra: {{{','.join(sorted(extra))}}}. "
        f"Missing but required: {{{','.join(sorted(missing))}}}.")
  for name, array in arrays.items():
    spec = specs[name]
    if (array.dtype == object) != (spec.dtype == tf.string) or (
        array.dtype != object and not np.can_cast(array.dtype, spec.dtype.as_numpy_dtype, "same_kind")):
      raise InvalidArgument(f"Expects arg[{name}] to be {spec.dtype.name} but {array.dtype} is provided")
    if spec.shape.rank is not None and array.ndim != spec.shape.rank:
      raise InvalidArgument(f"Input {name!r} must have rank {spec.shape.rank} (shape {spec.shape}); "
                            f"got shape {list(array.shape)}")
  batch = {a.shape[0] if a.ndim else None for a in arrays.values()}
  if len(batch) > 1:
    raise InvalidArgument(f"Inputs disagree on the batch size: {sorted(map(str, batch))}")
  if batch == {0}:
    raise InvalidArgument("Batch size of the inputs is 0: send at least one instance")


def run_signature(signature, arrays: Arrays) -> Arrays:
  """Calls a ConcreteFunction on NumPy inputs; graph-side rejections become InvalidArgument."""
  specs = input_specs(signature)
  tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in arrays.items()}
  try:
    return {k: v.numpy() for k, v in signature(**tensors).items()}
  except tf.errors.InvalidArgumentError as e:
    raise InvalidArgument(graph_error_message(e.message)) from None


def graph_error_message(message: str) -> str:
  """The part of a TF runtime error a client can act on (an Assert's own message if any)."""
  assertion = re.search(r"assertion failed: \[(.*?)\]", message)
  if assertion:
    return assertion.group(1).strip()
  lines = [l.strip() for l in message.splitlines()
           if l.strip() and l.strip() != "Graph execution error:" and not l.startswith(("Detected at", "<stack"))]
  return lines[0] if lines else message


class Models:
  """The served models by name, with optional batching of concurrent predict calls."""

  def __init__(self, managers: List[ModelManager], batcher: Optional[BatchScheduler] = None,
               num_threads: int = 32):
    self.managers = {m.name: m for m in managers}
    self.batcher = batcher
    self._executor = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="predict")

  def manager(self, name: str) -> ModelManager:
    if name not in self.managers:
      raise NotFound(f"Servable not found for request: Latest({name})")
    return self.managers[name]

  def servable(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
    return self.manager(name).get(version, label)

  def signature(self, name: str, version: Optional[int], label: Optional[str],
                signature_name: str) -> Tuple[Servable, object]:
    """(servable, ConcreteFunction) a request names; NotFound if either is missing."""
    servable = self.servable(name, version, label)
    signature = servable.signatures.get(signature_name or DEFAULT_SIGNATURE)
    if signature is None:
      raise NotFound(f"Serving signature name: \"{signature_name}\" not found in signature def")
    return servable, signature

  def run(self, servable: Servable, signature, arrays: Arrays) -> concurrent.futures.Future:
    """Checks the inputs and starts the call: a future of {output name: array}."""
    check_inputs(arrays, signature)
    if self.batcher is None:
      return self._executor.submit(run_signature, signature, arrays)
    return self._batched(servable, signature, arrays)

  def run_here(self, servable: Servable, signature, arrays: Arrays) -> Arrays:
    """`run` for callers on their own worker thread (gRPC): no hop to another thread."""
    check_inputs(arrays, signature)
    if self.batcher is None:
      return run_signature(signature, arrays)
    return self._batched(servable, signature, arrays).result()

  def _batched(self, servable, signature, arrays) -> concurrent.futures.Future:
    key = (id(servable), id(signature), tuple((k, v.ndim) for k, v in sorted(arrays.items())))
    return self.batcher.submit(key, lambda a: run_signature(signature, a), arrays)

  def statuses(self, name: str, version: Optional[int] = None,
               label: Optional[str] = None) -> List[Tuple[int, VersionState]]:
    """(version, state) newest first; one version if asked for one (by number or label)."""
    manager = self.manager(name)
    if label is not None:
      version = manager.get(label=label).version
    states = manager.states.copy()  # atomic under the GIL; the poller may add versions meanwhile
    chosen = [(v, s) for v, s in sorted(states.items(), reverse=True) if version in (None, v)]
    if not chosen:
      raise NotFound(f"Could not find version {version} of model {name}")
    return chosen
