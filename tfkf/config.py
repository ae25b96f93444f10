"""KuaiFormerConfig: every knob of the model, serializable next to each trained model."""

import dataclasses
import json
from typing import Tuple

from tfkf import features


class JsonConfig:
  """replace / to_json / from_json of a frozen dataclass config (JSON lists come back as tuples)."""

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})


@dataclasses.dataclass(frozen=True)
class KuaiFormerConfig(JsonConfig):
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 4
  ffn_dim: int = 512
  dropout: float = 0.1                # attention weights and residual branches
  # Dropout on the history's event tokens before compression and the transformer (SASRec's
  # embedding dropout); the candidate tower's item embeddings are not dropped. The cpu
  # preset's 0.3: see PRESETS.
  embedding_dropout: float = 0.0
  # History augmentation while training (CL4SRec's "mask" and a noise form of its
  # "substitute"): each history event's whole token dropped (event_dropout), or its item
  # replaced by a uniformly random one (event_substitution), at these rates. Inputs only:
  # the targets stay the logged items.
  event_dropout: float = 0.0
  event_substitution: float = 0.0
  # Where a substitute item comes from: "uniform" over the catalog (mostly tail items) or
  # "in_batch", the batch's own history events (the log's popularity, as in-batch negatives).
  event_substitution_source: str = "uniform"
  # every_event training: weight of a contrastive loss between two passes over the same
  # histories (each with its own dropout and augmentation; losses.view_contrastive_loss,
  # as DuoRec and CL4SRec): a second user-tower pass per step. 0 = off.
  contrastive_weight: float = 0.0
  contrastive_temperature: float = 0.1
  feature_dim: int = 16              # width of each side-feature embedding
  max_len: int = features.MAX_LEN
  compression_windows: Tuple[int, ...] = features.COMPRESSION_WINDOWS  # () = no compression
  num_query_tokens: int = 4          # k interests
  label_smoothing: float = 0.1       # alpha of the smoothed in-batch softmax
  use_logq: bool = True
  # lambda of the correction logit - lambda log q. 1 removes in-batch sampling's popularity
  # bias exactly; above 1 leaves some popularity in the scores (1.5 on Games: no gain, see
  # PRESETS).
  logq_weight: float = 1.0
  remove_accidental_hits: bool = True
  temperature: float = 0.05          # embeddings are L2-normalised; scores are cosines
  # False: interests and item embeddings are not L2-normalised and scores are dot products
  # (SASRec's scoring; pair it with temperature 1). No better on Games (see PRESETS).
  normalize_embeddings: bool = True
  # Real catalog items drawn uniformly and added to every training batch's in-batch
  # negatives ("mixed negative sampling", Yang et al. 2020): in-batch negatives follow
  # popularity, so the tail of the catalog is rarely a negative. 0 = in-batch only.
  mixed_negatives: int = 0
  event_features: Tuple[str, ...] = tuple(features.EVENT_FEATURES)
  item_features: Tuple[str, ...] = ("tag", "author", "duration")
  # Per example, drop all event features to "unknown" with this probability while
  # training, so a history sent with item ids only is in-distribution at serving.
  event_feature_dropout: float = 0.3
  # True: the candidate tower reuses the input item-id table (fewer parameters,
  # items seen only as targets still get trained input embeddings).
  tie_item_embeddings: bool = True
  # False: the candidate tower's projection has no bias, so no vector is shared by every
  # item embedding (with it, an item whose own embedding is small - a rarely trained one -
  # points along that shared offset; tfkf.train drops the side features constant over the
  # catalog for the same reason). The cpu preset's: see PRESETS.
  candidate_bias: bool = True
  # "last": the paper's one target per example (k queries after the whole history).
  # "every_event": k queries after each of the latest (uncompressed) events, each
  # predicting the next one, in one pass (UserTower.interests_at).
  training_targets: str = "last"
  # every_event: a history's other targets of the pass are no in-batch negatives of its
  # targets (tfrs Retrieval score_mask): they are items the same user chose. On ml's long
  # histories valid HR@100 0.420 -> 0.445 at 600 s; Games (7 events a history) unchanged
  # (benchmarks/results/screens/ml_mask_dropout_600s.json, games_mask_same_history_300s.json).
  mask_same_history: bool = True
  # every_event: a cut point before each whole history's first event too (k queries that
  # see no event), so a user's first event is a target like the others: its item is
  # trained even if no user chose it after another event, and the empty history gets learned
  # interests. The cpu preset's: see PRESETS.
  first_event_targets: bool = False
  # Weight of SASRec's loss (uniformly drawn negatives per target, binary cross-entropy on
  # maxsim / temperature) added to the in-batch softmax while training. 0 = the paper's loss.
  uniform_bce_weight: float = 0.0
  # Uniformly drawn negatives per target of that loss (its negative term is their mean).
  uniform_bce_negatives: int = 1
  # Temperature of that loss's logits (maxsim / T); 0 = `temperature`. At the softmax's 0.05
  # a uniform negative's loss saturates once its cosine is below about -0.15.
  uniform_bce_temperature: float = 0.0
  # Train with tfkf.optimizers.LazyAdam: an item's embedding moves only in the steps that
  # hold it, instead of coasting on Adam's decaying moments after each (rare) hit.
  lazy_adam: bool = False
  # Decoupled weight decay (AdamW: every step each weight shrinks by learning rate x this),
  # item and feature tables included; RMSNorm scales and biases are not decayed. 0 = off.
  weight_decay: float = 0.0

  def __post_init__(self):
    features.uncompressed_len(self.max_len, self.compression_windows)
    unknown = set(self.event_features) - set(features.EVENT_FEATURES)
    if unknown:
      raise ValueError(f"unknown event features {sorted(unknown)}; known: {list(features.EVENT_FEATURES)}")
    if self.training_targets not in ("last", "every_event"):
      raise ValueError(f"training_targets={self.training_targets!r}: 'last' or 'every_event'")
    if self.logq_weight < 0:
      raise ValueError(f"logq_weight={self.logq_weight}: 0 (no correction) or more")
    for name in ("embedding_dropout", "event_dropout", "event_substitution"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)}: a rate in [0, 1)")
    if self.event_substitution_source not in ("uniform", "in_batch"):
      raise ValueError(f"event_substitution_source={self.event_substitution_source!r}: "
                       "'uniform' or 'in_batch'")
    if self.first_event_targets and self.training_targets != "every_event":
      raise ValueError("first_event_targets needs training_targets='every_event'")
    if self.contrastive_weight and self.training_targets != "every_event":
      raise ValueError("contrastive_weight needs training_targets='every_event'")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay={self.weight_decay}: 0 (off) or more")
    if self.mixed_negatives < 0:
      raise ValueError(f"mixed_negatives={self.mixed_negatives}: 0 (in-batch only) or more")
    if self.uniform_bce_temperature < 0:
      raise ValueError(f"uniform_bce_temperature={self.uniform_bce_temperature}: 0 "
                       "(the softmax's temperature) or more")
    if self.uniform_bce_negatives < 1:
      raise ValueError(f"uniform_bce_negatives={self.uniform_bce_negatives}: 1 or more")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

  @property
  def num_latest_events(self) -> int:
    """Latest events that bypass compression: every_event training's cut points per history."""
    return features.uncompressed_len(self.max_len, self.compression_windows)

  @property
  def num_sequence_tokens(self) -> int:
    """Positions the causal transformer sees for a full history, query tokens included."""
    return len(self.compression_windows) + self.num_latest_events + self.num_query_tokens


PRESETS = {
    # The paper's setting (DESIGN.md §1), sized for CPU.
    "paper": KuaiFormerConfig(),
    # Training on 2 CPU cores (bench-quality's KuaiFormer): the paper's 256 events and
    # windows at d 64, 2 layers, sequence-level training on a --layout=chunks build.
    # Chosen on SASRec Games (benchmarks/results/screens/): every_event gave valid
    # HR@100 0.303 in 300 s where the paper's one target per pass stays at popularity
    # level; logQ on (0.192 vs 0.101 at 120 s); k 4 ~ k 1 at equal time. Embedding
    # dropout 0.3 delays the over-fitting that follows the peak: valid HR@100 / HR@500
    # 0.297 / 0.525 against 0.278 / 0.492 at 1200 s on Games, 0.4225 / 0.7158 against
    # 0.4096 / 0.6987 at 540 s on ml (screens/games_regularise_1200s.json,
    # screens/ml_embedding_dropout_540s.json). Tried on Games valid, no better kept at
    # val_loss: temperature 0.1 (HR@500 0.504, batch 4096 0.517), logq_weight 1.5 (0.503
    # against 0.519 at 600 s; screens/games_temperature_batch_1200s.json,
    # games_logq_weight_600s.json, games_popularity_prior.json); lazy_adam (0.508 against
    # Adam's 0.517 at 600 s, games_lazy_adam_600s.json). uniform_bce_weight 1 (SASRec's
    # loss beside the in-batch softmax) stops the decline after the peak (val_loss selection
    # then keeps too early a step, games_uniform_bce_600s.json); with --select_by=hr@500 and
    # weight averaging, three interleaved pairs against averaging alone at 600 s give valid
    # HR@10 +0.011 / +0.011 / +0.013, HR@100 +0.005 / +0.013 / +0.007, HR@500 and sampled
    # HR@10 within +-0.009 (games_uniform_bce_repeat_600s.json). With it, one run each at
    # 600 s, none better: a near-full-catalog softmax (16,384 mixed negatives), k 1 (HR@10 and
    # HR@100 lower), residual dropout 0.3, label smoothing 0 (HR@500 lower), 0.2 or 0.3,
    # averaging 0.998 (screens/games_mixed_negatives16k_aux_600s.json, games_aux_*_600s.json),
    # SASRec's dot-product scoring (normalize_embeddings False, temperature 1: slower to the
    # same peak, also at 1200 s; games_aux_dot_product_600s.json).
    # History augmentation (event_substitution 0.3: each history event's item replaced by a
    # random one while training) lifts every metric and stops the decline after the peak:
    # one run each at 600 s, valid HR@10 / HR@100 / HR@500 / sampled HR@10 at rate 0.1
    # 0.1182 / 0.3244 / 0.5418 / 0.7497, 0.2 0.1214 / 0.3301 / 0.5475 / 0.7535, 0.3
    # 0.1153 / 0.3332 / 0.5500 / 0.7579, 0.4 0.1153 / 0.3255 / 0.5466 / 0.7593, against the
    # preset without it 0.1051-0.1096 / 0.3068-0.3102 / 0.5211-0.5295 / 0.7316-0.7438 (three
    # runs); whole-event dropout 0.2 less (0.1134 / 0.3148 / 0.5334 / 0.7485;
    # screens/games_history_augmentation_600s.json). On ml valid at 540 s HR@100 0.4859
    # against 0.4461 without it (ml_history_augmentation_540s.json). With it, a contrastive
    # loss between two passes (contrastive_weight 0.1) is lower at equal time: its second
    # pass costs 40% of the steps (HR@500 0.5420, games_contrastive_600s.json). At 600 s, one
    # run each: substitution 0.5 is lower (HR@500 0.5343); within the preset's two runs: plus
    # event_dropout 0.1 (sampled HR@10 0.7626 against 0.7579-0.7585; on the 1200 s test
    # table 0.7367 against 0.7347, screens/quality_games_event_dropout_1200s.json), the
    # auxiliary loss at uniform_bce_temperature 0.1 or 0.2 (games_uniform_bce_temperature_600s.json);
    # untied item embeddings are lower on every metric (games_untied_embeddings_600s.json).
    # Also within that noise: d 96 (ffn 384), 8 uniform negatives, warm-up + cosine at peak
    # 2e-3 (at 1e-3 lower; at 1200 s on valid also the same, games_lr_cosine_1200s.json);
    # substitutes drawn from the batch's events (event_substitution_source "in_batch") are
    # lower on every metric (games_width_uniform_negatives_600s.json,
    # games_lr_cosine_600s.json, games_substitution_in_batch_600s.json); logq_weight 0.8 keeps
    # sampled HR@10 and loses HR@500 (games_logq_weight08_600s.json), uniform_bce_weight 2 keeps
    # it and loses the full-catalog metrics (games_uniform_bce_weight2_600s.json).
    # No offset shared by every item embedding (candidate_bias False, and tfkf.train's
    # dropping of side features constant over the catalog: all of Games'): valid sampled
    # HR@10 / HR@500 0.7544 / 0.5451 against 0.7523 / 0.5401 at 600 s
    # (games_candidate_offset_600s.json); with event_dropout 0.1, two 1200 s Games test runs
    # at sampled HR@10 0.7376 / 0.7383 against the preset's four 0.7320-0.7367, gained on
    # targets seen 3-29 times (quality_games_no_offset_evdrop_1200s*.json); on ml at 900 s
    # within the intervals of the preset's table (quality_ml_no_offset_evdrop_900s.json).
    # Not better at 600 s: the latest event's own output as a 5th interest, the auxiliary loss
    # as a softmax over 256 uniform negatives (games_last_event_interest_600s.json,
    # games_uniform_softmax_stopped.json). Dropout 0 (attention and residual: 12% more steps)
    # is lower at 600 s: valid sampled HR@10 / HR@500 0.7505 / 0.5424 against 0.7569 / 0.5490
    # in one pair (games_dropout0_600s.json).
    # Temperature 0.08 (was 0.05): valid sampled HR@10 / HR@500 0.7606 / 0.5531 against
    # 0.7577 / 0.5506 at 600 s; on the 1200 s Games test table every metric at or above the
    # 0.05 run's (sampled HR@10 0.7389 against 0.7359, HR@500 0.5409 against 0.5373;
    # screens/quality_games_temperature005_1200s.json). Embedding dropout 0.1 and k 2 lower
    # sampled HR@10 (0.7547, 0.7551; games_sampled_levers_600s.json); temperature 0.1 is lower on
    # every metric (sampled HR@10 0.7532, HR@500 0.5474; games_temperature01_600s.json), 0.065
    # within noise (0.7572 / 0.5489; games_temperature0065_600s.json).
    # A second 1200 s Games test run of the preset: sampled HR@10 0.7395 (the first 0.7389,
    # screens/quality_games_temperature008_1200s.json;
    # screens/quality_games_temperature008_repeat_1200s.json). Weight decay 0.1 (decoupled,
    # AdamW; 4,100-4,300 steps in 1200 s against 4,500-4,600): valid sampled HR@10 / HR@100 /
    # HR@500 0.7621 / 0.3275 / 0.5518 against 0.7587 / 0.3195 / 0.5482 at 600 s, weight decay 1
    # lower on every metric (games_weight_decay_600s.json); on the Games test table two runs at
    # 0.7400 / 0.7375, no different from the preset's 0.7389 / 0.7395
    # (quality_games_weight_decay01*_1200s.json); ml at 900 s HR@50 / HR@100 / HR@500 0.3426 /
    # 0.4584 / 0.7331 against 0.3326 / 0.4477 / 0.7334, one run, inside the table's intervals
    # (quality_ml_weight_decay01_900s.json).
    # Each user's first event a target too (first_event_targets; on Games 816 items occur
    # only as first events or held-out targets): two 1200 s Games test runs at sampled HR@10
    # 0.7422 / 0.7409, HR@100 0.3241 / 0.3293, HR@500 0.5411 / 0.5433 against the preset's two
    # without it 0.7389 / 0.7395, 0.3278 / 0.3254, 0.5409 / 0.5416; the gain is on targets seen
    # 1-2 times in training (0.331 / 0.343 against 0.324). A first run whose length buckets
    # did not count the extra target (a third more targets a batch, 3,800 steps) gave 0.7383
    # (screens/quality_games_first_event*_1200s.json).
    "cpu": KuaiFormerConfig(d_model=64, num_heads=2, num_layers=2, ffn_dim=256,
                            training_targets="every_event", embedding_dropout=0.3,
                            uniform_bce_weight=1.0, event_substitution=0.3, event_dropout=0.1,
                            candidate_bias=False, temperature=0.08, first_event_targets=True),
    # Tests and the demo: same mechanisms, short histories, tiny widths.
    "small": KuaiFormerConfig(d_model=64, num_heads=2, num_layers=2, ffn_dim=128,
                              dropout=0.0, max_len=64, compression_windows=(16, 16, 8),
                              num_query_tokens=4),
}
