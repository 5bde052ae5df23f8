"""Redis Cluster mode against a real cluster of three primaries (``cluster_support``): nodes
of one coordinator cluster share the slot of their hash tag, an SDK agent completes tasks,
every key on every shard carries its tag, coordinator clusters with other tags (on other
shards) do not see each other, and a resharding of the slot is followed."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2

from agent_harness import eventually
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2
from cluster_support import RedisCluster
from coordinator.config import ConfigError, Settings, load_settings
from coordinator.sdk import Agent, Backoff, Client, TaskContext, TaskState
from coordinator.sdk.errors import RpcError
from coordinator.storage import key_tags, keys
from coordinator.storage.connection import connect_redis, connect_redis_sync
from coordinator.storage.key_tags import slot_of

TAG = "aitbc"


def address(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def tags_on_different_shards(cluster: RedisCluster, count: int) -> list[str]:
    """``count`` tags whose slots are owned by ``count`` different primaries."""
    chosen: dict[int, str] = {}
    for n in itertools.count():
        tag = f"part-{n}"
        chosen.setdefault(cluster.owner_of(slot_of(tag)), tag)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("unreachable")


def every_key(cluster: RedisCluster) -> dict[int, list[str]]:
    return {port: cluster.keys_on(port) for port in cluster.ports}


async def start_sdk_agent(node: Any, agent_id: str) -> tuple[Agent, asyncio.Task[None]]:
    async def handler(task: TaskContext) -> dict[str, Any]:
        return {"doubled": task.data["x"] * 2}

    agent = Agent(
        agent_id,
        handler,
        addresses=address(node),
        handle_signals=False,
        reconnect_backoff=Backoff(initial_s=0.05, max_s=0.3),
    )
    run = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.connected.wait(), 10)
    return agent, run


async def stop_sdk_agent(agent: Agent, run: asyncio.Task[None]) -> None:
    agent.request_stop()
    await asyncio.wait_for(run, 15)


async def test_a_node_serves_from_the_owner_of_its_slot_and_every_key_is_tagged(
    redis_cluster, start_node
):
    seed = next(p for p in redis_cluster.ports if p != redis_cluster.owner_of(slot_of(TAG)))
    node = await start_node(redis_url=f"redis://127.0.0.1:{seed}/0", redis_cluster_tag=TAG)
    reply = await node.health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="idle", agent_type="worker", max_concurrency=1)
    )
    agent, run = await start_sdk_agent(node, "sdk-agent")
    client = Client(address(node))
    try:
        tasks = [await client.submit("double", {"x": i}) for i in range(20)]
        results = [await client.wait(t.task_id, timeout_s=10) for t in tasks]
        assert results == [{"doubled": 2 * i} for i in range(20)]
        assert (await client.get(tasks[0].task_id)).state == TaskState.COMPLETED
    finally:
        await client.close()
        await stop_sdk_agent(agent, run)

    stored = every_key(redis_cluster)
    owner = redis_cluster.owner_of(slot_of(TAG))
    assert {port for port, names in stored.items() if names} == {owner}
    untagged = [name for name in stored[owner] if not name.startswith("{aitbc}")]
    assert untagged == [] and len(stored[owner]) > 20
    assert "{aitbc}agent:idle" in stored[owner] and "{aitbc}agents:all" in stored[owner]


async def test_two_nodes_of_one_coordinator_cluster_share_its_slot(redis_cluster, start_node):
    url = redis_cluster.url(0)
    first = await start_node(redis_url=url, redis_cluster_tag=TAG, node_id="node-a")
    second = await start_node(redis_url=url, redis_cluster_tag=TAG, node_id="node-b")
    agent, run = await start_sdk_agent(second, "on-b")
    client = Client(address(first))
    try:
        task = await client.submit("double", {"x": 5})
        assert await client.wait(task.task_id, timeout_s=10) == {"doubled": 10}
        done = await Client(address(second)).get(task.task_id)
        assert done.state == TaskState.COMPLETED and done.agent_id == "on-b"
    finally:
        await client.close()
        await stop_sdk_agent(agent, run)
    owner = redis_cluster.owner_of(slot_of(TAG))
    stored = redis_cluster.keys_on(owner)
    assert {"{aitbc}coordinator:nodes:node-a", "{aitbc}coordinator:nodes:node-b"} <= set(stored)


async def test_coordinator_clusters_with_other_tags_live_on_other_shards_apart(
    redis_cluster, spawn_node, channel_to
):
    tags = tags_on_different_shards(redis_cluster, 2)
    nodes = [
        spawn_node(
            env={
                "REDIS_URL": redis_cluster.url(0),
                "COORDINATOR_REDIS_CLUSTER_TAG": tag,
                "NODE_ID": "same-node-id",  # channels are tagged: no cross-talk
            }
        )
        for tag in tags
    ]
    for node in nodes:
        node.wait_serving()
    clients = [Client(node.address) for node in nodes]
    agents = [
        await start_sdk_agent(node, f"agent-of-{tag}")
        for node, tag in zip(nodes, tags, strict=True)
    ]
    try:
        submitted = [await client.submit("double", {"x": 3}) for client in clients]
        for client, task in zip(clients, submitted, strict=True):
            assert await client.wait(task.task_id, timeout_s=10) == {"doubled": 6}
            assert (await client.get(task.task_id)).agent_id.startswith("agent-of-")
        for i, client in enumerate(clients):
            other = submitted[1 - i]
            with pytest.raises(RpcError) as refused:
                await client.get(other.task_id)
            assert refused.value.code == grpc.StatusCode.NOT_FOUND
            stub = agent_pb2_grpc.AgentServiceStub(channel_to(nodes[i]))
            reply = await stub.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(statuses=[]))
            assert {a.agent_id for a in reply.agents} == {f"agent-of-{tags[i]}"}
    finally:
        for client in clients:
            await client.close()
        for agent, run in agents:
            await stop_sdk_agent(agent, run)

    stored = every_key(redis_cluster)
    for tag in tags:
        owner = redis_cluster.owner_of(slot_of(tag))
        assert any(name.startswith(f"{{{tag}}}") for name in stored[owner])
        for port, names in stored.items():
            if port != owner:
                assert not any(name.startswith(f"{{{tag}}}") for name in names)
    everything = [name for names in stored.values() for name in names]
    prefixes = tuple(f"{{{tag}}}" for tag in tags)
    assert everything and all(name.startswith(prefixes) for name in everything)


async def submit_steadily(
    node: Any, stop: asyncio.Event, acked: dict[str, str], refusals: list[grpc.StatusCode]
) -> None:
    """Submit tasks with request_ids until ``stop``; each refused one is sent again (same
    request_id) until it is acknowledged. ``acked``: request_id -> task_id."""
    for n in itertools.count():
        if stop.is_set():
            return
        request = task_pb2.SubmitTaskRequest(task_type="double", request_id=f"r{n}")
        request.task_data.update({"x": n})
        while True:
            try:
                reply = await node.tasks.SubmitTask(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                refusals.append(exc.code())
                await asyncio.sleep(0.02)
                continue
            acked[request.request_id] = reply.task.task_id
            break
        await asyncio.sleep(0.005)


async def all_completed(node: Any, task_ids: Iterable[str]) -> None:
    """Every one of ``task_ids`` reaches COMPLETED (within 10 s each)."""
    for task_id in task_ids:
        for _ in range(200):
            reply = await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))
            if reply.task.state == task_pb2.TASK_STATE_COMPLETED:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"task {task_id} was acknowledged but did not complete")


async def test_a_resharding_of_the_slot_is_followed_and_loses_nothing_acknowledged(
    redis_cluster, start_node
):
    slot = slot_of(TAG)
    before = redis_cluster.owner_of(slot)
    target = next(port for port in redis_cluster.ports if port != before)
    node = await start_node(redis_url=redis_cluster.url(0), redis_cluster_tag=TAG)
    agent, run = await start_sdk_agent(node, "sdk-agent")
    stop, acked, refusals = asyncio.Event(), {}, []
    submitter = asyncio.create_task(submit_steadily(node, stop, acked, refusals))
    try:
        await asyncio.sleep(1.0)
        acked_before_move = len(acked)
        moved = await asyncio.to_thread(redis_cluster.move_slot, slot, target)
        moved_at = asyncio.get_running_loop().time()
        count_at_move = len(acked)
        while len(acked) < count_at_move + 20:  # service is back: submits are acknowledged
            assert asyncio.get_running_loop().time() - moved_at < 5, "no submit acknowledged"
            await asyncio.sleep(0.02)
        stop.set()
        await submitter

        assert acked_before_move > 10 and moved > 0
        assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}, refusals
        await all_completed(node, acked.values())
    finally:
        stop.set()
        await stop_sdk_agent(agent, run)
    assert redis_cluster.owner_of(slot) == target
    assert redis_cluster.keys_on(before) == []
    on_target = redis_cluster.keys_on(target)
    assert f"{{{TAG}}}coordinator:nodes:test-node" in on_target  # written after the move
    assert sum(name.startswith(f"{{{TAG}}}task:") for name in on_target) == len(acked)
    print(
        f"\nacknowledged {len(acked)} submits, {len(refusals)} refusals (UNAVAILABLE) around the move"
    )


async def test_health_is_serving_only_while_the_owner_answers(redis_cluster, start_node):
    node = await start_node(redis_url=redis_cluster.url(0), redis_cluster_tag=TAG)
    owner = redis_cluster.owner_of(slot_of(TAG))
    process = redis_cluster.processes[redis_cluster.ports.index(owner)]

    async def status() -> int:
        reply = await node.health.Check(health_pb2.HealthCheckRequest())
        return reply.status

    def status_is(expected: int):  # a probe for eventually
        async def probe() -> bool:
            return await status() == expected

        return probe

    assert await status() == health_pb2.HealthCheckResponse.SERVING
    process.send_signal(signal.SIGSTOP)  # the owner stops answering (shorter than the
    try:  # cluster's node timeout, so the cluster itself does not fail over or go down)
        await eventually(
            status_is(health_pb2.HealthCheckResponse.NOT_SERVING),
            2.0,
            what="NOT_SERVING while the owner of the slot is stopped",
        )
    finally:
        process.send_signal(signal.SIGCONT)
    await eventually(
        status_is(health_pb2.HealthCheckResponse.SERVING),
        4.0,
        what="SERVING once the owner answers again",
    )


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7000/1", "redis://127.0.0.1:7000?db=2"])
def test_a_database_other_than_0_is_refused_in_cluster_mode(url):
    env = {"REDIS_URL": url, "COORDINATOR_REDIS_CLUSTER_TAG": "aitbc"}
    with pytest.raises(
        ConfigError, match="COORDINATOR_REDIS_CLUSTER_TAG: a Redis Cluster has only database 0"
    ):
        load_settings(env)
    with pytest.raises(ConfigError, match="only database 0"):
        connect_redis(Settings(redis_url=url, redis_cluster_tag="aitbc"))
    assert load_settings({"REDIS_URL": url}).redis_cluster_tag == ""  # no tag: a plain Redis


@pytest.mark.parametrize("tag", ["{aitbc}", "a b", "x" * 65])
def test_a_tag_that_would_not_hash_as_one_is_refused(tag):
    with pytest.raises(ConfigError, match="COORDINATOR_REDIS_CLUSTER_TAG"):
        load_settings(
            {"REDIS_URL": "redis://127.0.0.1:7000/0", "COORDINATOR_REDIS_CLUSTER_TAG": tag}
        )


def test_the_synchronous_client_of_the_metrics_follows_a_move(redis_cluster):
    settings = Settings(redis_url=redis_cluster.url(0), redis_cluster_tag=TAG)
    key_tags.use_tag(TAG)  # the fixture untags the names again
    client = connect_redis_sync(settings, "metrics-check")
    try:
        client.hset(keys.TASK_STATS, "tasks_completed", 7)
        slot = slot_of(TAG)
        target = next(p for p in redis_cluster.ports if p != redis_cluster.owner_of(slot))
        assert redis_cluster.move_slot(slot, target) == 1
        with pytest.raises(redis.exceptions.MovedError):  # the one call that learns it
            client.hget(keys.TASK_STATS, "tasks_completed")
        assert client.hget(keys.TASK_STATS, "tasks_completed") == b"7"
        assert redis_cluster.keys_on(target) == [keys.TASK_STATS]
    finally:
        client.close()


async def test_a_failover_of_the_owner_is_followed_and_loses_nothing_acknowledged(start_node):
    """The owner of the slot is killed (SIGKILL) and one of its two replicas takes its slots
    over (CLUSTER FAILOVER TAKEOVER: at once, without waiting for the node timeout). The
    node's seed is the dead primary: it must find the new owner through the nodes it learned.
    With COORDINATOR_REDIS_MIN_REPLICAS=1 every acknowledged submit was on a replica."""
    cluster = RedisCluster()
    try:
        cluster.start()
        owner = cluster.owner_of(slot_of(TAG))
        replica, _ = cluster.add_replica(owner), cluster.add_replica(owner)
        node = await start_node(
            redis_url=f"redis://127.0.0.1:{owner}/0",
            redis_cluster_tag=TAG,
            redis_min_replicas=1,
            redis_replica_timeout_ms=300,
        )
        agent, run = await start_sdk_agent(node, "sdk-agent")
        stop, acked, refusals = asyncio.Event(), {}, []
        submitter = asyncio.create_task(submit_steadily(node, stop, acked, refusals))
        try:
            await asyncio.sleep(1.0)
            cluster.processes[cluster.ports.index(owner)].kill()
            cluster.client(replica).execute_command("CLUSTER FAILOVER", "TAKEOVER")
            killed_at, count = asyncio.get_running_loop().time(), len(acked)
            while len(acked) < count + 20:
                assert asyncio.get_running_loop().time() - killed_at < 15, "no submit acknowledged"
                await asyncio.sleep(0.05)
            back_s = asyncio.get_running_loop().time() - killed_at
            stop.set()
            await submitter
            assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}, refusals
            await all_completed(node, acked.values())
            done_s = asyncio.get_running_loop().time() - killed_at
            print(
                f"\nfailover: 20 submits acknowledged {back_s:.1f} s after the kill, all "
                f"{len(acked)} completed {done_s:.1f} s after; {len(refusals)} refusals"
            )
        finally:
            stop.set()
            await stop_sdk_agent(agent, run)
        assert cluster.owner_of(slot_of(TAG)) == replica
    finally:
        key_tags.use_tag("")
        cluster.close()


async def test_after_a_move_the_nodes_listen_on_the_new_owner_and_hand_tasks_across(
    redis_cluster, start_node
):
    """The channels are sharded (SPUBLISH, SSUBSCRIBE on the owner): when the slot moves,
    Redis unsubscribes each node from them and the node subscribes again on the new owner,
    so an assignment made on one node still reaches the agent on the other."""
    url = redis_cluster.url(0)
    first = await start_node(redis_url=url, redis_cluster_tag=TAG, node_id="node-a")
    second = await start_node(redis_url=url, redis_cluster_tag=TAG, node_id="node-b")
    agent, run = await start_sdk_agent(second, "on-b")
    client = Client(address(first))
    slot = slot_of(TAG)
    target = next(p for p in redis_cluster.ports if p != redis_cluster.owner_of(slot))
    channel = keys.node_channel("node-b")  # tagged: the nodes tagged the names
    try:
        await asyncio.to_thread(redis_cluster.move_slot, slot, target)
        new_owner = redis_cluster.client(target)
        for _ in range(200):
            if new_owner.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("node-b did not subscribe to its channel on the new owner")
        for x in range(5):
            task = await submit_retrying(client, x)
            assert await client.wait(task.task_id, timeout_s=10) == {"doubled": 2 * x}
            assert (await client.get(task.task_id)).agent_id == "on-b"
    finally:
        await client.close()
        await stop_sdk_agent(agent, run)


async def submit_retrying(client: Client, x: int) -> Any:
    """Submit until the node answers other than UNAVAILABLE (it may still learn the move)."""
    for _ in range(50):
        try:
            return await client.submit("double", {"x": x}, request_id=f"after-move-{x}")
        except RpcError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("still UNAVAILABLE")
