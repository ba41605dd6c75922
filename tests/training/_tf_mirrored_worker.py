"""MirroredStrategy over 2 logical CPU devices (set before TensorFlow starts, hence a fresh
process): the reference run, written to argv[2]."""

import sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import train_helpers as H  # noqa: E402

from gpt2_tf.training import make_strategy  # noqa: E402

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
strategy = make_strategy("mirrored")
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = H.fresh_model("tf")
H.train_fn("tf")(
    model, *H.datasets(corpus), H.train_config(), out, strategy=strategy, progress=False
)
