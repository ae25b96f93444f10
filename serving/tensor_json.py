"""TF Serving's REST JSON encoding of tensors (row "instances" and columnar "inputs").

Mirrors tensorflow_serving/util/json_tensor.cc: string tensors may carry
binary values as {"b64": "..."}; row format needs every instance to have the
same shape; errors raise BadRequest with TF Serving's wording where it has one.
"""

import base64
from typing import Dict, Optional

import numpy as np
import orjson
import tensorflow as tf

from serving.prediction import InvalidArgument, input_specs


class BadRequest(InvalidArgument):
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


def to_array(value, spec: Optional[tf.TensorSpec], name: str) -> np.ndarray:
  """A JSON value -> a NumPy array of `spec`'s dtype (or a guessed one without spec)."""
  strings = spec.dtype == tf.string if spec is not None else _all_strings(value)
  try:
    if strings:
      array = np.array(_decode_strings(value), dtype=object)
    else:
      array = np.array(value, dtype=spec.dtype.as_numpy_dtype if spec is not None else None)
  except (TypeError, ValueError) as e:
    if "inhomogeneous" in str(e):
      raise BadRequest(f"Input {name!r} is ragged: all rows must have the same length") from None
    raise BadRequest(f"Input {name!r} expects {spec.dtype.name if spec else 'numeric'} values; "
                     f"got {str(value)[:60]}") from None
  if array.dtype == object and any(not isinstance(v, bytes) for v in array.reshape(-1)):
    raise BadRequest(f"Input {name!r} is ragged: all rows must have the same length")
  return array


def _all_strings(value) -> bool:
  if isinstance(value, list):
    return all(_all_strings(v) for v in value)
  return isinstance(value, (str, dict))


def parse_request(body, signature) -> (Dict[str, np.ndarray], bool):
  """A predict body -> ({input name: array}, row_format)."""
  if not isinstance(body, dict):
    raise BadRequest("Request body must be a JSON object")
  specs = input_specs(signature)
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
  return {name: to_array(value, specs.get(name), name) for name, value in inputs.items()}


def _jsonable(array: np.ndarray):
  """Strings become lists of str; numbers stay arrays (orjson writes them natively)."""
  if array.dtype != object:
    return array
  if array.ndim == 0:
    return array.item().decode("utf-8", errors="replace")
  return [_jsonable(a) for a in array] if array.ndim > 1 else [
      b.decode("utf-8", errors="replace") for b in array.tolist()]


def format_response(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict:
  """Outputs -> {"predictions": [...]} (row) or {"outputs": ...} (columnar), for `dumps`."""
  values = {k: _jsonable(v) for k, v in sorted(outputs.items())}
  if not row_format:
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
  if len(values) == 1:
    return {"predictions": next(iter(values.values()))}
  batch = len(next(iter(values.values())))
  return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(batch)]}


def dumps(value) -> bytes:
  """JSON bytes of a response; NumPy arrays and scalars written natively (5x json.dumps)."""
  return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
