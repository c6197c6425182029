"""Run a command under one of the book's CPU kernel sets (see ``vanishing.kernels``).

    python tools/kernels.py another-cpu python -m pytest --nbval chapters/
    python tools/kernels.py native python tools/execute.py chapters/05_activations.ipynb

``pinned`` is the set the stored outputs were computed with (importing
``vanishing`` sets it anyway); ``another-cpu`` adds what another x86 CPU
changes under the pin, so the stored outputs must still reproduce under it;
``native`` lets each library pick this machine's fastest kernels.
"""

from __future__ import annotations

import os
import sys

from vanishing.kernels import KERNEL_SETS, environment

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in KERNEL_SETS:
        sys.exit(f"usage: python tools/kernels.py {{{','.join(KERNEL_SETS)}}} COMMAND [ARGS...]\n\n{__doc__}")
    env = environment(sys.argv[1])
    shown = " ".join(f"{k}={env[k]!r}" for k in sorted(env) if k not in os.environ or os.environ[k] != env[k])
    print(f"tools/kernels.py: {sys.argv[1]}: {shown or 'environment unchanged'}", flush=True)
    os.execvpe(sys.argv[2], sys.argv[2:], env)
