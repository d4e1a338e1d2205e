"""The shared engine: a killed run resumes from its checkpoint and ends where an
uninterrupted run with the same seed ends; multi-optimizer state survives the trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.engine import (
    Checkpoint,
    EngineSettings,
    FitResult,
    WindowSet,
    _restore,
    checkpoint_metadata_from_json,
    checkpoint_metadata_json,
    fit,
    seed_everything,
)
from models.registry import FAMILIES, build_model
from tasks.training.train import safetensors_metadata

torch.set_num_threads(2)

WINDOW, FEATURES, EPOCHS, KILL_AFTER = 6, 3, 4, 1
SETTINGS = EngineSettings(epochs=EPOCHS, batch_size=32, lr=2e-3, patience=99, seed=3,
                          device="cpu")
SMALL = {"dense_ae": {"hidden": [16], "latent": 4}, "vae": {"hidden": [16], "latent": 4},
         "usad": {"hidden": [16], "latent": 4}, "transformer_ae": {"d_model": 8, "heads": 2,
         "layers": 1, "feedforward": 16, "latent": 4},
         "anogan": {"hidden": [16, 16], "latent": 4}, "lstm_ae": {"hidden": 8, "latent": 4}}
"""Smaller-than-default sizes where the defaults would make this test slow; others: defaults."""
ENGINE_FAMILIES = sorted(n for n, cls in FAMILIES.items() if getattr(cls, "trainable", True))
"""Every family the engine's epoch loop trains (closed-form fits have nothing to resume)."""


class Killed(RuntimeError):
    """Stands in for the process dying right after a checkpoint was written."""


def windows() -> WindowSet:
    gen = torch.Generator().manual_seed(1)
    series = torch.sin(torch.arange(200.0)[:, None] / 5 + torch.arange(FEATURES)) \
        + 0.1 * torch.randn(200, FEATURES, generator=gen)
    return WindowSet(series, torch.arange(200 - WINDOW + 1), WINDOW)


def model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, FEATURES, WINDOW, SMALL.get(name, {}))


def through_safetensors(checkpoint: Checkpoint) -> Checkpoint:
    """What train_family writes and reads back: safetensors bytes with JSON metadata."""
    tensors, meta = checkpoint
    data = save_safetensors(tensors, metadata=checkpoint_metadata_json(meta))
    return load_safetensors(data), checkpoint_metadata_from_json(safetensors_metadata(data))


def run_until_killed(name: str) -> Checkpoint:
    saved: list[Checkpoint] = []

    def hook(epoch: int, checkpoint: Checkpoint) -> None:
        saved.append(through_safetensors(checkpoint))
        if epoch == KILL_AFTER:
            raise Killed

    with pytest.raises(Killed):
        fit(model(name), windows(), SETTINGS, on_epoch_end=hook)
    return saved[-1]


# Every registered engine family (vae: sampling and transformer_ae: dropout draw from the
# global RNG; usad and anogan: two optimizers).
@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_resume_after_kill_matches_uninterrupted_run(name: str) -> None:
    straight = model(name)
    expected = fit(straight, windows(), SETTINGS)

    checkpoint = run_until_killed(name)
    assert checkpoint[1]["epoch"] == KILL_AFTER
    resumed_epochs: list[int] = []
    resumed = model(name)
    torch.manual_seed(12345)  # the restarted process's RNG is unrelated to the killed one
    result = fit(resumed, windows(), SETTINGS, resume=checkpoint,
                 on_epoch_end=lambda epoch, _: resumed_epochs.append(epoch))

    assert result.resumed_from_epoch == KILL_AFTER
    assert resumed_epochs == list(range(KILL_AFTER + 1, EPOCHS))
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))
    assert result.history == expected.history
    assert resumed.current_epoch == EPOCHS - 1
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_usad_two_optimizer_state_round_trips() -> None:
    tensors, meta = run_until_killed("usad")
    fresh = model("usad")
    optimizers = fresh.configure_optimizers(SETTINGS.lr, SETTINGS.weight_decay)
    assert len(optimizers) == 2
    _restore(fresh, optimizers, (tensors, meta), FitResult(), seed_everything(0))
    for i, opt in enumerate(optimizers):
        state = opt.state_dict()
        assert len(state["state"]) == len(list(opt.param_groups[0]["params"])) > 0
        for pid, entries in state["state"].items():
            for key, value in entries.items():
                assert torch.equal(value.cpu(), tensors[f"opt{i}.{pid}.{key}"]), (i, pid, key)
        assert int(state["state"][0]["step"]) == (KILL_AFTER + 1) * len(range(0, 176, 32))
        assert [g["lr"] for g in state["param_groups"]] == [SETTINGS.lr]


def test_checkpoint_is_a_snapshot_not_a_view_of_live_training_state() -> None:
    """A hook may keep the checkpoint in memory; training on must not change it."""
    kept: list[tuple[Checkpoint, Checkpoint]] = []
    fit(model("usad"), windows(), SETTINGS,
        on_epoch_end=lambda epoch, c: kept.append((c, through_safetensors(c))))
    (live, _), (copied, _) = kept[0]
    assert live.keys() == copied.keys()
    changed = [k for k in live if not torch.equal(live[k], copied[k])]
    assert changed == []
    assert int(copied["opt0.0.step"]) < int(kept[-1][1][0]["opt0.0.step"])
