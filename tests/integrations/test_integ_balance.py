"""The balance monitor under an unchanged transformers.Trainer: SRFTCallback.on_log adds its values to the logs."""

from __future__ import annotations

import pytest
from _integ_common import make_hf_srft
from test_integ_transformers import STEPS, _args, _trainer, counting_steps

from srft_peft.integrations.transformers import SRFTCallback

KEYS = {"srft/task_update", "srft/prior", "srft/damping", "srft/drift"}


@pytest.mark.parametrize("mode", ["proximal", "gradient"])
def test_trainer_logs_the_balance_once_per_optimizer_step(accelerate_state, tmp_path, mode):
    import transformers

    seen: list[dict] = []

    class Recorder(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    srft = make_hf_srft("grad", total_steps=STEPS, lambda_prior=200.0, prior_application=mode, monitor_balance=True)
    trainer = _trainer(srft, _args(tmp_path, batch=4, accumulation=2, logging_strategy="steps", logging_steps=2),
                       callbacks=[SRFTCallback(srft), Recorder()])
    with counting_steps() as calls:
        trainer.train()
    assert srft.step == len(calls) == STEPS  # accumulation 2: the prior acted once per optimizer step
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS // 2 and all(KEYS <= set(h) for h in logged)
    assert all(KEYS <= set(r) for r in seen if "loss" in r)
    last = logged[-1]
    assert last["srft/task_update"] > 0 and last["srft/prior"] > 0 and last["srft/drift"] > 0
    assert last == {**last, **{f"srft/{k}": v for k, v in srft.balance().items()}}


def test_trainer_logs_nothing_extra_with_the_monitor_off(accelerate_state, tmp_path):
    srft = make_hf_srft("grad", total_steps=STEPS, prior_application="decoupled")
    trainer = _trainer(srft, _args(tmp_path, logging_strategy="steps", logging_steps=2),
                       callbacks=[SRFTCallback(srft)])
    trainer.train()
    assert not any(k.startswith("srft/") for h in trainer.state.log_history for k in h)
