"""The control socket's bookkeeping: an ask is answered only by reconciles submitted after the fetch that followed
it, and says which environments it does not know."""
from __future__ import annotations

from reconciler.service.control import Asks


def result(name: str) -> dict[str, str]:
    return {"environment": name}


def test_an_ask_waits_for_reconciles_after_its_fetch_not_for_one_already_running() -> None:
    asks = Asks()
    ask = asks.add(["dev", "prod"])
    taken = asks.take()
    assert taken == [ask] and asks.take() == []  # taken once, before the fetch
    assert asks.bind(taken, generation=7, revision="abc", known=["dev", "prod", "other"]) == {"dev", "prod"}
    asks.finished("dev", generation=6, result=result("dev"), failed=True)  # submitted before the fetch: not it
    asks.finished("other", generation=7, result=result("other"), failed=True)  # not asked for
    asks.finished("dev", generation=7, result=result("dev"), failed=False)
    assert not ask.done.is_set()
    asks.finished("prod", generation=8, result=result("prod"), failed=True)
    assert ask.done.is_set()
    assert ask.answer() == {"code": 1, "error": "", "revision": "abc", "results": [result("dev"), result("prod")]}


def test_an_ask_for_all_takes_the_environments_known_at_the_fetch_and_an_unknown_one_exits_2() -> None:
    asks = Asks()
    everything, unknown = asks.add([]), asks.add(["dev", "nosuch"])
    assert asks.bind(asks.take(), generation=1, revision="abc", known=["dev", "prod"]) == {"dev", "prod"}
    assert unknown.done.is_set() and unknown.code == 2 and "nosuch" in unknown.error
    asks.finished("dev", 1, result("dev"), False)
    asks.finished("prod", 1, result("prod"), False)
    assert everything.done.is_set() and everything.code == 0


def test_a_stop_answers_every_ask_still_waiting() -> None:
    asks = Asks()
    bound = asks.add(["dev"])
    asks.bind(asks.take(), generation=1, revision="abc", known=["dev"])
    pending = asks.add(["dev"])
    asks.fail(None, "the daemon is stopping")
    assert all(a.done.is_set() and a.code == 1 and a.error == "the daemon is stopping" for a in (bound, pending))
