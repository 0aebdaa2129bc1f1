"""Process-local counters and the Prometheus text rendering of them (/metrics).

Plain integers updated in the event loop thread: no locks, no allocation on the hot path.
"""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()
gauges: dict[str, float] = {"connections": 0, "subscriptions": 0, "auth_in_flight": 0,
                            "auth_in_flight_max": 0, "webhook_pending": 0,
                            "webhook_last_success_timestamp_seconds": 0}
drops: Counter[str] = Counter()  # deliveries dropped, by cause
# Connections refused, by cause (auth refusal, auth-unavailable, over-capacity, origin, ...);
# counters["connections_refused"] stays their total.
refusals: Counter[str] = Counter()
auth_outcomes: Counter[str] = Counter()
AUTH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
auth_latency = [0] * (len(AUTH_BUCKETS) + 1)
auth_latency_sum = 0.0
# Webhooks (broker.webhooks): events refused or dropped, by cause ("full": over
# BROKER_WEBHOOK_MAX_PENDING at the push; "expired": older than BROKER_WEBHOOK_MAX_AGE;
# "malformed": an entry that is not a JSON object; "unavailable": Redis refused the push,
# broker.lifecycle). The others are counters
# ("webhook_delivered": events, "webhook_failed": attempts) and gauges ("webhook_pending",
# "webhook_last_success_timestamp_seconds": unix time of the last 2xx).
webhook_drops: Counter[str] = Counter()
# The AMQP trigger source (broker.amqpsource): messages dead-lettered, by cause ("too-large",
# "not-json", "not-a-trigger"). The others are counters ("amqp_received", "amqp_published",
# "amqp_requeued") and the gauge "amqp_connected", set once a source runs in the process.
amqp_dead: Counter[str] = Counter()


def auth_outcome(outcome: str, seconds: float) -> None:
    global auth_latency_sum
    auth_outcomes[outcome] += 1
    auth_latency_sum += seconds
    for i, bound in enumerate(AUTH_BUCKETS):
        if seconds <= bound:
            auth_latency[i] += 1
            return
    auth_latency[-1] += 1


def auth_in_flight(n: int) -> None:
    gauges["auth_in_flight"] = n
    gauges["auth_in_flight_max"] = max(gauges["auth_in_flight_max"], n)


def drop(cause: str, n: int = 1) -> None:
    drops[cause] += n


def webhook_dropped(cause: str, n: int = 1) -> None:
    webhook_drops[cause] += n


def amqp_dead_lettered(cause: str, n: int = 1) -> None:
    amqp_dead[cause] += n


def refused(cause: str) -> None:
    """Count one refused connection (any transport) under ``cause``."""
    counters["connections_refused"] += 1
    refusals[cause] += 1


def render() -> str:
    lines = []
    for name, value in gauges.items():
        lines += [f"# TYPE combroker_{name} gauge", f"combroker_{name} {value}"]
    for name in ("triggers", "triggers_received", "deliveries", "direct_messages",
                 "connections_opened", "connections_refused", "rate_limited",
                 "subscription_losses", "auth_shared", "webhook_delivered", "webhook_failed",
                 "amqp_received", "amqp_published", "amqp_requeued"):
        lines += [f"# TYPE combroker_{name}_total counter",
                  f"combroker_{name}_total {counters[name]}"]
    for name, label, counts in (("connections_refused_by_cause", "cause", refusals),
                                ("drops", "cause", drops),
                                ("webhook_dropped", "cause", webhook_drops),
                                ("amqp_dead_lettered", "cause", amqp_dead),
                                ("auth", "outcome", auth_outcomes)):
        lines.append(f"# TYPE combroker_{name}_total counter")
        for key, n in sorted(counts.items()):
            lines.append(f'combroker_{name}_total{{{label}="{key}"}} {n}')
    lines.append("# TYPE combroker_auth_seconds histogram")
    cumulative = 0
    for bound, n in zip((*AUTH_BUCKETS, "+Inf"), auth_latency):
        cumulative += n
        lines.append(f'combroker_auth_seconds_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f"combroker_auth_seconds_sum {auth_latency_sum}")
    lines.append(f"combroker_auth_seconds_count {cumulative}")
    return "\n".join(lines) + "\n"
