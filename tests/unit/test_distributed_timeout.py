"""run.collective_timeout_s reaches the process group: a rank waiting for a peer gives up after it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

_WAIT_ALONE = textwrap.dedent("""
    from toklip_plugin.train.distributed import init_distributed
    init_distributed("cpu", timeout_s=2)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_whose_peer_never_comes_fails_after_the_configured_timeout_not_torchs_30_minutes():
    """Rank 0 of 2 alone: the rendezvous waits ``timeout_s`` (torch's default for gloo is 30 min)."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WAIT_ALONE], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert done.returncode != 0 and "Timed out after" in done.stderr, done.stderr[-2000:]
    assert elapsed < 60  # import time plus about 2 s of waiting
