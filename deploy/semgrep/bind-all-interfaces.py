import socket


def bad(port: int) -> None:
    sock = socket.socket()
    # ruleid: sluice-bind-all-interfaces
    sock.bind(("0.0.0.0", port))
    # ruleid: sluice-bind-all-interfaces
    listen = ("::", port)
    print(listen)


def good(host: str, port: int) -> None:
    sock = socket.socket()
    # ok: sluice-bind-all-interfaces
    sock.bind(("127.0.0.1", port))
    # ok: sluice-bind-all-interfaces
    sock.bind((host, port))


def separator(line: str) -> list[str]:
    # ok: sluice-bind-all-interfaces
    return line.split("::")


def stat_name(cluster: str, host: str) -> str:
    # ok: sluice-bind-all-interfaces
    return f"{cluster}::{host}::health_flags::healthy"
