"""What the local cloud's process table reads from /proc about a process it did not start."""

import subprocess
import sys

from k8simg.clouds.local.process import cpu_seconds


def test_cpu_seconds_counts_a_process_threads_and_says_none_once_it_is_gone():
    # a child that burns about 0.5 s of CPU in a second thread, then waits to be read
    burn = ("import threading, time\n"
            "def spin():\n"
            "    end = time.process_time() + 0.5\n"
            "    while time.process_time() < end: pass\n"
            "t = threading.Thread(target=spin); t.start(); t.join()\n"
            "print('done', flush=True); input()\n")
    p = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "done\n"
        used = cpu_seconds(p.pid)
        assert used is not None and 0.45 <= used < 5, used
    finally:
        p.kill()
        p.wait()
    assert cpu_seconds(p.pid) is None
