"""SASRec (Kang & McAuley, ICDM 2018): single-interest causal self-attention.

Follows the reference code (kang205/SASRec, pmixer/SASRec.pytorch): shared item
embedding scaled by sqrt(d) plus a learned positional embedding, dropout,
`num_blocks` blocks of [LayerNorm -> causal attention (+ residual on the normed
query) -> LayerNorm -> point-wise ReLU FFN (+ residual)], padding zeroed after
every block, a final LayerNorm. The score of item x after position t is
<h_t, E[x]> with the unscaled input table E.

Training data. The Beam build writes one example per prefix: target = event p,
history = the (up to) max_len events before it. SASRec trains every position of
a user's training sequence at once, so an example is unrolled into

    inputs    = history                     (left-padded to max_len)
    positives = history[1:] + [target]      (the next item at every position)

and every non-padding position is a training position. The example whose
target is a user's last training event is exactly the published per-user
training sample (the last max_len + 1 training events); build with
`--max_examples_per_user=1` to get one such example per user, so an epoch over
the train split is an epoch over users as in the paper. Valid and test
examples are unchanged by that flag.

Losses (`SASRecConfig.loss`):
  "bce"       the published one: at every position, the next item as the
              positive and one uniformly drawn negative item (redrawn when it
              is in the example's sequence), binary cross-entropy averaged
              over the non-padding positions.
  "in_batch"  softmax over the batch: the batch's non-padding positions (at
              most `in_batch_max_positions` of them, drawn at random, which
              bounds the logits matrix for long histories) are the queries,
              their next items the candidates: each position's positive is its
              own next item, the others' are its negatives (accidental hits
              removed; logQ correction if `use_logq`).

Interface shared with KuaiFormer: `model(batch)` -> [b, 1, d] (the last
position's output: k = 1 interest) and `item_embeddings()` -> [num_items, d].
"""

import dataclasses
import math

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfkf import features
from tfkf.catalog import Catalog
from tfkf.config import JsonConfig
from tfkf.losses import SmoothedInBatchSoftmax, floor_unseen, with_logq_correction

LOSSES = ("bce", "in_batch")


@dataclasses.dataclass(frozen=True)
class SASRecConfig(JsonConfig):
  """Defaults: the published Amazon Games hyper-parameters."""
  d_model: int = 50
  num_blocks: int = 2
  num_heads: int = 1
  max_len: int = 50
  dropout: float = 0.5
  loss: str = "bce"
  use_logq: bool = False               # in_batch only
  in_batch_max_positions: int = 2048   # in_batch only: candidates per batch
  adam_beta_2: float = 0.98
  negative_redraws: int = 2            # bce only: redraws of a negative found in the sequence
  event_features: tuple[str, ...] = ()  # item ids only; tfkf.evaluate reads this field

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"loss={self.loss!r}; known: {LOSSES}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if self.event_features:
      raise ValueError("SASRec reads item ids only: event_features must be empty")


PRESETS = {
    "paper": SASRecConfig(),
    "small": SASRecConfig(d_model=16, max_len=16, dropout=0.2),
}


class PointWiseFeedForward(tf.keras.layers.Layer):
  """x + Dropout(W2 ReLU(Dropout(W1 x))). [..., d] -> [..., d]."""

  def __init__(self, dropout: float, **kwargs):
    super().__init__(**kwargs)
    self.dropout = dropout

  def build(self, input_shape):
    d = input_shape[-1]
    self.inner = tf.keras.layers.Dense(d, name="inner")
    self.outer = tf.keras.layers.Dense(d, name="outer")
    self.drop = tf.keras.layers.Dropout(self.dropout)

  def call(self, x, training=False):
    h = tf.nn.relu(self.drop(self.inner(x), training=training))
    return x + self.drop(self.outer(h), training=training)

  def get_config(self):
    return {**super().get_config(), "dropout": self.dropout}


class SASRecBlock(tf.keras.layers.Layer):
  """One block; padding positions are zeroed on the way out. [b, T, d] -> [b, T, d]."""

  def __init__(self, num_heads: int, dropout: float, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.dropout = dropout

  def build(self, input_shape):
    d = input_shape[-1]
    self.attn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="attn_norm")
    self.attn = tf.keras.layers.MultiHeadAttention(self.num_heads, d // self.num_heads,
                                                   dropout=self.dropout, name="attn")
    self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="ffn_norm")
    self.ffn = PointWiseFeedForward(self.dropout, name="ffn")

  def call(self, x, valid, training=False):
    """valid [b, T] bool. The residual adds the normed query, as the reference code does."""
    t = tf.shape(x)[1]
    causal = tf.cast(tf.linalg.band_part(tf.ones([t, t]), -1, 0), tf.bool)
    mask = tf.logical_and(causal[None], valid[:, None, :])  # padding keys masked, as kang205 does
    q = self.attn_norm(x)
    x = q + self.attn(q, x, attention_mask=mask, training=training)
    x = self.ffn(self.ffn_norm(x), training=training)
    return x * tf.cast(valid, x.dtype)[:, :, None]

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


class SASRecEncoder(tf.keras.layers.Layer):
  """Item ids [b, T] (left-padded, T = max_len) -> per-position outputs [b, T, d]."""

  def __init__(self, config: SASRecConfig, num_items: int, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.num_items = num_items

  def build(self, input_shape):
    c = self.config
    self.item_embedding = tf.keras.layers.Embedding(
        self.num_items, c.d_model, embeddings_initializer="glorot_uniform", name="item_embedding")
    self.position_embedding = tf.keras.layers.Embedding(
        c.max_len, c.d_model, embeddings_initializer="glorot_uniform", name="position_embedding")
    self.drop = tf.keras.layers.Dropout(c.dropout)
    self.blocks = [SASRecBlock(c.num_heads, c.dropout, name=f"block_{i}")
                   for i in range(c.num_blocks)]
    self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")

  def call(self, items, training=False):
    valid = tf.not_equal(items, features.PAD_ID)
    # Positions index the slots of the left-padded window: the latest event is always max_len - 1.
    x = self.item_embedding(items) * math.sqrt(self.config.d_model)
    x += self.position_embedding(tf.range(self.config.max_len))[None]
    x = self.drop(x, training=training) * tf.cast(valid, x.dtype)[:, :, None]
    for block in self.blocks:
      x = block(x, valid, training=training)
    return self.final_norm(x)

  def get_config(self):
    return {**super().get_config(), "config": self.config.to_json(), "num_items": self.num_items}


def fit_length(ids: tf.Tensor, max_len: int) -> tf.Tensor:
  """[b, T] -> [b, max_len]: the latest max_len columns, left-padded with PAD_ID."""
  ids = tf.cast(ids[:, -max_len:], tf.int64)
  ids = tf.pad(ids, [[0, 0], [max_len - tf.shape(ids)[1], 0]], constant_values=features.PAD_ID)
  return tf.ensure_shape(ids, [None, max_len])


def next_items(history: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
  """The positive of every position: history [b, T] shifted left by one, then the target [b]."""
  return tf.concat([history[:, 1:], tf.cast(target, history.dtype)[:, None]], axis=1)


def sample_negatives(sequence: tf.Tensor, positions: int, num_items: int, redraws: int) -> tf.Tensor:
  """[b, positions] uniform real items; a draw found in its row of sequence [b, S] is redrawn."""
  shape = [tf.shape(sequence)[0], positions]
  draw = lambda: tf.random.uniform(shape, features.NUM_RESERVED_IDS, num_items, dtype=tf.int64)
  negatives = draw()
  for _ in range(redraws):
    in_row = tf.reduce_any(negatives[:, :, None] == sequence[:, None, :], axis=-1)
    negatives = tf.where(in_row, draw(), negatives)
  return negatives


class SASRec(tfrs.Model):
  """The SASRec retrieval model. `model(features)` gives one interest [b, 1, d]."""

  def __init__(self, config: SASRecConfig, catalog: Catalog, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.num_items = catalog.num_items
    self.encoder = SASRecEncoder(config, catalog.num_items, name="encoder")
    self.sampling_probability = tf.constant(floor_unseen(catalog.sampling_probability), tf.float32)
    self.retrieval = tfrs.tasks.Retrieval(loss=SmoothedInBatchSoftmax(0.0),
                                          remove_accidental_hits=True)

  def call(self, inputs, training=False):
    items = fit_length(inputs[features.HISTORY_ITEM], self.config.max_len)
    return self.encoder(items, training=training)[:, -1:]

  def item_embeddings(self) -> tf.Tensor:
    """[num_items, d] (rows 0 and 1 are reserved)."""
    return tf.convert_to_tensor(self.encoder.item_embedding.embeddings)

  def compute_loss(self, inputs, training=False):
    history = fit_length(inputs[features.HISTORY_ITEM], self.config.max_len)
    positives = next_items(history, inputs[features.TARGET_ITEM])
    valid = tf.not_equal(history, features.PAD_ID)
    outputs = self.encoder(history, training=training)
    if self.config.loss == "bce":
      return self.bce_loss(outputs, history, positives, valid)
    return self.in_batch_loss(outputs, positives, valid)

  def bce_loss(self, outputs, history, positives, valid):
    """Mean over non-padding positions of -log s(<h, e+>) - log s(-<h, e->)."""
    sequence = tf.concat([history, positives[:, -1:]], axis=1)
    negatives = sample_negatives(sequence, self.config.max_len, self.num_items,
                                 self.config.negative_redraws)
    table = self.item_embeddings()
    pos = tf.reduce_sum(outputs * tf.gather(table, positives), axis=-1)
    neg = tf.reduce_sum(outputs * tf.gather(table, negatives), axis=-1)
    per_position = tf.nn.softplus(-pos) + tf.nn.softplus(neg)  # -log s(pos) - log s(-neg)
    weight = tf.cast(valid, per_position.dtype)
    return tf.reduce_sum(per_position * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)

  def in_batch_loss(self, outputs, positives, valid):
    queries = tf.boolean_mask(outputs, valid)        # [m, d]
    ids = tf.boolean_mask(positives, valid)          # [m]
    keep = tf.random.shuffle(tf.range(tf.shape(ids)[0]))[:self.config.in_batch_max_positions]
    queries, ids = tf.gather(queries, keep), tf.gather(ids, keep)
    candidates = tf.gather(self.item_embeddings(), ids)
    if self.config.use_logq:  # KuaiFormer's correction (no temperature here: scores are logits)
      queries, candidates = with_logq_correction(
          queries, candidates, tf.gather(self.sampling_probability, ids), weight=1.0, temperature=1.0)
    return self.retrieval(queries, candidates, candidate_ids=ids, compute_metrics=False)

  def build_towers(self) -> "SASRec":
    """Creates every weight so checkpoints restore eagerly (same name as KuaiFormer's)."""
    self({features.HISTORY_ITEM: tf.zeros([1, self.config.max_len], tf.int64)})
    return self
