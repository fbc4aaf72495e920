"""`resources.gpu: auto`'s decision on recorded measurements (no GPU needed)."""

import pytest

from raytune_suite.engine.gpu_auto import Measurement, decide

GIB = 2**30
H200 = 139 * GIB


def _runs(samples: dict, memory_gib: float) -> list[Measurement]:
    return [Measurement(k, s, None if s is None else int(memory_gib * GIB))
            for k, s in samples.items()]


def test_the_cnn_packing_measured_on_an_h200_picks_4():
    # DESIGN.md, Nov 28: the CNN at width 1, batch 128: 48.4k, 92.0k, 171.0k, 171.0k
    decision = decide(_runs({1: 48_400, 2: 92_000, 4: 171_000, 8: 171_000}, 1.5), H200)
    assert decision.k == 4 and decision.gpu == 0.25
    assert "8 gains only 1.00x over 4" in decision.line()


def test_doubling_stops_at_the_first_k_that_does_not_pay():
    # a noisy gain at 8 cannot lift a choice that stopped paying at 4
    decision = decide(_runs({1: 10_000, 2: 19_000, 4: 20_000, 8: 40_000}, 1.0), H200)
    assert decision.k == 2


def test_memory_with_its_margin_caps_the_packing():
    # 4 trials of 25 GiB (100 GiB) fit 80% of 139 GiB (111.2 GiB); 8 would need 200 GiB
    decision = decide(_runs({1: 1, 2: 2, 4: 4, 8: 8}, 25), H200)
    assert decision.k == 4 and "8 would need 200.0 GiB of 139.0 GiB" in decision.line()
    # 4 x 30 GiB = 120 GiB would fit the whole GPU, but not with the 20% margin
    tight = decide(_runs({1: 1, 2: 2, 4: 4}, 30), H200)
    assert tight.k == 2


def test_an_out_of_memory_probe_stops_the_doubling():
    decision = decide(_runs({1: 5_000, 2: 9_000, 4: None}, 20), H200)
    assert decision.k == 2 and "4 ran out of memory" in decision.line()


def test_no_gpu_means_cpu_trials_and_one_alone_must_fit():
    cpu = decide([], None)
    assert cpu.k == 0 and cpu.gpu == 0.0 and "trials run on CPU" in cpu.line()
    with pytest.raises(ValueError, match="one trial alone does not fit"):
        decide(_runs({1: 1_000}, 200), H200)
    with pytest.raises(ValueError, match="one trial alone does not fit"):
        decide(_runs({1: None}, 1), H200)
