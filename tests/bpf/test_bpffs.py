"""bpffs is mounted at most once, also when several agents start at the same moment.

The race runs in a private mount namespace (``unshare -m --propagation private``) on fresh
directories under the test's tmp_path: the host never sees those mounts, and they vanish with the
namespace when its last process exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bpf.loader import BPFFS, ensure_bpffs, is_bpffs

REPO = Path(__file__).resolve().parents[2]

# Each round: WORKERS processes wait on one barrier, then all call ensure_bpffs(dir) at once;
# afterwards the bpf mounts at dir are counted in this namespace's mountinfo.
RACE = r"""
import json, multiprocessing, sys, traceback
from pathlib import Path
from bpf.loader import ensure_bpffs

def worker(barrier, root, errors):
    barrier.wait()
    try:
        ensure_bpffs(root)
    except BaseException:
        errors.put(traceback.format_exc())

def bpf_mounts(root):
    count = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            if fields.split()[4] == str(root) and rest.split()[0] == "bpf":
                count += 1
    return count

base, rounds, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
result = {"mounts": [], "errors": []}
for n in range(rounds):
    root = base / f"round{n}"
    root.mkdir()
    barrier, errors = multiprocessing.Barrier(workers), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(barrier, root, errors))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    while not errors.empty():
        result["errors"].append(errors.get())
    result["mounts"].append(bpf_mounts(root))
print(json.dumps(result))
"""


def test_agents_starting_together_mount_bpffs_exactly_once(tmp_path: Path) -> None:
    rounds, workers = 4, 6
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private",
         sys.executable, "-c", RACE, str(tmp_path), str(rounds), str(workers)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errors"] == []
    assert result["mounts"] == [1] * rounds, f"bpf mounts per fresh directory: {result['mounts']}"


def test_an_existing_bpffs_is_recognised_by_its_filesystem_type(tmp_path: Path) -> None:
    assert is_bpffs(BPFFS)
    assert not is_bpffs(tmp_path)
    before = Path("/proc/self/mountinfo").read_text()
    ensure_bpffs(BPFFS)  # already bpffs: nothing is mounted
    assert Path("/proc/self/mountinfo").read_text() == before
