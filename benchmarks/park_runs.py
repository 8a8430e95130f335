"""Carry unfinished study runs across machines that do not keep their disks, through git.

A study run trains for hours and resumes from its latest checkpoint (``moore bench SUITE --run NAME``
continues it), but only where its folder under the runs directory still is. On a machine that starts
empty, ``save`` stores every unfinished run folder small enough to carry (an adapter's checkpoint,
not a full model's) as one commit without parents on the branch ``parked-runs`` of this repository;
``restore`` unpacks it where a later machine's runs go. Each save replaces the last commit instead of
adding to it, so the branch holds only the newest checkpoints (tens of MiB), whatever its age.

    python benchmarks/park_runs.py save /work/runs --results benchmarks/results
    python benchmarks/park_runs.py restore /work/runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

REF = "refs/heads/parked-runs"
SKIP = {".moore.lock", "tensorboard"}  # the lock belongs to a live process; event files are not needed to resume


def git(*args: str, env: dict | None = None, input: bytes | None = None) -> str:
    out = subprocess.run(["git", *args], check=True, capture_output=True, env={**os.environ, **(env or {})},
                         input=input)
    return out.stdout.decode().strip()


def carried_files(folder: Path) -> list[Path]:
    """What a parked run folder holds: everything but the lock, event files and a checkpoint being written."""
    return [p for p in folder.rglob("*") if p.is_file() and not SKIP & set(p.parts)
            and not any(part.endswith(".tmp") for part in p.parts)]


def unfinished(runs_dir: Path, results: Path | None, max_bytes: int) -> list[Path]:
    """Run folders (SUITE/NAME) with a checkpoint whose run file has not landed, small enough to carry."""
    found = []
    for checkpoints in sorted(runs_dir.glob("*/*/checkpoints")):
        folder = checkpoints.parent
        suite, name = folder.parent.name, folder.name
        if results is not None and (results / suite / "runs" / f"{name}.json").is_file():
            continue
        size = sum(p.stat().st_size for p in carried_files(folder))
        if size > max_bytes:
            print(f"{suite}/{name}: {size / 2**20:.0f} MiB, over the limit; not parked")
            continue
        found.append(folder)
    return found


def save(runs_dir: Path, results: Path | None, max_bytes: int) -> None:
    folders = unfinished(runs_dir, results, max_bytes)
    if not folders:
        print("nothing to park")
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        for folder in folders:
            for path in carried_files(folder):
                blob = git("hash-object", "-w", str(path))
                git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path.relative_to(runs_dir)}", env=env)
        tree = git("write-tree", env=env)
    names = ", ".join(f"{f.parent.name}/{f.name}" for f in folders)
    commit = git("commit-tree", tree, "-m", f"parked runs: {names}")
    git("update-ref", REF, commit)
    print(f"parked {names} at {REF} ({commit[:10]})")


def restore(runs_dir: Path) -> None:
    try:
        git("rev-parse", "--verify", REF)
    except subprocess.CalledProcessError:
        print(f"no {REF}: nothing parked")
        return
    archive = subprocess.run(["git", "archive", REF], check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            members = tar.getmembers()
            folders = sorted({Path(*Path(m.name).parts[:2]) for m in members if len(Path(m.name).parts) > 2})
            for folder in folders:  # a folder already here is newer than the parked one, or the same
                if (runs_dir / folder / "checkpoints").is_dir():
                    print(f"{folder}: already here; left as it is")
                    continue
                tar.extractall(runs_dir, members=[m for m in members if Path(m.name).parts[:2] == folder.parts],
                               filter="data")
                print(f"{folder}: restored")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--results", type=Path, help="results folder (SUITE/runs/NAME.json): runs that landed are "
                        "not parked")
    parser.add_argument("--max-mib", type=float, default=64.0, help="park only run folders up to this size")
    args = parser.parse_args()
    if args.action == "save":
        save(args.runs_dir, args.results, int(args.max_mib * 2**20))
    else:
        restore(args.runs_dir)


if __name__ == "__main__":
    main()
