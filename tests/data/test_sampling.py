"""The shared resumable training order (glm/data/sampling.py) in its finetuning form: plain indices, each
rank its share of the epoch's permutation with the tail padded by repeats, mid-epoch resume, and a refused
change of layout. (The pretraining form is tested in test_pretrain.py and test_resume.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from glm.data.sampling import EpochIndexSampler, ResumableDataLoader, resumable_train_loader

N = 22  # not a multiple of 2, 3 or 4: every test has an uneven tail and a short last batch


def _trainer(rank: int = 0, world: int = 1, done: int = 0) -> SimpleNamespace:
    """The few trainer attributes the loaders read: rank, world size and the fit loop's batch progress."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=done))
    return SimpleNamespace(
        global_rank=rank,
        world_size=world,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )


def _loader(
    rank: int = 0, world: int = 1, batch: int = 4, done: int = 0, epoch: int = 2
) -> ResumableDataLoader:
    dm = SimpleNamespace(trainer=_trainer(rank, world, done))
    loader = resumable_train_loader(list(range(N)), dm, batch, seed=11)
    loader.sampler.set_epoch(epoch)  # Lightning does this before every epoch
    return loader


def _batches(loader: ResumableDataLoader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_plain_indices_shuffled_per_epoch_and_seeded() -> None:
    whole = [i for b in _batches(_loader()) for i in b]
    assert sorted(whole) == list(range(N))  # plain indices, every example once (no epoch * N offset)
    assert whole != list(range(N))
    assert [i for b in _batches(_loader(epoch=3)) for i in b] != whole  # a new order each epoch
    assert [i for b in _batches(_loader()) for i in b] == whole  # and the same order for the same epoch
    assert len(_batches(_loader())[-1]) == N % 4  # the short last batch is kept (drop_last=False)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resumed_loader_yields_exactly_the_rest_of_the_epoch(world: int) -> None:
    for rank in range(world):
        whole = _batches(_loader(rank, world))
        for done in range(1, len(whole)):
            state = _loader(rank, world, done=done).state_dict()
            assert state["batches_done"] == done and state["epoch"] == 2 and state["world_size"] == world
            resumed = _loader(rank, world)  # a fresh loader, as in the resumed process
            resumed.load_state_dict(state)
            assert _batches(resumed) == whole[done:], (rank, done)
            assert _batches(resumed) == whole  # the next pass (epoch) is whole again
        at_end = _loader(rank, world)
        at_end.load_state_dict(_loader(rank, world, done=len(whole)).state_dict())
        assert _batches(at_end) == whole  # saved on the epoch's last batch: the next epoch starts whole


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_share_the_epoch_disjointly_and_run_the_same_number_of_batches(world: int) -> None:
    shares = [[i for b in _batches(_loader(r, world)) for i in b] for r in range(world)]
    per_rank = -(-N // world)
    assert [len(s) for s in shares] == [per_rank] * world
    assert {len(_batches(_loader(r, world))) for r in range(world)} == {-(-per_rank // 4)}  # same step count
    flat = [i for s in shares for i in s]
    assert set(flat) == set(range(N))  # every example is seen this epoch
    repeats = per_rank * world - N
    assert len(flat) - len(set(flat)) == repeats  # padded with repeats of the permutation's head, no more
    # without the repeats the shares are disjoint: the padding is the only overlap
    whole = [i for b in _batches(_loader(0, 1)) for i in b]
    assert sorted(flat) == sorted(whole + whole[:repeats])


def test_drop_tail_form_is_disjoint_and_drops_the_remainder() -> None:
    shares = [list(EpochIndexSampler(N, seed=11, rank=r, world_size=4, epoch_offset=False)) for r in range(4)]
    flat = [i for s in shares for i in s]
    assert [len(s) for s in shares] == [N // 4] * 4 and len(set(flat)) == len(flat) == N - N % 4


def test_tiny_split_smaller_than_the_world_is_padded() -> None:
    shares = [
        list(EpochIndexSampler(2, seed=1, rank=r, world_size=3, epoch_offset=False, tail="pad"))
        for r in range(3)
    ]
    assert [len(s) for s in shares] == [1, 1, 1] and {i for s in shares for i in s} == {0, 1}


def test_a_changed_batch_size_world_size_or_seed_is_refused() -> None:
    state = _loader(done=2).state_dict()
    for changed, field in ((_loader(world=2), "world_size=1"), (_loader(batch=2), "batch_size=4")):
        with pytest.raises(
            ValueError, match=f"stopped mid-epoch with train dataloader {field}, this run has"
        ):
            changed.load_state_dict(state)
    other_seed = resumable_train_loader(list(range(N)), SimpleNamespace(trainer=_trainer()), 4, seed=12)
    with pytest.raises(ValueError, match="train dataloader seed=11, this run has seed=12"):
        other_seed.load_state_dict(state)


def test_seed_is_the_given_one_and_progress_is_read_at_checkpoint_time() -> None:
    dm = SimpleNamespace(trainer=_trainer())
    loader = resumable_train_loader(list(range(N)), dm, 4, seed=5)
    assert loader.sampler.seed == 5 and loader.state_dict()["batches_done"] == 0
    dm.trainer = _trainer(done=3)  # the fit loop's counter when the checkpoint is written
    assert loader.state_dict()["batches_done"] == 3
    dm.trainer = None  # outside a trainer (unit use): nothing done
    assert loader.state_dict()["batches_done"] == 0


def test_iterating_leaves_the_global_torch_rng_alone() -> None:
    """A plain DataLoader draws its worker seed from the global torch RNG at every iter(); a resumed run
    restores that RNG before its first iter() and an uninterrupted one draws at the epoch start, so the
    dropout masks after the resume point would differ."""
    import torch

    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = _batches(_loader())
    assert torch.equal(torch.get_rng_state(), before)
    assert _batches(_loader()) == batches
