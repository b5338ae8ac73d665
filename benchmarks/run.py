"""Run every benchmark in this folder: python benchmarks/run.py"""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
for script in sorted(here.glob("bench_*.py")):
    print(f"== {script.stem}", flush=True)
    subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=True)
