#!/usr/bin/env python3
"""Forward edgereg live readings (JSON lines on stdin) to the analyzer, over a serial line or UDP.

    edgereg infer model.onnx --camera 0 --jsonl | python3 forward_readings.py --udp 192.168.1.50:5005
    edgereg infer model.onnx --camera 0 --jsonl | python3 forward_readings.py --serial /dev/ttyTHS1

Each reading goes out as one line of compact JSON: a "\\n"-terminated line on the serial port, one
datagram per reading over UDP. Lines that are not JSON objects (a stray log line) are reported on
stderr and skipped, so the analyzer only ever sees whole readings. Serial needs pyserial
(``pip install pyserial``); UDP needs only Python. Exit status: 0 at the end of input (or after
--max-lines), 2 on a usage error, 1 when the link fails (systemd then restarts the service).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Iterable


class UdpLink:
    """One datagram per reading to HOST:PORT."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--udp expects HOST:PORT, got {address!r} (e.g. 192.168.1.50:5005)")
        self.target = (host, int(port))
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, line: bytes) -> None:
        self.socket.sendto(line, self.target)

    def close(self) -> None:
        self.socket.close()


class SerialLink:
    """Newline-terminated readings on a serial port (8N1 at ``baud``)."""

    def __init__(self, device: str, baud: int) -> None:
        try:
            import serial  # pyserial
        except ImportError:
            raise ValueError("--serial needs pyserial: pip install pyserial (or forward over --udp)") from None
        self.port = serial.Serial(device, baudrate=baud, timeout=1, write_timeout=2)

    def send(self, line: bytes) -> None:
        self.port.write(line + b"\n")

    def close(self) -> None:
        self.port.close()


def forward(lines: Iterable[str], link, *, only_stable: bool = False, max_lines: int | None = None) -> int:
    """Send each JSON reading in ``lines`` over ``link``; returns how many were sent."""
    sent = 0
    if max_lines is not None and max_lines < 1:
        return sent
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            reading = json.loads(line)
        except json.JSONDecodeError as exc:
            print(f"forward_readings: line {number} is not JSON ({exc.msg}); skipped", file=sys.stderr)
            continue
        if not isinstance(reading, dict):
            print(f"forward_readings: line {number} is not a JSON object; skipped", file=sys.stderr)
            continue
        if only_stable and not reading.get("stable", False):
            continue
        link.send(json.dumps(reading, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        sent += 1
        if max_lines is not None and sent >= max_lines:
            break  # now, not at the next line: a live camera pipe may not send one soon
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--udp", metavar="HOST:PORT", help="send each reading as one UDP datagram")
    target.add_argument("--serial", metavar="DEVICE", help="write each reading as a line to a serial port")
    parser.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200)")
    parser.add_argument("--only-stable", action="store_true", help="forward only readings marked stable")
    parser.add_argument("--max-lines", type=int, metavar="N", help="stop after N readings (for a dry run)")
    args = parser.parse_args(argv)
    try:
        link = UdpLink(args.udp) if args.udp else SerialLink(args.serial, args.baud)
    except (ValueError, OSError) as exc:
        print(f"forward_readings: {exc}", file=sys.stderr)
        return 2
    try:
        sent = forward(sys.stdin, link, only_stable=args.only_stable, max_lines=args.max_lines)
    except OSError as exc:
        print(f"forward_readings: the link failed: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
    print(f"forward_readings: {sent} readings sent", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
