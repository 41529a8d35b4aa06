"""The real llama.cpp server as a child of a parent that ignores SIGTERM: every stop of this
engine takes the whole `stop_timeout_s` and ends with SIGKILL (as a wedged engine would).

Configured as `engines.llamacpp.command: [python, slow_stop.py]`.
"""

import signal
import subprocess
import sys
import time


def main() -> None:
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", *sys.argv[1:]])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after the fork: the server keeps its default
    server.wait()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
