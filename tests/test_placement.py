"""Placement: known optima by hand, capacity, pending, reports, the command line."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from blobstore.ops.nodereport import (
    build_report,
    parse_gpus,
    parse_reports,
    read_reports,
    write_report,
)
from blobstore.store.memory import MemoryStore
from placement.baselines import greedy, image_locality, random_policy
from placement.milp import best_known, lower_bound, solve
from placement.model import Node, PlacementInputError, Workload, parse_workloads
from placement.reports import fresh_nodes
from placement.simulate import make_cluster

GB = 1 << 30
POLICIES = [solve, greedy, image_locality, random_policy]


def node(id, free=8, cached=None, model="H100", mem=80 * GB) -> Node:
    return Node(id, model, free, mem, cached or {})


def wl(name, image, size=10 * GB, replicas=1, gpus=1, **kw) -> Workload:
    return Workload(name, image, size, replicas, gpus, **kw)


def placed_on(result) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in result.assignments:
        out.setdefault(a.workload, []).extend([a.node] * a.replicas)
    return out


def test_warm_node_wins():
    nodes = [node("cold"), node("warm", cached={"img1": 9 * GB})]
    r = solve([wl("w", "img1")], nodes)
    assert placed_on(r) == {"w": ["warm"]} and r.bytes_to_fetch == 1 * GB


@pytest.mark.parametrize("exact", [True, False])
def test_joint_beats_greedy_when_warm_capacity_is_contested(exact):
    # Greedy gives the older workload the first node warm for it, which is also the only
    # node warm for the younger one; the optimum swaps them and fetches nothing.
    nodes = [node("both", free=1, cached={"img1": 10 * GB, "img2": 10 * GB}),
             node("one", free=1, cached={"img1": 10 * GB})]
    work = [wl("old", "img1", age=100), wl("young", "img2", age=1)]
    assert greedy(work, nodes).bytes_to_fetch == 10 * GB
    best = solve(work, nodes, exact=exact)
    assert best.bytes_to_fetch == 0 and placed_on(best) == {"old": ["one"], "young": ["both"]}


@pytest.mark.parametrize("exact", [True, False])
def test_replicas_of_two_workloads_share_a_warm_node(exact):
    # Both workloads run the same image; one fetch on "half" serves all four replicas,
    # where one per workload on the half-warm nodes would fetch twice.
    nodes = [node("half", free=4, cached={"img": 5 * GB}), node("a", free=2),
             node("b", free=2, cached={"img": 4 * GB})]
    work = [wl("w1", "img", replicas=2), wl("w2", "img", replicas=2)]
    r = solve(work, nodes, exact=exact)
    assert r.bytes_to_fetch == 5 * GB and placed_on(r) == {"w1": ["half"] * 2,
                                                           "w2": ["half"] * 2}
    assert lower_bound(work, nodes) <= 5 * GB


def test_replicas_share_one_fetch_per_node():
    r = solve([wl("w", "img", replicas=4, gpus=2)], [node("a"), node("b")])
    assert r.bytes_to_fetch == 10 * GB and r.pending_replicas == 0  # packed on one node


@pytest.mark.parametrize("policy", POLICIES)
def test_a_workload_that_fits_nowhere_is_pending_not_dropped(policy):
    nodes = [node("a", free=4), node("b", free=2, model="L4")]
    work = [wl("big", "img", gpus=8), wl("needs-a100", "img", gpu_model="A100"),
            wl("too-much-memory", "img", gpu_memory=100 * GB), wl("ok", "img", replicas=2)]
    r = policy(work, nodes)
    assert r.pending == {"big": 1, "needs-a100": 1, "too-much-memory": 1}
    assert sum(a.replicas for a in r.assignments) == 2


@pytest.mark.parametrize("policy", POLICIES)
def test_no_workloads_or_no_nodes(policy):
    assert policy([], [node("a")]).assignments == []
    assert policy([wl("w", "img", replicas=2)], []).pending == {"w": 2}


def test_as_many_replicas_as_possible_first():
    r = solve([wl("wide", "x", gpus=8, age=5), wl("narrow", "y", replicas=4, gpus=2)],
              [node("only", free=8, cached={"x": 10 * GB})])
    assert r.pending == {"wide": 1} and r.bytes_to_fetch == 10 * GB


@pytest.mark.parametrize("exact", [True, False])
def test_start_cap_per_node(exact):
    nodes = [node("a", cached={"img": 9 * GB}), node("b"), node("c", cached={"img": 1 * GB})]
    r = solve([wl("w", "img", replicas=5)], nodes, max_starts=2, exact=exact)
    assert sorted(placed_on(r)["w"]) == ["a", "a", "b", "c", "c"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("load", ["normal", "tight"])
def test_simulated_clusters_capacity_and_pending(seed, load):
    work, nodes = make_cluster(60, 30, load=load, seed=seed)
    results = {p.__name__: p(work, nodes) for p in POLICIES}  # account() checks capacity
    assert results["solve"].pending_replicas <= results["greedy"].pending_replicas
    assert results["solve"].bytes_to_fetch <= results["greedy"].bytes_to_fetch or (
        results["solve"].pending_replicas < results["greedy"].pending_replicas)


def assert_bound_below_every_policy(work, nodes) -> int:
    """Each policy's bytes are at least the lower bound for the replicas it left pending
    (a bound of 0 or a policy let off for leaving some pending would prove nothing)."""
    bound = lower_bound(work, nodes)
    assert bound, "a cluster where nothing need be fetched cannot test a bound"
    for policy in POLICIES:
        r = policy(work, nodes)
        own = lower_bound(work, nodes, pending=r.pending) if r.pending_replicas else bound
        assert own is not None and own <= r.bytes_to_fetch, policy.__name__
    return bound


@pytest.mark.parametrize("seed", [1, 4])
def test_lower_bound_is_below_every_policy(seed):
    work, nodes = make_cluster(120, 40, load="normal", seed=seed)
    bound = assert_bound_below_every_policy(work, nodes)
    relaxed = solve(work, nodes, exact=False)  # the relaxation path on the same cluster
    assert relaxed.pending_replicas <= greedy(work, nodes).pending_replicas
    assert bound <= relaxed.bytes_to_fetch <= greedy(work, nodes).bytes_to_fetch


def test_a_second_relaxation_round_is_valid_and_no_worse_than_greedy(monkeypatch):
    import placement.milp

    monkeypatch.setattr(placement.milp, "WIDE_CELLS", 0)  # no relaxation with more arcs
    work, nodes = make_cluster(300, 80, load="tight", seed=1)  # where the second round wins
    r = solve(work, nodes, exact=False)  # account() inside checks every node's capacity
    assert r.note.startswith("LP relaxation, rounded, twice")
    g = greedy(work, nodes)
    assert (r.pending_replicas, r.bytes_to_fetch) <= (g.pending_replicas, g.bytes_to_fetch)


def test_a_relaxation_with_more_arcs_is_valid_and_no_worse_than_the_one_without(monkeypatch):
    import placement.milp

    work, nodes = make_cluster(300, 80, load="tight", seed=1)  # where more arcs win
    # The relaxations' plans, compared before the local search that follows both (which
    # may land a worse start on a better local optimum).
    monkeypatch.setattr(placement.milp, "rehome",
                        lambda work, prices, placed, deadline, clock=None: placed)
    r = solve(work, nodes, exact=False)  # account() inside checks every node's capacity
    assert r.note.startswith("LP relaxation with more arcs")
    monkeypatch.setattr(placement.milp, "WIDE_CELLS", 0)
    narrow = solve(work, nodes, exact=False)
    assert (r.pending_replicas, r.bytes_to_fetch) <= (narrow.pending_replicas,
                                                      narrow.bytes_to_fetch)


def test_cheapest_first_completion_leaves_the_node_to_whom_it_saves_most():
    """Oldest first, "a" takes n1 (5 GB missing there, 6 on n2) and "b" must fetch its whole
    image onto n2; cheapest first, "b" takes n1 (nothing missing) and "a" n2."""
    from placement.account import account
    from placement.baselines import complete
    from placement.prices import Prices

    nodes = [node("n1", free=1, cached={"A": 5 * GB, "B": 10 * GB}),
             node("n2", free=1, cached={"A": 4 * GB})]
    work = [wl("a", "A", age=100.0), wl("b", "B")]
    prices = Prices(nodes, {"A", "B"})
    oldest = complete(work, nodes, prices, [], {0: 1, 1: 1}, None, False)
    cheapest = complete(work, nodes, prices, [], {0: 1, 1: 1}, None, None)
    assert account("g", work, nodes, oldest).bytes_to_fetch == 15 * GB
    assert account("c", work, nodes, cheapest).bytes_to_fetch == 6 * GB


def test_consolidation_moves_replicas_to_where_their_image_already_goes():
    from placement.account import account
    from placement.improve import consolidate
    from placement.prices import Prices

    work = [wl("a", "x", replicas=1), wl("b", "x", replicas=2), wl("c", "y", gpus=8)]
    nodes = [node("n1", free=4), node("n2", free=4), node("n3", free=8, cached={"y": 10 * GB})]
    prices = Prices(nodes, {"x", "y"})
    spread = [(0, 0, 1), (1, 1, 2), (2, 2, 1)]  # x fetched onto n1 and n2
    assert account("p", work, nodes, spread).bytes_to_fetch == 20 * GB
    better = account("p", work, nodes, consolidate(work, prices, spread))
    assert better.bytes_to_fetch == 10 * GB and better.pending_replicas == 0
    assert len({a.node for a in better.assignments if a.workload != "c"}) == 1


def greedy_plan(work, nodes):
    """Greedy's result, and its placements as (workload, node, replicas) indices."""
    g = greedy(work, nodes)
    index = {w.name: i for i, w in enumerate(work)}
    ids = {n.id: i for i, n in enumerate(nodes)}
    return g, [(index[a.workload], ids[a.node], a.replicas) for a in g.assignments]


@pytest.mark.parametrize("seed, load", [(0, "normal"), (1, "tight"), (2, "normal")])
def test_consolidation_keeps_every_replica_and_never_costs_more(seed, load):
    from placement.account import account
    from placement.improve import consolidate
    from placement.prices import Prices

    work, nodes = make_cluster(200, 60, load=load, seed=seed)
    g, placed = greedy_plan(work, nodes)
    def starts(result) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in result.assignments:
            out[a.node] = out.get(a.node, 0) + a.replicas
        return out

    prices = Prices(nodes, {w.image for w in work})
    for cap in (None, 2):  # account() checks every node's capacity and fit
        after = account("c", work, nodes, consolidate(work, prices, placed, max_starts=cap))
        assert after.pending == g.pending and after.bytes_to_fetch <= g.bytes_to_fetch
        before = starts(g)
        assert cap is None or all(k <= max(cap, before.get(n, 0))
                                  for n, k in starts(after).items())  # none moved past it


def test_rehoming_moves_a_replica_to_where_its_image_is_by_moving_another_out():
    """Both nodes are full: x (40 GB) was placed on n1, which lacks it, and y (1 GB) on n2,
    which holds x. Swapping them fetches 1 GB instead of 40; consolidate cannot (no room)."""
    from placement.account import account
    from placement.improve import consolidate
    from placement.prices import Prices
    from placement.rehome import rehome

    work = [wl("a", "x", size=40 * GB, gpus=8), wl("b", "y", size=1 * GB, gpus=8)]
    nodes = [node("n1"), node("n2", cached={"x": 40 * GB})]
    prices = Prices(nodes, {"x", "y"})
    plan = [(0, 0, 1), (1, 1, 1)]
    assert account("p", work, nodes, plan).bytes_to_fetch == 41 * GB
    assert consolidate(work, prices, plan) == plan
    better = account("r", work, nodes, rehome(work, prices, plan))
    assert better.bytes_to_fetch == 1 * GB and better.pending_replicas == 0
    assert placed_on(better) == {"a": ["n2"], "b": ["n1"]}


def test_rehoming_makes_room_with_a_narrower_replica_when_the_widest_fits_nowhere_else():
    """n2 (A100) holds x but is full: z (5 GPUs) runs only on A100s, c (3 GPUs) anywhere.
    z cannot move, so c moves to n1 as a (3 GPUs) leaves it for n2: 40 GB saved."""
    from placement.account import account
    from placement.prices import Prices
    from placement.rehome import rehome

    work = [wl("a", "x", size=40 * GB, gpus=3),
            wl("z", "z", size=1 * GB, gpus=5, gpu_model="A100"),
            wl("c", "c", size=1 * GB, gpus=3)]
    nodes = [node("n1", free=3), node("n2", free=8, cached={"x": 40 * GB}, model="A100")]
    prices = Prices(nodes, {"x", "z", "c"})
    plan = [(0, 0, 1), (1, 1, 1), (2, 1, 1)]
    assert account("p", work, nodes, plan).bytes_to_fetch == 42 * GB
    after = account("r", work, nodes, rehome(work, prices, plan))
    assert after.bytes_to_fetch == 2 * GB
    assert placed_on(after) == {"a": ["n2"], "z": ["n2"], "c": ["n1"]}


@pytest.mark.parametrize("seed, load", [(0, "tight"), (1, "tight"), (2, "normal")])
def test_rehoming_keeps_every_replica_and_never_costs_more(seed, load):
    from placement.account import account
    from placement.prices import Prices
    from placement.rehome import rehome

    work, nodes = make_cluster(200, 60, load=load, seed=seed)
    g, placed = greedy_plan(work, nodes)
    prices = Prices(nodes, {w.image for w in work})
    after = account("r", work, nodes, rehome(work, prices, placed))  # checks fit and room
    assert after.pending == g.pending and after.bytes_to_fetch <= g.bytes_to_fetch
    if load == "tight":
        assert after.bytes_to_fetch < g.bytes_to_fetch


def test_no_lower_bound_when_not_everything_fits():
    assert lower_bound([wl("big", "img", gpus=8)], [node("a", free=4)]) is None


def test_lower_bound_counts_the_replicas_allowed_to_wait():
    # Two replicas fit where the image is; the others need a fetch onto "cold".
    nodes = [node("warm", free=2, cached={"img": 10 * GB}), node("cold", free=2)]
    work = [wl("w", "img", replicas=4)]
    assert lower_bound(work, nodes) == 10 * GB  # all four: two on "cold", one fetch
    assert lower_bound(work, nodes, pending=2) == 0  # two may wait: none need a fetch
    assert 0 < lower_bound(work, nodes, pending=1) <= 10 * GB
    assert lower_bound([wl("big", "img", gpus=8)], [node("a", free=4)], pending=1) == 0
    # Per workload: which replicas wait is given, not chosen by the bound.
    two = [wl("w", "img", replicas=2), wl("v", "other", replicas=2)]
    assert lower_bound(two, nodes, pending={"w": 2}) == 10 * GB  # "v" needs "cold"
    assert lower_bound(two, nodes, pending={"v": 2}) == 0
    assert lower_bound(two, nodes, pending=2) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_lower_bound_at_the_pending_a_policy_left_is_below_its_bytes(seed):
    """Under tight load not every replica fits; the bound for placements that leave no more
    pending than the MILP did is below the MILP's bytes, and allowing more to wait can only
    lower it."""
    work, nodes = make_cluster(120, 60, load="tight", seed=seed)
    r = solve(work, nodes)
    assert r.pending_replicas > 0 and lower_bound(work, nodes) is None
    bound = lower_bound(work, nodes, pending=r.pending_replicas)
    assert bound is not None and bound <= r.bytes_to_fetch
    assert lower_bound(work, nodes, pending=r.pending_replicas + 5) <= bound
    same = lower_bound(work, nodes, pending=r.pending)  # the same replicas wait
    assert same is not None and bound <= same <= r.bytes_to_fetch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_tight_clusters_are_solved_exactly_not_left_to_greedy(seed):
    """Every node is an arc of the exact program, cold ones too: it places as many replicas
    as greedy or more, fetching less, within a few percent of the bound (when cold nodes
    were rest arcs, two of these seeds fell back to greedy's plan, at 2-6x the bound)."""
    work, nodes = make_cluster(100, 50, load="tight", seed=seed)
    r, g = solve(work, nodes), greedy(work, nodes)
    assert r.note == "optimal"
    assert r.pending_replicas <= g.pending_replicas and r.bytes_to_fetch <= g.bytes_to_fetch
    assert r.bytes_to_fetch <= 1.25 * lower_bound(work, nodes, pending=r.pending)


def test_the_bounds_rest_arcs_charge_a_replica_its_gpus_share_of_a_fetch():
    """An 8-GPU replica fills a node: it cannot share a fetch with the image's 1-GPU
    replicas, so its rest price is the whole fetch, and theirs an eighth of it."""
    from placement.arcs import build_arcs, fits_matrix
    from placement.prices import Prices

    nodes = [node(f"cold{i}") for i in range(3)]
    work = [wl("wide", "img", gpus=8), wl("narrow", "img", replicas=2)]
    prices = Prices(nodes, {"img"})
    arcs = build_arcs(work, prices, fits_matrix(work, prices), budget=10, bound=True)
    price = dict(zip(arcs.rest_cls.tolist(), arcs.rest_price.tolist(), strict=True))
    assert price == {0: pytest.approx(10 * GB), 1: pytest.approx(10 * GB / 8)}


def test_lower_bound_is_below_every_policy_where_rest_arcs_stand_for_nodes():
    work, nodes = make_cluster(400, 150, load="normal", seed=4)  # past the exact size
    assert_bound_below_every_policy(work, nodes)


def test_solver_time_limit_still_gives_a_valid_answer():
    work, nodes = make_cluster(200, 80, load="tight", seed=3)
    r = solve(work, nodes, time_limit=1e-4)
    assert r.pending_replicas <= greedy(work, nodes).pending_replicas


def test_rest_arcs_are_priced_as_packing_onto_the_cheapest_nodes_of_each_model():
    """The grouped reduction in build_arcs against a per-class, per-model recount."""
    import numpy as np

    from placement.arcs import build_arcs, fits_matrix
    from placement.prices import Prices

    work, nodes = make_cluster(300, 60, load="normal", seed=5)
    prices = Prices(nodes, {w.image for w in work})
    fits = fits_matrix(work, prices)
    arcs = build_arcs(work, prices, fits, budget=600)
    warm = {(int(c), int(n)) for c, n in zip(arcs.cls, arcs.node, strict=True)}
    listed = {}  # image -> nodes offered to its classes
    for c, n in warm:
        listed.setdefault(work[c].image, set()).add(n)
    for c, m, price in zip(arcs.rest_cls, arcs.rest_model, arcs.rest_price, strict=True):
        w = work[c]
        on = [n for n in np.flatnonzero(fits[c]) if prices.model[n] == m
              and n not in listed.get(w.image, ())]
        miss = sorted(prices.missing(w)[on])
        per_node = max(1, min(w.replicas, int(prices.free[on].max()) // w.gpus))
        k = min(len(miss), -(-w.replicas // per_node))
        assert price == pytest.approx(sum(miss[:k]) / (k * per_node))


def test_a_time_limit_spent_before_the_optional_tries_skips_them(monkeypatch):
    """Past the deadline, solve completes the first plan once and consolidates nothing."""
    import placement.milp as milp

    work, nodes = make_cluster(200, 40, load="normal", seed=1)
    calls = []
    real = milp.complete
    monkeypatch.setattr(milp, "complete",
                        lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    r = solve(work, nodes, time_limit=1e-4, exact=False)
    assert calls in ([True, True], [])  # one try (two steps), or greedy's fallback
    assert "consolidated" not in r.note


# -- reports and inputs --------------------------------------------------------------------


def test_report_written_by_blobstore_is_read_by_placement():
    objects = MemoryStore()
    gpus = parse_gpus("4xH200:141G")
    gpus[0] = dataclasses.replace(gpus[0], memory_free=10 * GB)  # busy
    write_report(objects, build_report("gpu-1", gpus, 5 * GB, 100 * GB, {"a" * 64: 3 * GB}))
    write_report(objects, build_report("gpu-2", gpus, 0, 100 * GB, {},
                                       now=time.time() - 3600))
    reports, malformed = parse_reports(read_reports(objects))
    nodes, skipped = fresh_nodes(reports, ttl=30)
    skipped = malformed + skipped
    assert [n.id for n in nodes] == ["gpu-1"] and "stale" in skipped[0]
    n = nodes[0]
    assert (n.gpu_model, n.gpus_free, n.gpu_memory) == ("H200", 3, 141 * GB)
    assert n.cached == {"a" * 64: 3 * GB} and n.cache_limit == 100 * GB


def test_malformed_reports_are_skipped_with_a_reason():
    reports, skipped = parse_reports([("nodes/x.json", b"{not json"),
                                      ("nodes/y.json", json.dumps({"version": 9}).encode())])
    nodes, _ = fresh_nodes(reports)
    assert nodes == [] and len(skipped) == 2 and "version 9" in skipped[1]


@pytest.mark.parametrize("doc, field", [
    ([{"image": "x"}], "image_bytes"),
    ([{"image_bytes": 5}], "'image'"),
    ([{"image": "x", "image_bytes": "lots"}], "image_bytes"),
    ([{"image": "x", "image_bytes": 5, "replicas": 0}], "replicas"),
    ([{"image": "x", "image_bytes": 5, "gpus": "two"}], "gpus"),
    ([{"image": "x", "image_bytes": 5, "age": -1}], "age"),
    ({"nope": []}, "list of workloads"),
    ([{"name": "a", "image": "x", "image_bytes": 5}] * 2, "appears twice"),
])
def test_bad_workloads_name_the_field(doc, field):
    with pytest.raises(PlacementInputError, match=field):
        parse_workloads(doc)


def test_place_command(thaw, tmp_path, rich_tree):
    mid = json.loads(thaw("push", str(rich_tree / "etc"), "app:1", "--json").stdout)["manifest"]
    reports = [build_report("n1", parse_gpus("2xL4:24G"), 0, GB, {}),
               build_report("n2", parse_gpus("2xL4:24G"), 0, GB, {mid: 10})]
    (tmp_path / "nodes.json").write_text(json.dumps([r.as_json() for r in reports]))
    (tmp_path / "work.json").write_text(json.dumps([
        {"name": "svc", "image": mid, "image_bytes": 20, "replicas": 5}]))
    out = json.loads(thaw("place", "--workloads", str(tmp_path / "work.json"), "--nodes",
                          str(tmp_path / "nodes.json"), "--json").stdout)
    assert out["pending"] == {"svc": 1} and out["bytes_to_fetch"] == 10 + 20
    from blobstore.store.url import open_store

    write_report(open_store(thaw.store), reports[1])
    (tmp_path / "work.json").write_text(json.dumps([{"image": "app:1", "gpus": 2}]))
    out = json.loads(thaw("place", "--workloads", str(tmp_path / "work.json"),
                          "--json").stdout)
    assert out["assignments"][0]["node"] == "n2"
    (tmp_path / "bad.json").write_text(json.dumps([{"image": mid, "image_bytes": 1,
                                                    "gpus": -2}]))
    proc = thaw("place", "--workloads", str(tmp_path / "bad.json"), "--nodes",
                str(tmp_path / "nodes.json"), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "field 'gpus'" in err and "Traceback" not in err


def test_best_known_lies_between_the_bound_and_every_policy():
    """The integer program solved outright: a placement no cheaper than the bound says any
    can be, and its proof (dual bound) no higher than the placement itself."""
    work, nodes = make_cluster(60, 20, load="tight", seed=0)
    r = solve(work, nodes)
    bound = lower_bound(work, nodes, pending=r.pending)
    found, proof = best_known(work, nodes, pending=r.pending, time_limit=30)
    assert bound <= proof + GB // 100 and proof <= found + GB // 100
    assert found <= r.bytes_to_fetch + GB // 100
    assert best_known([wl("big", "img", gpus=8)], [node("a", free=4)]) is None


class StepClock:
    """A clock that moves ``step`` seconds each time it is read (thread-safe): work that
    reads it as it goes runs out of time after so many steps, whatever the machine."""

    def __init__(self, step: float) -> None:
        import threading

        self.step, self.now, self._lock = step, 0.0, threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


def test_greedy_stops_at_its_deadline_and_leaves_the_rest_pending():
    work, cluster = make_cluster(100, 50, load="normal", seed=0)
    full = greedy(work, cluster)
    assert full.note == "" and full.pending_replicas == 0
    clock = StepClock(1.0)
    r = greedy(work, cluster, deadline=10.0, clock=clock)
    assert r.note.startswith("time limit") and r.pending_replicas > 0
    assert sum(a.replicas for a in r.assignments) < sum(w.replicas for w in work)
    assert clock.now <= 10.0 + 2 * clock.step  # the check, then the result's own reading


@pytest.mark.parametrize("nodes, workloads", [(100, 50), (1000, 200)])
def test_solve_stops_at_its_deadline_greedy_and_completion_included(nodes, workloads):
    """Every stage reads the clock: on one that moves a millisecond a reading, a 2 s limit
    is ~2,000 readings, far fewer than placing every replica one at a time takes."""
    work, cluster = make_cluster(nodes, workloads, load="tight", seed=0)
    clock = StepClock(0.001)
    r = solve(work, cluster, time_limit=2.0, clock=clock)
    assert r.seconds <= 2.0 + 10 * clock.step  # a reading past it, then the result's own
    assert clock.now <= 2.0 + 10 * clock.step  # the greedy thread's readings included


def test_solve_takes_a_snapshots_prices_built_before_it():
    from placement.prices import Prices

    work, cluster = make_cluster(100, 50, load="normal", seed=0)
    prices = Prices(cluster)  # every image the reports name, as a snapshot's
    assert solve(work, cluster, prices=prices).bytes_to_fetch == solve(
        work, cluster).bytes_to_fetch


@pytest.mark.allow_log_warnings  # the image it could not resolve in time, said
def test_a_slow_store_never_holds_up_a_request():
    """The first snapshot is waited for; later ones are read in the background while
    requests answer from the last; an image the store is slow to resolve is scored 0."""
    import threading

    from placement.extender import Extender
    from placement.extenderargs import parse

    now = [0.0]
    held, calls = threading.Event(), []

    def reports():
        calls.append(1)
        if len(calls) > 1:
            held.wait(30)
        return {"a": node("a", cached={"img": 10 * GB})}

    def resolve(ref):
        held.wait(30)
        return "img", 10 * GB

    ext = Extender(reports, resolve, clock=lambda: now[0])
    ext.view.wait = 0.05
    assert list(ext.nodes()) == ["a"]
    now[0] += 60  # stale: read again, in the background, which hangs
    assert list(ext.nodes()) == ["a"] and list(ext.nodes()) == ["a"]
    args = parse({"Pod": {"metadata": {"annotations": {"thaw.dev/image": "x:1"}}},
                  "NodeNames": ["a"]})
    assert ext.prioritize(args) == [{"Host": "a", "Score": 0}]  # not resolved in time
    held.set()
    deadline = time.monotonic() + 30
    while ext.prioritize(args) != [{"Host": "a", "Score": 10}]:
        assert time.monotonic() < deadline
    assert len(calls) == 2  # one read in the background, not one per request
