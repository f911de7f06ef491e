"""Static group membership (KIP-345): a restarted consumer takes its partitions straight back.

A consumer that crashes and comes back with a new member id leaves its partitions idle
until the group coordinator notices the old member is gone (`session.timeout.ms`, 6 s by
default) and rebalances every member of the group. With a `group.instance.id` the
coordinator recognises the restarted process as the same member: it hands it the same
partitions at once, without a rebalance, provided it returns within the session timeout.

The id must be stable across restarts of one process and unique among the live members of
a group: `IMAGEGEN_KAFKA_INSTANCE_ID` names the process (Kubernetes: the pod name, from the
downward API, so a container restarted in its pod returns as the same member; the local
supervisor: `<service>-<n>`), and each consumer of the process adds its group (and, where
one process has several consumers in one group, a suffix such as the generator's tier).
Unset or empty: dynamic membership, as before.

Two live processes given the same id fence each other (the older gets a fatal
FENCED_INSTANCE_ID, exits, and its restart fences the other): never share one id between
replicas; a Deployment's pod names are unique.

Graceful shutdown: a static member closing does not leave the group, so its partitions
would wait the session timeout for a member that, under Kubernetes, never returns (a
SIGTERM means the pod is going: scale-down, rollout, eviction; a new pod has a new name).
`KafkaConsumer.close` therefore leaves explicitly (an unsubscribe before the close sends
LeaveGroup even for a static member), so the rest of the group takes the partitions over
at once, as with dynamic membership. Only a crash (SIGKILL, OOM kill, a dead container
restarted in its pod) keeps the membership for the restart to reclaim.
"""

from __future__ import annotations


def instance_id(process: str | None, group: str, *suffix: str) -> str | None:
    """The `group.instance.id` of one consumer of `process` in `group` (None: dynamic)."""
    if not process:
        return None
    return "-".join((process, group, *suffix))
