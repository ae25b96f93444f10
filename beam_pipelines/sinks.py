"""Whole files written through Beam's file sink, safe under retried or speculative bundles.

Every output file of the build job is one element (relative path, contents): the
job decides each file's bytes itself (sorted, so they are identical whatever the
runner), and `WriteFiles` hands them to `fileio.WriteToFiles`, which writes each
to a temporary file and renames it into place only once its bundle committed. A
retried bundle leaves at most an orphaned temporary file, never a duplicate or a
half-written output.
"""

import struct
import uuid
from typing import Iterable, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
import google_crc32c


def _masked_crc32c(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> bytes:
  """One record in TFRecord framing: length, its masked CRC-32C, data, its masked CRC-32C."""
  length = struct.pack("<Q", len(record))
  return length + _masked_crc32c(length) + record + _masked_crc32c(record)


class BytesFileSink(fileio.FileSink):
  """Element (path, bytes) -> one file holding exactly those bytes."""

  def open(self, fh):
    self._fh = fh

  def write(self, element: Tuple[str, bytes]):
    self._fh.write(element[1])

  def flush(self):
    self._fh.flush()


class TFRecordFileSink(BytesFileSink):
  """Element (path, [serialized records]) -> one TFRecord file holding them in order."""

  def write(self, element: Tuple[str, Iterable[bytes]]):
    for record in element[1]:
      self._fh.write(tfrecord_frame(record))


def _named_by_destination(window, pane, shard_index, total_shards, compression, destination):
  # One element per destination, so one temporary file each (fileio names them 0 of 1).
  if (shard_index, total_shards) != (0, 1):
    raise ValueError(f"{destination}: written as {total_shards} files, expected one")
  return destination


class WriteFiles(beam.PTransform):
  """(file name, contents) -> files in `directory`; emits each file's fileio.FileResult.

  `sink` is TFRecordFileSink (contents: records) or BytesFileSink (contents: bytes).
  At most one element per file name. Temporary files go under `temp_directory`
  (default: Beam's, inside `directory`); `DeleteTemporaries` removes it at the end.
  """

  def __init__(self, directory: str, sink=BytesFileSink, temp_directory: str = None):
    super().__init__()
    self.directory = directory
    self.sink = sink
    self.temp_directory = temp_directory

  def expand(self, files):
    sink = self.sink
    # A directory of its own: fileio looks for orphans by destination, and file names
    # repeat across directories (train/part-00000..., valid/part-00000...).
    temp = self.temp_directory and StaticValueProvider(
        str, f"{self.temp_directory}/{uuid.uuid4().hex}")
    return files | fileio.WriteToFiles(
        self.directory, file_naming=_named_by_destination, destination=lambda e: e[0],
        sink=lambda _: sink(), temp_directory=temp)


class DeleteTemporaries(beam.PTransform):
  """Deletes `temp_directory` once every FileResult of `written` exists (it holds at most
  the orphans of retried bundles). Emits nothing."""

  def __init__(self, temp_directory: str):
    super().__init__()
    self.temp_directory = temp_directory

  def expand(self, written):
    temp = self.temp_directory
    return (written.pipeline | "Once" >> beam.Create([None])
            | "Delete" >> beam.FlatMap(_delete_if_exists, temp, beam.pvalue.AsList(written)))


def _delete_if_exists(_, path, written):
  if FileSystems.exists(path):
    FileSystems.delete([path])
  return []
