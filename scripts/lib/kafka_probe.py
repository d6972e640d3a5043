#!/usr/bin/env python3
"""Kafka readiness probe without dependencies or a JVM start.

Sends one Metadata request (v4: the oldest version Kafka 4.x still accepts)
and succeeds when the broker lists itself. A KRaft broker only starts
serving requests after it has caught up with the metadata log and been
unfenced, so an answer here means topics can be created.

usage: kafka_probe.py HOST PORT   (exit 0 = ready)
"""
import socket
import struct
import sys


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client_id = b"atelier-probe"
    # Request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id.
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    # Body: topics = null (-1, i.e. all topics), allow_auto_topic_creation = false.
    body = struct.pack(">ib", -1, 0)
    req = header + body
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        s.sendall(struct.pack(">i", len(req)) + req)
        size = struct.unpack(">i", read_exact(s, 4))[0]
        data = read_exact(s, size)
    corr, _throttle, nbrokers = struct.unpack_from(">iii", data, 0)
    if corr != 7:
        raise RuntimeError("unexpected correlation id %d" % corr)
    off = 12
    brokers = []
    for _ in range(nbrokers):
        node_id, hlen = struct.unpack_from(">ih", data, off)
        off += 6
        bhost = data[off:off + hlen].decode()
        off += hlen
        bport, rlen = struct.unpack_from(">ih", data, off)
        off += 6 + max(rlen, 0)
        brokers.append((node_id, bhost, bport))
    if not any(b[2] == port for b in brokers):
        print("broker answered but does not list itself yet: %r" % (brokers,), file=sys.stderr)
        return 1
    print("kafka ready: brokers=%r" % (brokers,))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # any failure simply means "not ready yet"
        print("kafka not ready: %s" % e, file=sys.stderr)
        sys.exit(1)
