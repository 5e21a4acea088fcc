from mosmos.train.sampling import ResumableSampler


def test_epoch_order_is_seeded_and_changes_per_epoch():
    a = ResumableSampler(20, 4, seed=1)
    b = ResumableSampler(20, 4, seed=1)
    a.set_epoch(0)
    b.set_epoch(0)
    assert list(a) == list(b)
    first = [i for _, i in a]
    a.set_epoch(1)
    assert [i for _, i in a] != first
    assert all(e == 1 for e, _ in a)


def test_resume_skips_exactly_the_done_batches():
    s = ResumableSampler(22, 4, seed=3)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 20 and s.batches_per_epoch == 5  # the incomplete batch is dropped
    s.set_epoch(2, skip_batches=3)
    assert list(s) == full[12:] and len(s) == 8


def test_ranks_take_disjoint_shards_covering_the_data():
    shards = []
    for rank in range(3):
        s = ResumableSampler(12, 2, seed=0, rank=rank, world_size=3)
        s.set_epoch(0)
        shards.append([i for _, i in s])
    assert all(len(x) == 4 for x in shards)
    assert sorted(sum(shards, [])) == list(range(12))


def test_validation_keeps_every_sample():
    s = ResumableSampler(10, 4, seed=0, shuffle=False, drop_last=False)
    s.set_epoch(0)
    assert [i for _, i in s] == list(range(10)) and s.batches_per_epoch == 3
