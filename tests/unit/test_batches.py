"""Stream* batching: every item once, in order, no empty message, each message under the limit."""

from cri.api.v1 import api_pb2

from cri.server.batches import batches


def _pod(i: int, size: int) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(id=f"{i:064x}", annotations={"a": "x" * size})


def test_batches_keep_every_item_once_under_the_limit():
    items = [_pod(i, 100 * (i % 7)) for i in range(200)]
    out = list(batches(items, limit=2000))
    assert [p.id for b in out for p in b] == [p.id for p in items]
    assert all(b for b in out)
    assert all(sum(p.ByteSize() for p in b) <= 2000 for b in out)
    assert len(out) > 1


def test_an_item_over_the_limit_goes_alone_and_nothing_makes_no_batch():
    big, small = _pod(1, 5000), _pod(2, 10)
    assert list(batches([small, big, small], limit=1000)) == [[small], [big], [small]]
    assert list(batches([], limit=1000)) == []
