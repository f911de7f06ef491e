"""librdkafka's own mock broker, for real client errors without a real broker.

confluent-kafka exposes the mock cluster only as `test.mock.num.brokers`, without a way to
inject errors; its C API (`rd_kafka_mock_*`) can, through ctypes on the librdkafka that the
confluent-kafka wheel bundles. A cluster of our own (on a handle of our own) leaves the
client under test untouched: it just gets the cluster's bootstrap address.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import confluent_kafka

PRODUCE_API = 0  # Kafka protocol ApiKey of ProduceRequest


def _librdkafka() -> ctypes.CDLL | None:
    bundled = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    candidates = [str(p) for p in sorted(bundled.glob("librdkafka*.so*"))]
    system = ctypes.util.find_library("rdkafka")
    if system:
        candidates.append(system)
    for candidate in candidates:
        lib = ctypes.CDLL(candidate)
        if hasattr(lib, "rd_kafka_mock_push_request_errors_array"):
            return lib
    return None


class MockCluster:
    def __init__(self, lib: ctypes.CDLL, handle: int, cluster: int) -> None:
        self._lib = lib
        self.handle = handle
        self.cluster = cluster
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()

    def fail_produce(self, *codes: int) -> None:
        """The next len(codes) Produce requests get these error codes, in order."""
        errors = (ctypes.c_int * len(codes))(*codes)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self.cluster, PRODUCE_API, len(codes), errors
        )

    def delay(self, rtt_ms: int, broker: int = 1) -> None:
        """Every response of `broker` (ids count from 1) takes `rtt_ms` from now on."""
        self._lib.rd_kafka_mock_broker_set_rtt(self.cluster, broker, rtt_ms)


@contextmanager
def mock_cluster(brokers: int = 1) -> Iterator[MockCluster]:
    """A mock cluster of `brokers`; raises LookupError where librdkafka cannot be reached."""
    lib = _librdkafka()
    if lib is None:
        raise LookupError("no librdkafka with the mock cluster API")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_broker_set_rtt.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int]
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int16,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_int),
    ]
    errstr = ctypes.create_string_buffer(512)
    # The cluster's owner: a bare producer handle (rd_kafka_new takes over the conf).
    handle = lib.rd_kafka_new(0, lib.rd_kafka_conf_new(), errstr, len(errstr))
    if not handle:
        raise LookupError(f"rd_kafka_new failed: {errstr.value.decode()}")
    cluster = lib.rd_kafka_mock_cluster_new(handle, brokers)
    if not cluster:
        lib.rd_kafka_destroy(handle)
        raise LookupError("rd_kafka_mock_cluster_new failed")
    try:
        yield MockCluster(lib, handle, cluster)
    finally:
        lib.rd_kafka_mock_cluster_destroy(cluster)
        lib.rd_kafka_destroy(handle)
