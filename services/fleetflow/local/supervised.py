"""`python -m fleetflow.local.supervised PROGRAM ARGS...`: exec PROGRAM so that it gets SIGTERM once the
`fleetflow up` that started it is gone, as the Python services arrange for themselves (nats-server cannot)."""

import os
import sys

from fleetflow.runtime import service


def main(argv: list[str]) -> None:
    service.stop_with_supervisor()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
