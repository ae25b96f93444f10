"""KuaiFormer: the user tower, the candidate tower and the TFRS retrieval task."""

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfkf import features
from tfkf import layers
from tfkf.catalog import Catalog
from tfkf.config import KuaiFormerConfig
from tfkf.losses import (SmoothedInBatchSoftmax, floor_unseen, mixed_sampling_probability,
                         same_history_mask, uniform_items, uniform_negative_bce,
                         view_contrastive_loss, with_logq_correction, with_uniform_negatives)


@tf.keras.utils.register_keras_serializable(package="tfkf")
class UserTower(tf.keras.layers.Layer):
  """History features -> k interests [b, k, d_model] (L2-normalised unless configured not to).

  Inputs: `history_item` [b, T] item ids (any T; the latest max_len are kept,
  left-padded) and `history_<event feature>` [b, T] bucket ids.
  """

  def __init__(self, config: KuaiFormerConfig, token_embedding: layers.TokenEmbedding,
               side_features: layers.ItemSideFeatures, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.token_embedding = token_embedding
    self.side_features = side_features

  def build(self, input_shape):
    c = self.config
    self.compressor = (layers.GroupCompressor(c.compression_windows, c.num_heads, c.ffn_dim,
                                              c.dropout, name="compressor")
                       if c.compression_windows else None)
    self.query_tokens = layers.QueryTokens(c.num_query_tokens, name="query_tokens")
    self.blocks = [layers.TransformerBlock(c.num_heads, c.ffn_dim, c.dropout, name=f"block_{i}")
                   for i in range(c.num_layers)]
    self.final_norm = layers.RMSNorm(name="final_norm")
    self.embedding_dropout = tf.keras.layers.Dropout(c.embedding_dropout)
    self.event_dropout = tf.keras.layers.Dropout(c.event_dropout, noise_shape=(None, None, 1))
    self.event_substitution = layers.EventSubstitution(
        c.event_substitution, self.side_features.catalog_size, c.event_substitution_source)

  def events(self, inputs, training=False):
    """(tokens [b, S, d], valid [b, S]): the compressed windows, then the latest events as they are.

    When no history of the batch reaches back past the latest events, the windows are
    all padding: they are masked tokens then, and the old columns are neither embedded
    nor compressed (same interests: RoPE is relative and masked keys weigh nothing).
    S is len(windows) + the latest events' width (narrower when the input is).
    """
    c = self.config
    if self.compressor is None:
      return self._embed(inputs, c.max_len, training)
    tail = c.num_latest_events
    if not self.compressor.built:  # its weights are created outside the tf.cond below
      return self._compressed(inputs, training)
    items = inputs[features.HISTORY_ITEM][:, -c.max_len:]
    reaches_back = tf.reduce_any(tf.not_equal(items[:, :-tail], features.PAD_ID))
    return tf.cond(reaches_back, lambda: self._compressed(inputs, training),
                   lambda: self._latest_only(inputs, tail, training))

  def _embed(self, inputs, width, training):
    """(tokens [b, width, d], valid [b, width]) of the latest `width` events, left-padded."""
    items = _fit_length(inputs[features.HISTORY_ITEM], width)
    seen = self.event_substitution(items, training=training)
    per_event = {"item": seen, **self.side_features(seen)}
    for name in self.config.event_features:
      per_event[name] = _fit_length(inputs[features.history_key(name)], width)
    tokens = self.token_embedding(per_event, training=training)
    tokens = self.event_dropout(self.embedding_dropout(tokens, training=training), training=training)
    return tokens, tf.not_equal(items, features.PAD_ID)

  def _compressed(self, inputs, training):
    tokens, valid = self._embed(inputs, self.config.max_len, training)
    split = sum(self.config.compression_windows)
    pooled, pooled_valid = self.compressor(tokens[:, :split], valid[:, :split], training=training)
    return tf.concat([pooled, tokens[:, split:]], axis=1), tf.concat([pooled_valid, valid[:, split:]], 1)

  def _latest_only(self, inputs, tail, training):
    width = tf.minimum(tf.shape(inputs[features.HISTORY_ITEM])[1], tail)
    tokens, valid = self._embed(inputs, width, training)
    b, windows = tf.shape(tokens)[0], len(self.config.compression_windows)
    masked = tf.zeros([b, windows, self.config.d_model], tokens.dtype)
    return (tf.concat([masked, tokens], axis=1),
            tf.concat([tf.zeros([b, windows], tf.bool), valid], axis=1))

  def sequence(self, inputs, training=False):
    """The causal transformer's input: (tokens [b, S + k, d], valid [b, S + k])."""
    return self.query_tokens(*self.events(inputs, training=training))

  def call(self, inputs, training=False):
    x, valid = self.sequence(inputs, training=training)
    attention_mask = layers.causal_mask(valid)
    for block in self.blocks:
      x = block(x, attention_mask=attention_mask, training=training)
    return self._normalized(self.final_norm(x[:, -self.config.num_query_tokens:]))

  def interests_at(self, inputs, cuts, training=False):
    """The k interests after each of C cut points, in one pass: [b, C, k, d].

    cuts [C]: positions in the event tokens of `events` (compressed windows
    first). The interests at cut c are those `call` gives for the history cut
    there (without compression; with it, the windows stay where they are).
    """
    return self.interests_after(*self.events(inputs, training=training), cuts, training=training)

  def interests_after(self, tokens, valid, cuts, training=False):
    """`interests_at` on the event tokens and valid flags of `events`: [b, C, k, d]."""
    x, positions, attention_mask = self.query_tokens.at_cut_points(tokens, valid, cuts)
    for block in self.blocks:
      x = block(x, attention_mask=attention_mask, positions=positions, training=training)
    queries = self.final_norm(x[:, tf.shape(tokens)[1]:])                   # [b, C*k, d]
    shape = [tf.shape(x)[0], tf.shape(cuts)[0], self.config.num_query_tokens, x.shape[-1]]
    return self._normalized(tf.reshape(queries, shape))

  def _normalized(self, interests):
    if not self.config.normalize_embeddings:
      return interests
    return tf.math.l2_normalize(interests, axis=-1)

  def get_config(self):
    return {**super().get_config(), "config": self.config.to_json(),
            "token_embedding": layers.serialize_unbuilt(self.token_embedding),
            "side_features": layers.serialize_unbuilt(self.side_features)}

  @classmethod
  def from_config(cls, config):
    """A tower with its own copies of the shared layers (see CandidateTower.from_config)."""
    config = dict(config)
    return cls(KuaiFormerConfig.from_json(config.pop("config")),
               tf.keras.layers.deserialize(config.pop("token_embedding")),
               tf.keras.layers.deserialize(config.pop("side_features")), **config)


def _fit_length(ids: tf.Tensor, width) -> tf.Tensor:
  """[b, T] -> [b, width]: keep the latest `width` columns, left-pad with PAD_ID."""
  ids = tf.cast(ids[:, -width:], tf.int64)
  missing = width - tf.shape(ids)[1]
  ids = tf.pad(ids, [[0, 0], [missing, 0]], constant_values=features.PAD_ID)
  return tf.ensure_shape(ids, [None, width if isinstance(width, int) else None])


class KuaiFormer(tfrs.Model):
  """The retrieval model. `model(features)` gives the k interests [b, k, d]."""

  def __init__(self, config: KuaiFormerConfig, catalog: Catalog, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    vocab = {**catalog.vocab_sizes, "item": catalog.table_rows}
    self.side_features = layers.ItemSideFeatures(
        catalog.table_rows, _side_tables(catalog), catalog.num_items, name="item_side_features")
    self.token_embedding = layers.TokenEmbedding(
        config.d_model, config.feature_dim, vocab, config.item_features, config.event_features,
        config.event_feature_dropout, name="token_embedding")
    self.user_tower = UserTower(config, self.token_embedding, self.side_features, name="user_tower")
    self.candidate_tower = layers.CandidateTower(
        self.token_embedding, self.side_features, config.tie_item_embeddings,
        normalize=config.normalize_embeddings, use_bias=config.candidate_bias,
        name="candidate_tower")
    self.sampling_probability = _sampling_probability(catalog)
    self.task = tfrs.tasks.Retrieval(
        loss=SmoothedInBatchSoftmax(config.label_smoothing),
        batch_metrics=[tf.keras.metrics.CategoricalAccuracy(name="in_batch_accuracy")],
        temperature=config.temperature,
        remove_accidental_hits=config.remove_accidental_hits)

  def call(self, inputs, training=False):
    return self.user_tower(inputs, training=training)

  def compute_loss(self, inputs, training=False):
    # Validation scores the example's own target in both modes: that is the held-out one.
    score_mask, contrastive = None, 0.0
    if self.config.training_targets == "every_event" and training:
      interests, targets, rows = self._every_event_targets(inputs, training)
      if self.config.mask_same_history:
        score_mask = same_history_mask(rows)
      if self.config.contrastive_weight:
        second_view, _, _ = self._every_event_targets(inputs, training)
        contrastive = self.config.contrastive_weight * view_contrastive_loss(
            interests, second_view, rows, self.config.contrastive_temperature)
    else:
      interests = self.user_tower(inputs, training=training)
      targets = tf.cast(inputs[features.TARGET_ITEM], tf.int64)
    mixed = self.config.mixed_negatives if training else 0
    num_items = self.side_features.catalog_size
    candidate_ids = with_uniform_negatives(targets, num_items, mixed) if mixed else targets
    if score_mask is not None and mixed:
      score_mask = tf.pad(score_mask, [[0, 0], [0, mixed]], constant_values=True)
    candidates = self.candidate_tower(candidate_ids)
    auxiliary = (self._uniform_negative_bce(interests, candidates[:tf.shape(targets)[0]])
                 if training and self.config.uniform_bce_weight else 0.0)
    if self.config.use_logq:
      probability = tf.gather(self.sampling_probability, candidate_ids)
      if mixed:
        probability = mixed_sampling_probability(probability, tf.shape(targets)[0], mixed,
                                                 num_items - features.NUM_RESERVED_IDS)
      interests, candidates = with_logq_correction(interests, candidates, probability,
                                                   self.config.logq_weight, self.config.temperature)
    # tfrs Retrieval: candidate i is query i's positive, the extra candidates negatives for all.
    return (self.task(interests, candidates, candidate_ids=candidate_ids, score_mask=score_mask)
            + self.config.uniform_bce_weight * auxiliary + contrastive)

  def _uniform_negative_bce(self, interests, positives):
    """losses.uniform_negative_bce against uniform_bce_negatives uniform items per target
    (rarely the target itself or a history item: SASRec redraws those, at 23k+ items they
    are noise)."""
    n, m = tf.shape(positives)[0], self.config.uniform_bce_negatives
    negatives = self.candidate_tower(uniform_items(n * m, self.side_features.catalog_size))
    negatives = tf.reshape(negatives, [n, m, negatives.shape[-1]])
    return uniform_negative_bce(interests, positives, negatives,
                                self.config.uniform_bce_temperature or self.config.temperature)

  def _every_event_targets(self, inputs, training):
    """(interests [n, k, d], next items [n], batch row of each [n]) after each real one of
    the latest events, and with `first_event_targets` before a whole history's first.

    On a --layout=chunks build (docs/data_format.md) the examples of a user cover each
    of its training targets once. Out-of-vocabulary items are no targets, nor those
    before an example's last `num_targets` (when given). Cut points go only where some
    history of the batch has an event (or its first event follows).
    """
    c = self.config
    first = int(c.first_event_targets)
    history = inputs[features.HISTORY_ITEM]
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(history, features.PAD_ID), tf.int32), 1)
    tokens, valid = self.user_tower.events(inputs, training=training)
    width = tf.shape(tokens)[1]
    tail = c.num_latest_events
    cuts_wanted = tf.maximum(tf.reduce_min([tf.reduce_max(lengths) + first, tail + first, width]), 1)
    interests = self.user_tower.interests_after(tokens, valid, tf.range(width - cuts_wanted, width),
                                                training=training)
    items = _fit_length(history, tail + first)[:, tail + first - cuts_wanted:]  # [b, cuts]
    targets = tf.concat([items[:, 1:], tf.cast(inputs[features.TARGET_ITEM], tf.int64)[:, None]], 1)
    in_tail = tf.range(cuts_wanted) >= cuts_wanted - tail                  # [cuts]
    real = tf.logical_and(tf.not_equal(items, features.PAD_ID), in_tail[None])
    if first:
      # The padding just before a history's first event is an empty history - if nothing
      # was cut off before it (fewer than max_len events): the cut of the user's first event.
      whole = lengths < c.max_len
      before_first = tf.logical_and(tf.equal(items, features.PAD_ID),
                                    tf.not_equal(targets, features.PAD_ID))
      real = tf.logical_or(real, tf.logical_and(before_first, whole[:, None]))
    real = tf.logical_and(real, tf.not_equal(targets, features.OOV_ID))
    if features.NUM_TARGETS in inputs:
      from_end = tf.range(cuts_wanted - 1, -1, -1)                           # [cuts]
      wanted = tf.cast(inputs[features.NUM_TARGETS], tf.int32)[:, None]
      real = tf.logical_and(real, from_end[None, :] < wanted)
    rows = tf.tile(tf.range(tf.shape(items)[0])[:, None], [1, cuts_wanted])
    return (tf.boolean_mask(interests, real), tf.boolean_mask(targets, real),
            tf.boolean_mask(rows, real))

  def build_towers(self) -> "KuaiFormer":
    """Creates every weight (on a dummy batch) so checkpoints restore eagerly."""
    n = self.config.max_len
    dummy = {features.HISTORY_ITEM: tf.zeros([1, n], tf.int64)}
    dummy.update({features.history_key(f): tf.zeros([1, n], tf.int64)
                  for f in self.config.event_features})
    self(dummy)  # through the model, so Keras marks it built (BackupAndRestore needs that)
    self.candidate_tower(tf.zeros([1], tf.int64))
    return self

  def item_embeddings(self, batch_size: int = 4096) -> tf.Tensor:
    """Embeddings of every catalog row [num_items, d] (rows 0 and 1 are reserved; spare
    table rows are not items)."""
    size = self.side_features.catalog_size
    ids = tf.range(size, dtype=tf.int64)
    return tf.concat([self.candidate_tower(ids[i:i + batch_size])
                      for i in range(0, size, batch_size)], axis=0)

  def use_catalog(self, catalog: Catalog) -> None:
    """Continues on `catalog`, grown within the item tables' rows (its new ids take spare
    rows, which hold their initial values): side features, sampling probabilities and item
    count in place, no weight rebuilt. The training step is traced again: it holds the
    catalog's size and probabilities as constants."""
    if catalog.table_rows != self.side_features.num_items:
      raise ValueError(f"a catalog of {catalog.table_rows} table rows for a model of "
                       f"{self.side_features.num_items}")
    self.side_features.set_tables(_side_tables(catalog), catalog.num_items)
    self.user_tower.event_substitution.num_items = catalog.num_items
    self.sampling_probability = _sampling_probability(catalog)
    self.train_function = None


def _side_tables(catalog: Catalog) -> dict:
  """The catalog's side-feature columns over the model's table rows (spare rows: padding)."""
  return {name: catalog.padded(getattr(catalog, name), features.PAD_ID)
          for name in ("tag", "author", "duration")}


def _sampling_probability(catalog: Catalog) -> tf.Tensor:
  """[table rows] float32: the logQ correction's probabilities (spare rows are never candidates)."""
  return tf.constant(catalog.padded(floor_unseen(catalog.sampling_probability), 1e-9), tf.float32)
