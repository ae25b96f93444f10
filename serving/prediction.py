"""What the REST and gRPC surfaces share: resolve a model spec, check inputs, run a signature.

Errors are raised as serving.errors statuses with TF Serving's codes and texts
(NotFound: unknown model or version; InvalidArgument: unknown label, inputs that
do not fit the signature or that the graph rejects; FailedPrecondition: unknown
signature); each API maps them to its own codes, as TF Serving does.
"""

import concurrent.futures
import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.batching import BatchScheduler
from serving.errors import FailedPrecondition, InvalidArgument, NotFound
from serving.model_manager import ModelManager, VersionState
from serving.servable import Servable, Signature

DEFAULT_SIGNATURE = "serving_default"
UNKNOWN_MODEL = "<unknown>"  # the metrics' model_name for names the server does not serve
Arrays = Dict[str, np.ndarray]


def input_specs(signature: Signature) -> Dict[str, tf.TensorSpec]:
  return signature.inputs


def type_name(dtype) -> str:
  """TensorFlow core's name of a dtype ("float", "double", "string"), as TF Serving's errors say it."""
  enum = dtype if isinstance(dtype, int) else tf.as_dtype(dtype).as_datatype_enum
  return types_pb2.DataType.Name(enum).removeprefix("DT_").lower()


def _array_type_name(array: np.ndarray) -> str:
  return "string" if array.dtype == object else type_name(array.dtype)


def wrong_dtype(specs: Dict[str, tf.TensorSpec], name: str, provided: str) -> InvalidArgument:
  """TF's error for input `name` sent as `provided`: it numbers inputs in sorted order."""
  return InvalidArgument(f"Expects arg[{sorted(specs).index(name)}] to be "
                         f"{type_name(specs[name].dtype)} but {provided} is provided")


def check_input_names(names: Iterable[str], signature) -> None:
  """The names a request sends against the signature's inputs (TF Serving's texts)."""
  names, specs = set(names), input_specs(signature)
  if len(names) != len(specs):
    missing, extra = set(specs) - names, names - set(specs)
    raise InvalidArgument(
        f"input size does not match signature: {len(names)}!={len(specs)} "
        f"len({{{','.join(sorted(names))}}}) != len({{{','.join(sorted(specs))}}}). "
        f"Sent extra: {{{','.join(sorted(extra))}}}. "
        f"Missing but required: {{{','.join(sorted(missing))}}}.")
  for name in sorted(names):
    if name not in specs:
      raise InvalidArgument(f"input tensor alias not found in signature: {name}. "
                            f"Inputs expected to be in the set {{{','.join(sorted(specs))}}}.")


def check_inputs(arrays: Arrays, signature) -> None:
  """Names, dtypes, ranks and batch sizes of `arrays` against the signature (TF Serving's texts)."""
  check_input_names(arrays, signature)
  specs = input_specs(signature)
  for name in sorted(specs):
    array, spec = arrays[name], specs[name]
    if (array.dtype == object) != (spec.dtype == tf.string) or (
        array.dtype != object and not np.can_cast(array.dtype, spec.dtype.as_numpy_dtype, "same_kind")):
      raise wrong_dtype(specs, name, _array_type_name(array))
    if spec.shape.rank is not None and array.ndim != spec.shape.rank:
      raise InvalidArgument(f"Input {name!r} must have rank {spec.shape.rank} (shape {spec.shape}); "
                            f"got shape {list(array.shape)}")
  batch = {a.shape[0] if a.ndim else None for a in arrays.values()}
  if len(batch) > 1:
    raise InvalidArgument(f"Inputs disagree on the batch size: {sorted(map(str, batch))}")
  if batch == {0}:
    raise InvalidArgument("Batch size of the inputs is 0: send at least one instance")


def run_signature(signature, arrays: Arrays) -> Arrays:
  """Runs a signature on NumPy inputs; graph-side rejections become InvalidArgument."""
  specs = input_specs(signature)
  feeds = {k: v if specs[k].dtype == tf.string else np.asarray(v, specs[k].dtype.as_numpy_dtype)
           for k, v in arrays.items()}
  try:
    return signature(**feeds)
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

  def metric_label(self, name: str) -> str:
    """`name` if this server serves it: clients cannot add metric series by naming models."""
    return name if name in self.managers else UNKNOWN_MODEL

  def servable(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
    return self.manager(name).get(version, label)

  def signature(self, name: str, version: Optional[int], label: Optional[str],
                signature_name: str) -> Tuple[Servable, Signature]:
    """(servable, Signature) a request names (gRPC's texts; REST has its own)."""
    servable = self.servable(name, version, label)
    signature = servable.signatures.get(signature_name or DEFAULT_SIGNATURE)
    if signature is None:
      raise FailedPrecondition(f"Serving signature key \"{signature_name}\" not found.")
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
    if name not in self.managers:
      raise NotFound(f"Could not find any versions of model {name}")
    manager = self.managers[name]
    if label is not None:
      version = manager.get(label=label).version
    states = manager.states.copy()  # atomic under the GIL; the poller may add versions meanwhile
    chosen = [(v, s) for v, s in sorted(states.items(), reverse=True) if version in (None, v)]
    if not chosen:
      raise NotFound(f"Could not find version {version} of model {name}" if version is not None
                     else f"Could not find any versions of model {name}")
    return chosen
