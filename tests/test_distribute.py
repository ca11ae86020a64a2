"""lungseg_utils.runs.devices and the train command's run under it: two logical CPUs stand in for two GPUs.

The logical devices must be set before TensorFlow initialises its runtime, which the test
session has long done, so the distributed run happens in a fresh Python process.
"""

import json
import subprocess
import sys

import pytest

from lungseg_utils import config, dataio
from lungseg_utils.runs import devices
from lungseg_utils.errors import LungsegInputError

keras = devices.keras
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tf.distribute needs the TensorFlow backend")

SCRIPT = r"""
import json, sys
from lungseg_utils import config
config.import_keras_quietly()
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from lungseg_utils.runs import devices, training

strategy = devices.distribution_strategy(["/cpu:0", "/cpu:1"])
run_dir = training.train_run(data_dir=sys.argv[1], out_dir=sys.argv[2], profile="smoke",
                             base_filters=2, depth=1, strategy=strategy, batch_size=2, verbose=0)
print("RESULT", json.dumps({"run_dir": str(run_dir),
                            "replicas": strategy.num_replicas_in_sync,
                            "strategy": type(strategy).__name__,
                            "logical_cpus": len(tf.config.list_logical_devices("CPU"))}))
"""


def test_default_strategy_is_one_device():
    strategy = devices.distribution_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert type(strategy).__name__ != "MirroredStrategy"


def test_devices_need_tensorflow_backend_only_when_given(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert devices.distribution_strategy() is None
    with pytest.raises(LungsegInputError, match="devices"):
        devices.distribution_strategy(["/gpu:0", "/gpu:1"])


def test_mirrored_training_on_two_logical_cpus(demo_data, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_data), str(out)],
                          cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["strategy"] == "MirroredStrategy"
    assert result["replicas"] == 2 and result["logical_cpus"] == 2

    run_dir = out / result["run_dir"].rsplit("/", 1)[-1]
    assert (run_dir / "best_model.keras").is_file()
    assert (run_dir / "test_metrics.json").is_file()
    cfg = dataio.load_json(run_dir / "train_config.json")
    assert cfg["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2}
    log = (run_dir / "training_log.csv").read_text().splitlines()
    assert len(log) == 2 and log[0].startswith("epoch,")       # one epoch, on both replicas

    model = keras.saving.load_model(run_dir / "best_model.keras", compile=False)
    assert model.output_shape == (None, 64, 64, 64, 1)


def test_replica_batches_keep_every_replica_busy():
    class TwoReplicas:
        num_replicas_in_sync = 2

    one = devices.distribution_strategy()
    assert devices.replica_batches(one, 2, 7, 1) == {"batch_size": 2}
    assert devices.replica_batches(TwoReplicas(), 2, 12, 3) == {"batch_size": 2,
                                                                   "samples_per_epoch": 6}
    for batch, samples in ((3, 12), (2, 7)):
        with pytest.raises(LungsegInputError, match="replicas"):
            devices.replica_batches(TwoReplicas(), batch, samples, 1)
