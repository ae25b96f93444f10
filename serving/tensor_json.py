"""TF Serving's REST JSON encoding of tensors (row "instances" and columnar "inputs").

Mirrors tensorflow_serving/util/json_tensor.cc, messages included: string
tensors may carry binary values as {"b64": "..."}; every value sits at the
depth of its input's rank; row format needs every instance to have the same
shape. Values are walked level by level, never recursively, and counted
against the server's limits before an array is built. JSON values quoted in
errors are cut to 100 characters (TF Serving quotes them whole).
"""

import base64
import binascii
from typing import Dict, List, Optional, Tuple

import numpy as np
import orjson
import tensorflow as tf

from serving.errors import InvalidArgument
from serving.limits import Limits
from serving.prediction import type_name

Arrays = Dict[str, np.ndarray]
_SNIPPET = 100
_MAX_INFERRED_RANK = 32  # for inputs of unknown rank


def snippet(value) -> str:
  """A JSON value as TF Serving quotes it in errors, cut short."""
  try:
    text = orjson.dumps(value).decode()
  except orjson.JSONEncodeError:  # nested deeper than orjson writes
    text = "[" * 8 + "..."
  return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _json_type(value) -> str:
  """rapidjson's type names, which TF Serving's messages use."""
  if value is None:
    return "Null"
  if isinstance(value, bool):
    return "True" if value else "False"
  return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _wrong_type(value, dtype: tf.DType) -> InvalidArgument:
  return InvalidArgument(f"JSON Value: {snippet(value)} Type: {_json_type(value)} "
                         f"is not of expected type: {type_name(dtype)}")


def signature_name(body) -> str:
  """The body's signature name ("" for the default), after the checks TF Serving makes first."""
  if not isinstance(body, dict):
    raise InvalidArgument(f"JSON Value: {snippet(body)} Is not object")
  name = body.get("signature_name", "")
  if not isinstance(name, str):
    raise InvalidArgument(f"JSON Value: {snippet(body)} not formatted correctly. "
                          "'signature_name' key must be a string value.")
  return name


def parse_request(body: dict, specs: Dict[str, tf.TensorSpec],
                  limits: Limits = Limits()) -> Tuple[Arrays, bool]:
  """A predict body -> ({input name: array}, row_format), within `limits`."""
  if "instances" not in body and "inputs" not in body:
    raise InvalidArgument("Missing 'inputs' or 'instances' key")
  if "instances" in body and "inputs" in body:
    raise InvalidArgument(f"JSON Value: {snippet(body)} Not formatted correctly expecting only one "
                          "of 'inputs' or 'instances' keys to exist ")
  if "instances" in body:
    return _rows(body["instances"], specs, limits), True
  return _columns(body["inputs"], specs, limits), False


# -- values -------------------------------------------------------------------------------
def _shape_and_leaves(value, rank: Optional[int], name: str, limits: Limits,
                      outer: Tuple[int, ...] = ()) -> Tuple[List[int], list]:
  """The shape of a nested list of `rank` levels and its leaves in row-major order."""
  if rank is None:  # infer it from the first element at each level
    rank, probe = 0, value
    while isinstance(probe, list) and probe and rank < _MAX_INFERRED_RANK:
      rank, probe = rank + 1, probe[0]
  shape, level = [], [value]
  for depth in range(rank):
    for v in level:
      if not isinstance(v, list):
        raise InvalidArgument(f"JSON Value: {snippet(v)} found at incorrect level: {depth} in "
                              f"the JSON DOM. Expected at level: {rank}")
    size = len(level[0]) if level else 0  # under an empty list every deeper dimension is 0
    for v in level:
      if len(v) != size:
        raise InvalidArgument(f"Encountered list at unexpected size: {len(v)} at level: {depth} "
                              f"expected size: {size}")
    shape.append(size)
    limits.check_values(name, list(outer) + shape)
    level = [x for v in level for x in v]
  for v in level:
    if isinstance(v, list):
      raise InvalidArgument(f"Encountered list at unexpected level: {rank} expected < {rank}")
  return shape, level


def _to_bytes(value) -> bytes:
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, dict):
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
      raise InvalidArgument(f"JSON Value: {snippet(value)} not formatted correctly for base64 data")
    try:
      return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
      raise InvalidArgument("Unable to base64 decode") from None
  raise _wrong_type(value, tf.string)


def _array(leaves: list, shape: List[int], dtype: tf.DType) -> np.ndarray:
  """Leaves of one JSON type family -> an array of `dtype` (TF Serving's type rules)."""
  if dtype == tf.string:
    array = np.empty(len(leaves), dtype=object)
    array[:] = [_to_bytes(v) for v in leaves]
    return array.reshape(shape)
  if dtype == tf.bool:
    wanted = lambda v: isinstance(v, bool)
  elif dtype.is_integer:
    wanted = lambda v: isinstance(v, int) and not isinstance(v, bool)
  elif dtype.is_floating:
    wanted = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  else:
    raise InvalidArgument(f"Inputs of type {type_name(dtype)} cannot be sent as JSON")
  for v in leaves:
    if not wanted(v):
      raise _wrong_type(v, dtype)
  try:
    return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
  except OverflowError:
    raise InvalidArgument(f"JSON Value: {snippet(max(leaves, key=abs))} is out of range for "
                          f"{type_name(dtype)}") from None


def _tensor(value, spec: tf.TensorSpec, name: str, limits: Limits) -> np.ndarray:
  shape, leaves = _shape_and_leaves(value, spec.shape.rank, name, limits)
  if shape:
    limits.check_rows(shape[0])
  return _array(leaves, shape, spec.dtype)


# -- the two formats ----------------------------------------------------------------------
def _columns(inputs, specs, limits) -> Arrays:
  if not isinstance(inputs, dict):
    if len(specs) != 1:
      raise InvalidArgument(f"JSON Value: {snippet(inputs)} Excepting 'inputs' to be an object "
                            f"naming the inputs {','.join(sorted(specs))}")
    inputs = {next(iter(specs)): inputs}
  for name in sorted(specs):  # extra keys are ignored, as in TF Serving
    if name not in inputs:
      raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
  return {name: _tensor(inputs[name], spec, name, limits) for name, spec in specs.items()}


def _rows(instances, specs, limits) -> Arrays:
  if not isinstance(instances, list):
    raise InvalidArgument(f"JSON Value: {snippet(instances)} Excepting 'instances' to be an list/array")
  if not instances:
    raise InvalidArgument(f"JSON Value: {snippet(instances)} No values in 'instances' array")
  limits.check_rows(len(instances))
  named = isinstance(instances[0], dict) and "b64" not in instances[0]
  if not named and len(specs) != 1:
    raise InvalidArgument("instances is a plain list, but expecting list of objects as multiple "
                          "input tensors required as per tensorinfo_map")
  columns = {name: [] for name in specs}
  for i, instance in enumerate(instances):
    if named != (isinstance(instance, dict) and "b64" not in instance):
      raise InvalidArgument(f"Expecting {'object' if named else 'value/list'} but got "
                            f"{'list' if named else 'object'} at item {i} of input list")
    if not named:
      columns[next(iter(specs))].append(instance)
      continue
    for key in instance:
      if key not in specs:
        raise InvalidArgument(f"Failed to process element: {i} key: {key} of 'instances' list. "
                              f"Error: JSON object: does not have named input: {key}")
    if len(instance) != len(specs):
      raise InvalidArgument(f"Failed to process element: {i} of 'instances' list. JSON object: "
                            f"{snippet(instance)} must only have keys: {','.join(sorted(specs))}")
    for key, value in instance.items():
      columns[key].append(value)
  return {name: _stack(columns[name], spec, name, limits) for name, spec in specs.items()}


def _stack(values: list, spec: tf.TensorSpec, name: str, limits: Limits) -> np.ndarray:
  """One input's values of every instance -> one [rows, ...] array; instances must agree in shape."""
  rank = None if spec.shape.rank is None else spec.shape.rank - 1
  shapes, leaves = [], []
  for i, value in enumerate(values):
    shape, flat = _shape_and_leaves(value, rank, name, limits, outer=(len(values),))
    if shapes and shape != shapes[0]:
      raise InvalidArgument(f"Expecting shape {_dims(shapes[0])} but got: {_dims(shape)}")
    shapes.append(shape)
    leaves.extend(flat)
  try:
    return _array(leaves, [len(values)] + shapes[0], spec.dtype)
  except InvalidArgument as e:
    raise InvalidArgument(f"Failed to process element of 'instances' list. Error: {e}") from None


def _dims(shape: List[int]) -> str:
  return "[" + ",".join(map(str, shape)) + "]"


# -- responses ----------------------------------------------------------------------------
def _jsonable(array: np.ndarray):
  """Strings become lists of str; numbers stay arrays (orjson writes them natively)."""
  if array.dtype != object:
    return array
  if array.ndim == 0:
    return array.item().decode("utf-8", errors="replace")
  return [_jsonable(a) for a in array] if array.ndim > 1 else [
      b.decode("utf-8", errors="replace") for b in array.tolist()]


def format_response(outputs: Arrays, row_format: bool) -> Dict:
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
