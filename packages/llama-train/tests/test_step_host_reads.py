"""The trainer's eager step waits for the device once per step: the loss and the gradient norm are
kept on the device (accumulated over micro-batches, clipped there) and read together. A GPU step
that read a value per micro-batch or per parameter stalled its stream each time. (The multi-process
layouts are counted in llama-model's parity tests.)"""

import numpy as np
import paddle

from llama_model import ParallelModel, Strategy, count_host_reads, preset
from llama_train.steps import EagerStep


def test_eager_step_reads_the_device_once():
    pm = ParallelModel.build(preset("tiny"), Strategy(micro_batches=4), seed=0)
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=pm.parameters())
    step = EagerStep(pm, opt, clip_grad=0.5)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, pm.config.vocab_size, size=(8, 17)) for _ in range(3)]
    step.run(1, batches[0][:, :-1], batches[0][:, 1:])  # AdamW creates its state here
    with count_host_reads() as reads:
        loss, norm = step.run(2, batches[1][:, :-1], batches[1][:, 1:])
    assert reads == ["numpy"], reads
    # the values read are the step's: the same batch through a fresh model, read the plain way
    pm_ref = ParallelModel.build(preset("tiny"), Strategy(micro_batches=4), seed=0)
    opt_ref = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=pm_ref.parameters())
    for ids in batches[:2]:
        want_loss = pm_ref.forward_backward(ids[:, :-1], ids[:, 1:])
        want_norm = pm_ref.clip_grad_norm(0.5)
        opt_ref.step()
        opt_ref.clear_grad()
    assert norm > 0.5  # clipping acted
    assert abs(loss - want_loss) <= 1e-6 and abs(norm - want_norm) <= 1e-6, (loss, want_loss)
