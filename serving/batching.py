"""Server-side batching of concurrent predict calls (the server's --enable_batching).

Calls on the same servable and signature that arrive within `batch_timeout_s`
of each other run as one batch of up to `max_batch_size` rows. Inputs are
[batch, time] tensors whose padding is "" or 0 anywhere in a row (the tfkf
serving contract), so shorter rows are padded on the right to the widest row
of the batch, which leaves every row's result unchanged.
"""

import concurrent.futures
import queue
import threading
import time
from typing import Callable, Dict, List

import numpy as np

from serving import metrics

Arrays = Dict[str, np.ndarray]


def _pad_width(array: np.ndarray, width: int) -> np.ndarray:
  if array.ndim < 2 or array.shape[1] == width:
    return array
  pad = np.full((array.shape[0], width - array.shape[1]) + array.shape[2:],
                b"" if array.dtype == object else 0, dtype=array.dtype)
  return np.concatenate([array, pad], axis=1)


def merge(requests: List[Arrays]) -> Arrays:
  """Row-concatenates requests with the same input names, padding time to the widest."""
  merged = {}
  for name in requests[0]:
    width = max(r[name].shape[1] if r[name].ndim >= 2 else 0 for r in requests)
    merged[name] = np.concatenate([_pad_width(r[name], width) for r in requests], axis=0)
  return merged


def split(outputs: Arrays, sizes: List[int]) -> List[Arrays]:
  bounds = np.cumsum(sizes)[:-1]
  pieces = {k: np.split(v, bounds) for k, v in outputs.items()}
  return [{k: pieces[k][i] for k in outputs} for i in range(len(sizes))]


class _Task:
  def __init__(self, key, run: Callable[[Arrays], Arrays], arrays: Arrays):
    self.key, self.run, self.arrays = key, run, arrays
    self.rows = len(next(iter(arrays.values())))
    self.future = concurrent.futures.Future()


class BatchScheduler:
  """Queues calls and runs them in merged batches on one background thread."""

  def __init__(self, max_batch_size: int = 32, batch_timeout_s: float = 0.002):
    self.max_batch_size = max_batch_size
    self.batch_timeout_s = batch_timeout_s
    self._queue: "queue.Queue[_Task]" = queue.Queue()
    threading.Thread(target=self._loop, name="batcher", daemon=True).start()

  def submit(self, key, run: Callable[[Arrays], Arrays], arrays: Arrays) -> concurrent.futures.Future:
    """`run(arrays)` as part of a batch; calls with equal `key` may be merged."""
    task = _Task(key, run, arrays)
    self._queue.put(task)
    return task.future

  def _collect(self) -> List[_Task]:
    tasks = [self._queue.get()]
    deadline = time.monotonic() + self.batch_timeout_s
    while sum(t.rows for t in tasks) < self.max_batch_size:
      try:
        tasks.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
      except queue.Empty:
        break
    return tasks

  def _loop(self):
    while True:
      groups: Dict[object, List[_Task]] = {}
      for task in self._collect():
        groups.setdefault(task.key, []).append(task)
      for tasks in groups.values():
        self._run(tasks)

  def _run(self, tasks: List[_Task]):
    metrics.BATCH_SIZE.observe(sum(t.rows for t in tasks))
    try:
      outputs = tasks[0].run(merge([t.arrays for t in tasks]))
    except Exception as e:  # Every waiting caller hears of it; none waits forever.
      if len(tasks) > 1:
        for task in tasks:  # One bad request must not fail the others: run each alone.
          self._run([task])
      else:
        for task in tasks:
          task.future.set_exception(e)
      return
    for task, result in zip(tasks, split(outputs, [t.rows for t in tasks])):
      task.future.set_result(result)
