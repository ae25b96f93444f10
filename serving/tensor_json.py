"""TF Serving's REST JSON encoding of tensors (row "instances" and columnar "inputs").

Mirrors tensorflow_serving/util/json_tensor.cc: string tensors may carry
binary values as {"b64": "..."}; row format needs every instance to have the
same shape; errors raise BadRequest with TF Serving's wording where it has one.
"""

import base64
from typing import Dict, List

import numpy as np
import tensorflow as tf


class BadRequest(ValueError):
  pass


def _decode_strings(value):
  if isinstance(value, dict):
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
      raise BadRequest("JSON object: does not have named input (or it is not a b64 value)")
    try:
      return base64.b64decode(value["b64"], validate=True)
    except ValueError as e:
      raise BadRequest(f"Unable to base64 decode: {e}") from None
  if isinstance(value, list):
    return [_decode_strings(v) for v in value]
  if isinstance(value, str):
    return value.encode("utf-8")
  raise BadRequest(f"Expected a string or {{\"b64\": ...}}, got {type(value).__name__}: {value!r:.40}")


def to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
  """A JSON value -> a NumPy array that fits `spec`, or BadRequest."""
  if spec.dtype == tf.string:
    value = _decode_strings(value)
    array = np.array(value, dtype=object)
  else:
    try:
      array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError):
      raise BadRequest(f"Input {name!r} expects {spec.dtype.name} values; got {str(value)[:60]}") from None
  if array.dtype == object and spec.dtype != tf.string:
    raise BadRequest(f"Input {name!r} is ragged: all rows must have the same length")
  if spec.dtype == tf.string and any(not isinstance(v, bytes) for v in array.reshape(-1)):
    raise BadRequest(f"Input {name!r} is ragged: all rows must have the same length")
  if spec.shape.rank is not None and array.ndim != spec.shape.rank:
    raise BadRequest(f"Input {name!r} must have rank {spec.shape.rank} (shape {spec.shape}); "
                     f"got shape {list(array.shape)}")
  return array


def _specs(signature) -> Dict[str, tf.TensorSpec]:
  return dict(signature.structured_input_signature[1])


def parse_request(body, signature) -> (Dict[str, np.ndarray], bool):
  """A predict body -> ({input name: array}, row_format)."""
  if not isinstance(body, dict):
    raise BadRequest("Request body must be a JSON object")
  specs = _specs(signature)
  if ("instances" in body) == ("inputs" in body):
    raise BadRequest("Missing 'instances' or 'inputs' key (exactly one is required)")
  if "instances" in body:
    return _rows(body["instances"], specs), True
  return _columns(body["inputs"], specs), False


def _rows(instances, specs) -> Dict[str, np.ndarray]:
  if not isinstance(instances, list) or not instances:
    raise BadRequest("'instances' must be a non-empty list")
  if all(isinstance(i, dict) and "b64" not in i for i in instances):
    keys = set(instances[0])
    if any(set(i) != keys for i in instances):
      raise BadRequest("Failed to process element: every instance must name the same inputs")
    columns = {k: [i[k] for i in instances] for k in keys}
  elif len(specs) == 1:
    columns = {next(iter(specs)): instances}
  else:
    raise BadRequest(f"Instances must be objects naming the inputs {sorted(specs)}")
  return _columns(columns, specs)


def _columns(inputs, specs) -> Dict[str, np.ndarray]:
  if not isinstance(inputs, dict):
    if len(specs) != 1:
      raise BadRequest(f"'inputs' must be an object naming the inputs {sorted(specs)}")
    inputs = {next(iter(specs)): inputs}
  missing, extra = set(specs) - set(inputs), set(inputs) - set(specs)
  if missing or extra:
    raise BadRequest(f"input size does not match signature: {len(inputs)}!={len(specs)} "
                     f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(specs))}}}). "
                     f"Sent extra: {{{','.join(sorted(extra))}}}. "
                     f"Missing but required: {{{','.join(sorted(missing))}}}.")
  arrays = {name: to_array(inputs[name], specs[name], name) for name in specs}
  batch = {a.shape[0] if a.ndim else None for a in arrays.values()}
  if len(batch) > 1:
    raise BadRequest(f"Inputs disagree on the batch size: {sorted(map(str, batch))}")
  return arrays


def _jsonable(array: np.ndarray) -> List:
  if array.dtype == object:
    return np.vectorize(lambda b: b.decode("utf-8", errors="replace"), otypes=[object])(array).tolist()
  return array.tolist()


def format_response(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict:
  """Outputs -> {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
  values = {k: _jsonable(v) for k, v in sorted(outputs.items())}
  if not row_format:
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
  if len(values) == 1:
    return {"predictions": next(iter(values.values()))}
  batch = len(next(iter(values.values())))
  return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(batch)]}
