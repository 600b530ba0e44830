"""Wait until a Prefect server answers: `python -m flows.wait_for_server URL SECONDS` (exit 1 on timeout)."""

import sys
import time
import urllib.request


def wait(url: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2)
            return True
        except OSError:
            if time.time() > deadline:
                return False
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(0 if wait(sys.argv[1], float(sys.argv[2])) else 1)
