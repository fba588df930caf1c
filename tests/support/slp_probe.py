#!/usr/bin/env python3
"""Minecraft Server List Ping (Java 1.7+) client, stdlib only.

    slp_probe.py HOST:PORT [--timeout S] [--wait S] [--protocol N] [--ping]

Sends handshake (next state 1) + status request, prints the status JSON exactly as
received on stdout and exits 0; on any failure prints the reason on stderr, exits 1.
--wait S   retry until a status comes back or S seconds have passed.
--protocol handshake protocol number (default -1, "any", like zlh's agent).
--ping     also send a ping (0x01 + long) and check the pong echoes it; the
           round-trip time goes to stderr.
Only meant for loopback test servers.
"""
import argparse
import json
import socket
import struct
import sys
import time

MAX_PACKET = 1 << 21


def varint(value: int) -> bytes:
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        if value & ~0x7F == 0:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def packet(pid: int, body: bytes = b"") -> bytes:
    inner = varint(pid) + body
    return varint(len(inner)) + inner


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_varint(sock: socket.socket) -> int:
    value = 0
    for i in range(5):
        b = recv_exact(sock, 1)[0]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value - (1 << 32) if value & 0x80000000 else value
    raise ValueError("VarInt longer than 5 bytes")


def parse_varint(buf: bytes, pos: int = 0):
    value = 0
    for i in range(5):
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos + i + 1
    raise ValueError("VarInt longer than 5 bytes")


def read_packet(sock: socket.socket):
    length = read_varint(sock)
    if length <= 0 or length > MAX_PACKET:
        raise ValueError(f"bad packet length {length}")
    body = recv_exact(sock, length)
    pid, pos = parse_varint(body)
    return pid, body[pos:]


def status(host: str, port: int, timeout: float, protocol: int, do_ping: bool):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        addr = host.encode()
        hs = varint(protocol) + varint(len(addr)) + addr + struct.pack(">H", port) + varint(1)
        sock.sendall(packet(0x00, hs) + packet(0x00))
        pid, body = read_packet(sock)
        if pid != 0x00:
            raise ValueError(f"status response has packet id {pid:#x}, expected 0x00")
        slen, pos = parse_varint(body)
        raw = body[pos:pos + slen]
        if len(raw) != slen:
            raise ValueError("truncated status string")
        text = raw.decode("utf-8")
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("status JSON is not an object")
        rtt = None
        if do_ping:
            token = int(time.time() * 1000) & 0x7FFFFFFFFFFFFFFF
            t0 = time.monotonic()
            sock.sendall(packet(0x01, struct.pack(">q", token)))
            pid, body = read_packet(sock)
            if pid != 0x01 or body != struct.pack(">q", token):
                raise ValueError(f"bad pong: id {pid:#x} body {body.hex()}")
            rtt = (time.monotonic() - t0) * 1000
        return text, rtt


def main() -> int:
    ap = argparse.ArgumentParser(description="Minecraft SLP status probe")
    ap.add_argument("target", help="HOST:PORT (or HOST with --port)")
    ap.add_argument("port", nargs="?", type=int)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--wait", type=float, default=0.0)
    ap.add_argument("--protocol", type=int, default=-1)
    ap.add_argument("--ping", action="store_true")
    a = ap.parse_args()
    host, port = a.target, a.port
    if port is None:
        host, _, p = a.target.rpartition(":")
        if not host or not p.isdigit():
            ap.error("target must be HOST:PORT")
        port = int(p)
    host = host.strip("[]")
    deadline = time.monotonic() + a.wait
    while True:
        try:
            text, rtt = status(host, port, a.timeout, a.protocol, a.ping)
        except Exception as e:  # noqa: BLE001 - any failure is "no status"
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            print(f"slp_probe: {host}:{port}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(text, flush=True)
        if rtt is not None:
            print(f"slp_probe: pong in {rtt:.1f} ms", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
