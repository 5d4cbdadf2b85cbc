"""vet_checkpoint: a checkpoint is read by the restricted unpickler, and checked whole, before Paddle
reads it with pickle."""

import os
import pickle

import paddle
import paddle.distributed as dist
import pytest

from llama_train import TrainError, vet_checkpoint


class _RunsCommand:
    """A pickle that runs a shell command when pickle.load reads it."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def checkpoint(tmp_path):
    """A real one-process checkpoint: a small tensor (inside a pickle frame), one of 128 KiB (its
    bytes outside the frames, which the restricted unpickler leaves on disk) and an optimizer key."""
    path = tmp_path / "step-00000001"
    paddle.seed(0)
    dist.save_state_dict(
        {
            "model.w": paddle.randn([4, 3]),
            "model.big": paddle.randn([128, 256]),
            "optimizer.w.moment1": paddle.zeros([4, 3]),
        },
        str(path),
    )
    assert sorted(p.name for p in path.iterdir()) == ["0.metadata", "0_0.distcp"]
    return path


def refusal(path) -> str:
    with pytest.raises(TrainError) as info:
        vet_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_intact_checkpoint_passes(checkpoint):
    assert vet_checkpoint(checkpoint) is None


def test_tensor_payloads_are_not_read(checkpoint, monkeypatch):
    import llama_ckpt.distcp
    import llama_ckpt.safe_pickle

    def no_payload_reads(*args):
        raise AssertionError("vetting read a tensor's bytes")

    monkeypatch.setattr(llama_ckpt.safe_pickle, "read_span", no_payload_reads)
    monkeypatch.setattr(llama_ckpt.distcp, "read_span", no_payload_reads)
    assert vet_checkpoint(checkpoint) is None


@pytest.mark.parametrize("name", ["0_0.distcp", "0.metadata", "1_0.distcp"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(checkpoint, tmp_path, name):
    # 1_0.distcp: a data file the metadata does not name is vetted too.
    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_RunsCommand(f"touch {marker}"))
    assert b"system" in payload
    (checkpoint / name).write_bytes(payload)
    message = refusal(checkpoint)
    assert message == (
        f"refused: {checkpoint / name} is not a plain checkpoint file "
        f"(it imports {os.system.__module__}.system)"
    )
    assert not marker.exists()


def test_a_truncated_data_file_is_refused(checkpoint):
    data = checkpoint / "0_0.distcp"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    assert refusal(checkpoint).startswith(
        f"incomplete or damaged checkpoint: {data}: file is truncated ({len(raw) // 2} bytes, "
    )


def test_a_data_file_short_of_its_last_byte_is_refused(checkpoint):
    data = checkpoint / "0_0.distcp"
    data.write_bytes(data.read_bytes()[:-1])  # every tensor there, the pickle's STOP missing
    assert refusal(checkpoint) == (
        f"incomplete or damaged checkpoint: {data}: file is truncated or not a pickle"
    )


def test_a_missing_data_file_is_refused(checkpoint):
    (checkpoint / "0_0.distcp").unlink()
    assert refusal(checkpoint) == (
        f"incomplete or damaged checkpoint: {checkpoint / '0_0.distcp'} is missing "
        "(named by 0.metadata)"
    )


def test_a_missing_metadata_file_is_refused(checkpoint):
    (checkpoint / "0.metadata").unlink()
    assert refusal(checkpoint) == f"incomplete checkpoint: {checkpoint} has no .metadata file"
