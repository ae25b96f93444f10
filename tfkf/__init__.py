"""tfkf: KuaiFormer retrieval on TensorFlow, Keras (tf-keras) and TFRS."""

import os

# TFRS needs Keras 2: tf.keras must resolve to tf-keras. Set before TF is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfkf import data  # noqa: E402
from tfkf import features  # noqa: E402
from tfkf.catalog import Catalog  # noqa: E402
from tfkf.config import PRESETS, KuaiFormerConfig  # noqa: E402
from tfkf.losses import SmoothedInBatchSoftmax  # noqa: E402
from tfkf.model import KuaiFormer, UserTower  # noqa: E402
