"""An engine command that never becomes ready and ignores SIGTERM, with a child that does the same.

Configured as `engines.llamacpp.command: [python, hang.py]`; the runner appends the llama.cpp
arguments (`--model PATH --n_ctx N ...`), so both processes name the model in their command line.
Only SIGKILL ends them.
"""

import os
import signal
import subprocess
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = sys.argv[1:]
    role = "child" if args[:1] == ["--child"] else "parent"
    print(f"hang.py {role} pid {os.getpid()}: loading {' '.join(args)}", flush=True)
    if role == "parent":
        subprocess.Popen([sys.executable, __file__, "--child", *args])
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
