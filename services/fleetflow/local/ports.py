"""Ports of the local platform's listeners, chosen once at start so that a restarted child binds the same ones
(endpoints.json, `fleetflow status` and every device's URL stay right)."""

import errno
import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


class PortChoice:
    """Distinct free ports: two listeners of one platform must never be given the same one."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def take(self) -> int:
        port = free_port()
        while port in self.taken:
            port = free_port()
        self.taken.add(port)
        return port

    def take_udp(self) -> int:
        """A free UDP port (CoAP), distinct from the others taken."""
        port = free_udp_port()
        while port in self.taken:
            port = free_udp_port()
        self.taken.add(port)
        return port
