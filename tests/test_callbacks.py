"""lungseg_utils.train's callbacks: the cosine schedule's values and the compact log; and the train
command's wall-clock budget's decision (lungseg_utils.runs.budget, on a fake clock). Its
SeedStateBackup (lungseg_utils.runs.backup) is tested where it matters, by the bit-identical
resume in tests/test_train.py."""

import math

import pytest

from lungseg_utils import train
from lungseg_utils.runs import budget


def test_cosine_schedule_from_rate_to_floor():
    rate = train.cosine_schedule(1e-3, epochs=11, floor=0.01)
    values = [rate(e) for e in range(15)]
    assert values[0] == pytest.approx(1e-3)
    assert values[5] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))          # half-way: the mean
    assert values[10] == pytest.approx(1e-5)                               # the planned last
    assert values[14] == values[10]                                        # and after it
    assert all(a > b for a, b in zip(values[:10], values[1:11]))           # strictly down
    assert rate(3, 0.5) == values[3]                                       # Keras's 2-arg call
    assert train.cosine_schedule(0.1, epochs=1)(0) == pytest.approx(0.1)
    assert math.isfinite(train.cosine_schedule(0.1, epochs=0)(5))


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Model:
    stop_training = False


@pytest.mark.parametrize("deadline,stops_after", [(160.0, 3), (1000.0, None), (125.0, 0)])
def test_wall_clock_budget_stops_before_the_deadline(monkeypatch, deadline, stops_after):
    """Epoch 0 takes 20 s (tracing), the others 10 s; 5 s are kept in reserve."""
    clock = _Clock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    cb = budget.WallClockBudget(deadline, reserve_s=5.0, epoch_s=12.0)
    cb.set_model(_Model())
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        clock.now += 20.0 if epoch == 0 else 10.0
        cb.on_epoch_end(epoch)
        if cb.model.stop_training:
            break
    # 160: epoch 3 ends at 150 and 150 + 10 (the median after epoch 0) + 5 > 160, while
    # epoch 2's end, 140 + 15, still fit; 125: after epoch 0 (120) the planned 12 s do not fit
    assert cb.stopped_epoch == stops_after
    assert cb.model.stop_training == (stops_after is not None)
    assert clock.now + 5.0 <= deadline                     # the reserve is left


def test_epoch_summary_prints_a_few_lines_a_run(capsys):
    from lungseg_utils.train import EpochSummary

    cb = EpochSummary(epochs=5, every=2)
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"loss": 0.5 / (epoch + 1), "dice": 0.9, "val_dice": 0.8})
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines] == ["2/5", "4/5", "5/5"]   # every 2nd and the last
    assert "loss 0.2500" in lines[0] and "val_dice 0.8000" in lines[0] and "s an epoch" in lines[0]
    assert "val_loss" not in lines[0]                                   # only what was logged
