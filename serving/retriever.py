"""The exported serving module: raw history in, top-K item ids out.

Raw id -> index lookup (from the vocabulary asset), bucketization
(tfkf.features) and retrieval all run inside the graph, so any TF Serving
(or serving.server) can serve the SavedModel and clients send raw values.
"""

import math
from typing import Dict, Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfkf import features, scoring
from tfkf.model import KuaiFormer

NEG_INF = float("-inf")
# Requests may send more than max_len events (the model keeps the latest) but
# not without bound: every sent item is compared against the candidates.
DEFAULT_MAX_HISTORY_LENGTH = 1024


def scann_parameters(num_items: int, k: int) -> Dict[str, int]:
  """ScaNN settings from the catalog size: ~sqrt(N) leaves, exact re-scoring of 10k
  candidates, and 6% of the leaves searched but never fewer than hold ~4x the re-scored
  candidates (small catalogs search a larger share, still cheap). Measured on trained
  embeddings: recall@100 0.98 at 1M items vs 0.88 with 4k re-scored (docs/architecture.md)."""
  k = min(num_items, k)
  leaves = max(2, int(round(math.sqrt(num_items))))
  reorder = min(num_items, 10 * k)
  share = min(1.0, max(0.06, 4 * reorder / num_items))
  return {"num_leaves": leaves, "num_leaves_to_search": min(leaves, max(1, math.ceil(share * leaves))),
          "num_reordering_candidates": reorder, "k": k}


def vocabulary(item_vocab_file: str) -> tf.lookup.StaticHashTable:
  """Raw item id -> its line in the vocabulary file (= catalog position), -1 if absent."""
  return tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(item_vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                    tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
      default_value=-1)


def check_history_lengths(item_ids: tf.Tensor, max_history_length: int, used: str = "") -> None:
  """Rejects (InvalidArgument, a 400 in serving) empty and over-long raw histories [b, T]."""
  lengths = tf.reduce_sum(tf.cast(tf.not_equal(item_ids, features.PAD_TOKEN), tf.int32), axis=1)
  tf.debugging.assert_positive(
      lengths, message="every history needs at least one item id; got an empty history")
  tf.debugging.assert_less_equal(
      lengths, max_history_length,
      message=f"a history may hold at most {max_history_length} item ids{used}; send fewer")


class UserTowerModule(tf.Module):
  """Raw history -> the k interests [b, k, d]: vocabulary, bucketization and the user tower."""

  def __init__(self, model: KuaiFormer, vocab: tf.lookup.StaticHashTable,
               max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH):
    """vocab: vocabulary() of the Beam job's vocab/item.txt."""
    super().__init__()
    config = model.config
    self.user_tower = model.user_tower
    self.max_len = config.max_len
    self.event_features = config.event_features
    self.max_history_length = max_history_length
    self.vocab = vocab

  def encode(self, item_ids: tf.Tensor, raw_events: Optional[Dict[str, tf.Tensor]] = None):
    """Raw [b, T] ids ("" = padding, anywhere) -> model inputs, left-aligned to max_len."""
    check_history_lengths(item_ids, self.max_history_length,
                          f" (the newest {self.max_len} are used)")
    present = tf.not_equal(item_ids, features.PAD_TOKEN)
    align = lambda x, pad: features.left_align(tf.ragged.boolean_mask(x, present), self.max_len, pad)
    raw = align(item_ids, features.PAD_TOKEN)
    found = self.vocab.lookup(raw)
    index = tf.where(found >= 0, found + features.NUM_RESERVED_IDS, tf.cast(features.OOV_ID, tf.int64))
    index = tf.where(tf.equal(raw, features.PAD_TOKEN), tf.cast(features.PAD_ID, tf.int64), index)
    inputs = {features.HISTORY_ITEM: index}
    for name in self.event_features:
      if raw_events is None:  # Unknown: the bucket the model learnt for missing events.
        inputs[features.history_key(name)] = tf.zeros_like(index)
      else:
        encoded = features.EVENT_FEATURES[name].to_tf(raw_events[features.EVENT_RAW_INPUTS[name]])
        inputs[features.history_key(name)] = align(encoded, features.PAD_ID)
    return inputs

  def interests(self, item_ids: tf.Tensor, raw_events=None) -> tf.Tensor:
    return self.user_tower(self.encode(item_ids, raw_events))


class ItemIndex(tf.Module):
  """The catalog's item vectors and raw ids, searched by maxsim over a user's interests."""

  def __init__(self, vocab: tf.lookup.StaticHashTable, item_ids, item_embeddings,
               index: str = "brute_force", top_k: int = 100, exclude_history: bool = True,
               history_allowance: int = 0, max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH):
    """vocab: vocabulary() of the Beam job's vocab/item.txt. item_ids [n] raw ids by item
    index (rows 0, 1 reserved); the first rows follow the vocabulary file. item_embeddings
    [n, d] may cover more items than the vocabulary (retrievable, but unknown as history).
    A ScaNN index returns top_k + history_allowance candidates per interest, so that
    excluding the history still leaves top_k."""
    super().__init__()
    self.top_k = top_k
    self.exclude_history = exclude_history
    self.max_history_length = max_history_length
    self.vocab = vocab
    if len(item_ids) != int(item_embeddings.shape[0]):
      raise ValueError(f"{len(item_ids)} item ids but {item_embeddings.shape[0]} item embeddings")
    real = slice(features.NUM_RESERVED_IDS, None)
    # position p = item index p + 2. A variable, saved beside the weights: as a constant the
    # ids sit in the graph, which loading copies several times over (+1.5 GB at 1M items).
    self.item_ids = tf.Variable(item_ids[real], trainable=False, dtype=tf.string,
                                name="item_ids")
    embeddings = tf.convert_to_tensor(item_embeddings, tf.float32)[real]
    self.num_items, self.dim = int(embeddings.shape[0]), int(embeddings.shape[1])
    self.index_kind = index
    if index == "scann":
      params = scann_parameters(self.num_items, top_k + history_allowance)
      self.per_interest_k = params.pop("k")
      self.scann = tfrs.layers.factorized_top_k.ScaNN(k=self.per_interest_k, **params)
      self.scann.index(embeddings, tf.range(self.num_items, dtype=tf.int64))
    else:
      self.embeddings = tf.Variable(embeddings, trainable=False, name="item_embeddings")

  def search(self, interests: tf.Tensor, item_ids: tf.Tensor) -> Dict[str, tf.Tensor]:
    """interests [b, k, d] and the raw history [b, T] they came from -> top-K item ids,
    scores and the interest that found each."""
    # Catalog positions of every item sent, not only the latest max_len the model
    # sees: -1 for padding and unknown ids. These are excluded from the results.
    history = self.vocab.lookup(item_ids)
    if self.index_kind == "scann":
      scores, positions, interest = self._scann_candidates(interests, history)
    else:
      scores, positions, interest = self._exact_candidates(interests, history)
    top_scores, order = tf.math.top_k(scores, k=min(self.top_k, self.num_items))
    return {"item_ids": tf.gather(self.item_ids, tf.gather(positions, order, batch_dims=1)),
            "scores": top_scores,
            "interest": tf.gather(interest, order, batch_dims=1)}

  def _exact_candidates(self, interests, history):
    """maxsim over the whole catalog: [b, N] scores, positions and best interest."""
    scores, interest = scoring.maxsim(interests, self.embeddings)
    if self.exclude_history:
      scores = scoring.mask_items(scores, history, history >= 0)
    b = tf.shape(scores)[0]
    positions = tf.tile(tf.range(self.num_items, dtype=tf.int64)[None], [b, 1])
    return scores, positions, interest

  def _scann_candidates(self, interests, history):
    """Per-interest ANN search, merged: an item found by several interests keeps its best."""
    b, k = tf.shape(interests)[0], tf.shape(interests)[1]
    flat = tf.reshape(interests, [b * k, -1])
    scores, positions = self.scann(flat)
    # ScaNN returns fewer than per_interest_k when it re-scores fewer, and pads with
    # item 0 at a NaN score when the leaves searched hold fewer; NaN would rank first.
    scores = tf.where(tf.math.is_nan(scores), NEG_INF, scores)
    found = tf.shape(scores)[1]
    c = k * found
    scores, positions = tf.reshape(scores, [b, c]), tf.reshape(positions, [b, c])
    interest = tf.tile(tf.reshape(tf.tile(tf.range(k)[:, None], [1, found]), [1, c]), [b, 1])
    return merge_candidates(scores, positions, interest, history if self.exclude_history else None)


class Retriever(tf.Module):
  """Raw history in, top-K out: a UserTowerModule and an ItemIndex in one SavedModel."""

  def __init__(self, model: KuaiFormer, item_vocab_file: str, item_ids, index: str = "brute_force",
               top_k: int = 100, exclude_history: bool = True,
               max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH, item_embeddings=None):
    """item_embeddings [n, d] default to the model's item tower (see ItemIndex)."""
    super().__init__()
    vocab = vocabulary(item_vocab_file)  # one table for both: at 10M ids it is large
    self.tower = UserTowerModule(model, vocab, max_history_length)
    if item_embeddings is None:
      item_embeddings = model.item_embeddings()
    self.index = ItemIndex(vocab, item_ids, item_embeddings, index, top_k,
                           exclude_history, history_allowance=model.config.max_len,
                           max_history_length=max_history_length)


def merge_candidates(scores, positions, interest, history=None):
  """[b, c] candidates of several interests -> the same, with -inf for every repeat of an
  item but its best-scored one (ties: the earliest) and for items in `history` [b, T]."""
  take = lambda x, order: tf.gather(x, order, batch_dims=1)
  # Sorting best-first, then stably by item, puts each item's best first among its repeats.
  order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
  scores, positions, interest = take(scores, order), take(positions, order), take(interest, order)
  order = tf.argsort(positions, axis=1, stable=True)
  scores, positions, interest = take(scores, order), take(positions, order), take(interest, order)
  drop = tf.concat([tf.zeros_like(positions[:, :1], tf.bool),
                    tf.equal(positions[:, 1:], positions[:, :-1])], axis=1)
  if history is not None:
    drop = tf.logical_or(drop, tf.reduce_any(tf.equal(positions[:, :, None], history[:, None, :]), axis=2))
  return tf.where(drop, NEG_INF, scores), positions, interest

IDS_SPEC = tf.TensorSpec([None, None], tf.string, name="item_ids")
# The signatures are traced with autograph off: the towers branch on tensors with tf.cond only
# (Python control flow on a tensor would fail the trace, not change it), and converting their
# code was half of an export's first trace (2.3 s against 4.6-5.5 s on the test model).


def _event_specs(event_features):
  raw_names = [features.EVENT_RAW_INPUTS[n] for n in event_features]
  return raw_names, [tf.TensorSpec([None, None], tf.float32, name=n) for n in raw_names]


def serving_signatures(retriever: Retriever) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """serving_default (ids only), serving_with_events (ids + raw event features), user_embedding."""
  raw_names, event_specs = _event_specs(retriever.tower.event_features)
  # One trace of the tower per kind of input, shared by the signatures that take it: the
  # tower is most of an export's tracing and saving time.
  interests = tf.function(retriever.tower.interests, autograph=False)

  @tf.function(input_signature=[IDS_SPEC], autograph=False)
  def serving_default(item_ids):
    return retriever.index.search(interests(item_ids), item_ids)

  @tf.function(input_signature=[IDS_SPEC] + event_specs, autograph=False)
  def serving_with_events(item_ids, *raw):
    return retriever.index.search(interests(item_ids, dict(zip(raw_names, raw))), item_ids)

  @tf.function(input_signature=[IDS_SPEC], autograph=False)
  def user_embedding(item_ids):
    return {"interests": interests(item_ids)}

  return {"serving_default": serving_default.get_concrete_function(),
          "serving_with_events": serving_with_events.get_concrete_function(),
          "user_embedding": user_embedding.get_concrete_function()}


def user_tower_signatures(tower: UserTowerModule) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The user-tower servable: serving_default (ids) and serving_with_events -> {"interests"}."""
  raw_names, event_specs = _event_specs(tower.event_features)

  @tf.function(input_signature=[IDS_SPEC], autograph=False)
  def serving_default(item_ids):
    return {"interests": tower.interests(item_ids)}

  @tf.function(input_signature=[IDS_SPEC] + event_specs, autograph=False)
  def serving_with_events(item_ids, *raw):
    return {"interests": tower.interests(item_ids, dict(zip(raw_names, raw)))}

  return {"serving_default": serving_default.get_concrete_function(),
          "serving_with_events": serving_with_events.get_concrete_function()}


def item_index_signatures(index: ItemIndex) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The item-index servable: serving_default (the user-tower servable's interests and the raw
  history they came from, whose items are excluded) -> item_ids, scores, interest."""

  @tf.function(input_signature=[IDS_SPEC,
                                tf.TensorSpec([None, None, index.dim], tf.float32, name="interests")],
               autograph=False)
  def serving_default(item_ids, interests):
    check_history_lengths(item_ids, index.max_history_length)
    tf.debugging.assert_equal(
        tf.shape(interests)[0], tf.shape(item_ids)[0],
        message="interests and item_ids must hold the same number of users")
    return index.search(interests, item_ids)

  return {"serving_default": serving_default.get_concrete_function()}
