"""serving/tensor_json.py against TF Serving's JSON rules (util/json_tensor.cc), driven by hypothesis:
any JSON gives arrays or an InvalidArgument, never another error; well-formed tensors round-trip in
both formats; ragged, mistyped and over-limit inputs are refused, each for its own reason."""

import base64
import math

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import tensorflow as tf

from serving import tensor_json
from serving.errors import InvalidArgument
from serving.limits import Limits

IDS = {"item_ids": tf.TensorSpec([None, None], tf.string)}
EVENTS = {**IDS, "watch_time_s": tf.TensorSpec([None, None], tf.float32),
          "count": tf.TensorSpec([None, None], tf.int32)}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=5) | st.fixed_dictionaries({"b64": st.text(max_size=8)}),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["item_ids", "watch_time_s", "count", "b64", "x"]), inner, max_size=3),
    max_leaves=30)
bodies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "instances": json_values, "inputs": json_values, "signature_name": json_values}))


@settings(max_examples=600, deadline=None)
@given(bodies, st.sampled_from([IDS, EVENTS]))
def test_any_json_gives_arrays_or_invalid_argument(body, specs):
  try:
    tensor_json.signature_name(body)
    arrays, _ = tensor_json.parse_request(body, specs, Limits(max_request_rows=8, max_tensor_values=64))
  except InvalidArgument as e:
    assert str(e)
    return
  assert set(arrays) == set(specs)  # accepted: every input, with its dtype and rank
  for name, array in arrays.items():
    assert array.ndim == 2 and array.size <= 64 and array.shape[0] <= 8
    assert array.dtype == (object if specs[name].dtype == tf.string else specs[name].dtype.as_numpy_dtype)


tokens = st.text(st.characters(blacklist_categories=["Cs"]), max_size=6)


@st.composite
def tensors(draw):
  rows, width = draw(st.integers(1, 5)), draw(st.integers(0, 6))
  ids = np.array(draw(st.lists(st.lists(tokens, min_size=width, max_size=width), min_size=rows,
                               max_size=rows)), dtype=object).reshape(rows, width)
  times = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=rows * width,
                                 max_size=rows * width)), np.float32).reshape(rows, width)
  counts = np.array(draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=rows * width,
                                  max_size=rows * width)), np.int32).reshape(rows, width)
  return {"item_ids": ids, "watch_time_s": times, "count": counts}


def _as_json(arrays, b64: bool):
  ids = arrays["item_ids"].tolist()
  if b64:

    ids = [[{"b64": base64.b64encode(v.encode()).decode()} for v in row] for row in ids]
  return {"item_ids": ids, "watch_time_s": arrays["watch_time_s"].tolist(), "count": arrays["count"].tolist()}


@settings(max_examples=200, deadline=None)
@given(tensors(), st.booleans())
def test_well_formed_tensors_round_trip_in_both_formats(arrays, b64):
  expected = {**arrays, "item_ids": np.vectorize(lambda s: s.encode(), otypes=[object])(arrays["item_ids"])}
  columns = _as_json(arrays, b64)
  rows = [{k: v[i] for k, v in columns.items()} for i in range(len(arrays["count"]))]
  for body, row_format in (({"inputs": columns}, False), ({"instances": rows}, True)):
    parsed, is_rows = tensor_json.parse_request(body, EVENTS)
    assert is_rows == row_format
    for name, array in expected.items():
      assert parsed[name].dtype == array.dtype and parsed[name].shape == array.shape
      np.testing.assert_array_equal(parsed[name], array)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=5).filter(lambda w: len(set(w)) > 1),
       st.booleans())
def test_ragged_rows_are_refused(widths, row_format):
  histories = [["1"] * w for w in widths]
  body = {"instances": histories} if row_format else {"inputs": {"item_ids": histories}}
  with pytest.raises(InvalidArgument, match="Expecting shape|Encountered list at unexpected size"):
    tensor_json.parse_request(body, IDS)


wrong_for = {tf.string: st.integers() | st.floats(allow_nan=False) | st.booleans() | st.none(),
             tf.float32: st.text(max_size=3) | st.booleans() | st.none() | st.just({"b64": "YQ=="}),
             tf.int32: st.floats(allow_nan=False).filter(lambda f: not f.is_integer()) | st.booleans()
             | st.text(max_size=3)}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(EVENTS)), st.data())
def test_a_value_of_the_wrong_json_type_is_refused_by_type(name, data):
  bad = data.draw(wrong_for[EVENTS[name].dtype])
  good = {"item_ids": "1", "watch_time_s": 1.5, "count": 2}
  columns = {k: [[bad if k == name else v]] for k, v in good.items()}
  with pytest.raises(InvalidArgument, match="is not of expected type|found at incorrect level"):
    tensor_json.parse_request({"inputs": columns}, EVENTS)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 40), st.booleans())
def test_limits_refuse_exactly_the_requests_over_them(rows, width, row_format):
  limits = Limits(max_request_rows=20, max_tensor_values=300)
  histories = [["1"] * width for _ in range(rows)]
  body = {"instances": histories} if row_format else {"inputs": histories}
  over = rows > limits.max_request_rows or math.prod([rows, width]) > limits.max_tensor_values
  try:
    arrays, _ = tensor_json.parse_request(body, IDS, limits)
  except InvalidArgument as e:
    assert over and ("--max_request_rows" in str(e) or "--max_tensor_values" in str(e)), e
  else:
    assert not over and arrays["item_ids"].shape == (rows, width)
