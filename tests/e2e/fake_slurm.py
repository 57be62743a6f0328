"""A stand-in for Slurm's `sbatch`, `srun` and `sacct` on one machine, enough to run a sweep
through submitit's Slurm executor (`hydra/launcher=slurm`) where no cluster exists.

    python fake_slurm.py sbatch SCRIPT   # prints "Submitted batch job N"; runs the job in the background
    python fake_slurm.py srun [--output F] [--error F] ... COMMAND...
    python fake_slurm.py sacct ...       # knows no job: submitit then waits for the result files

`sbatch` keeps a copy of each script and runs its array tasks (`#SBATCH --array=A-B%P`) at most P
at a time, each with the environment Slurm gives an array task (SLURM_ARRAY_JOB_ID,
SLURM_ARRAY_TASK_ID, SLURM_JOB_ID, SLURM_NTASKS, ...). It appends "start I" and "end I" to
`tasks.log`, so a test can check the parallelism. Everything is kept in $FAKE_SLURM_DIR.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def sbatch_flags(text: str) -> dict[str, str]:
    return {key: value for key, value in re.findall(r"^#SBATCH --([\w-]+)(?:=(\S*))?", text, re.MULTILINE)}


def sbatch(script: str) -> None:
    text = Path(script).read_text()
    counter = state_dir() / "next_job_id"
    job_id = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job_id + 1000))  # room for the array tasks' own job ids
    (state_dir() / f"{job_id}.sbatch").write_text(text)
    subprocess.Popen(
        [sys.executable, __file__, "_run_job", script, str(job_id)],
        start_new_session=True,  # outlives this command, as a queued job outlives sbatch
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"Submitted batch job {job_id}")


def run_job(script: str, job_id: int) -> None:
    flags = sbatch_flags(Path(script).read_text())
    array = re.fullmatch(r"(\d+)-(\d+)(?:%(\d+))?", flags.get("array", "0-0"))
    first, last = int(array.group(1)), int(array.group(2))
    parallel = int(array.group(3) or last - first + 1)
    nodes = int(flags.get("nodes", "1"))
    base = {
        **os.environ,
        "SLURM_JOB_NAME": flags.get("job-name", "submitit"),
        "SLURM_NTASKS": str(int(flags.get("ntasks-per-node", "1")) * nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NODELIST": "localhost",
        "SLURM_NODEID": "0",
        "SLURM_CPUS_PER_TASK": flags.get("cpus-per-task", "1"),
    }
    if "array" in flags:
        base["SLURM_ARRAY_JOB_ID"] = str(job_id)
    log = state_dir() / "tasks.log"
    pending, running = list(range(first, last + 1)), {}
    while pending or running:
        while pending and len(running) < parallel:
            task = pending.pop(0)
            env = {**base, "SLURM_JOB_ID": str(job_id + 1 + task) if "array" in flags else str(job_id)}
            if "array" in flags:
                env["SLURM_ARRAY_TASK_ID"] = str(task)
            with log.open("a") as f:
                f.write(f"start {task}\n")
            running[task] = subprocess.Popen(["bash", script], env=env)
        for task, process in list(running.items()):
            if process.poll() is not None:
                with log.open("a") as f:
                    f.write(f"end {task}\n")
                del running[task]
        time.sleep(0.1)


def fill(pattern: str) -> str:
    """Slurm's filename patterns: %A array job, %a array task, %j job, %t task."""
    env = os.environ
    return (
        pattern.replace("%A", env.get("SLURM_ARRAY_JOB_ID", ""))
        .replace("%a", env.get("SLURM_ARRAY_TASK_ID", ""))
        .replace("%j", env["SLURM_JOB_ID"])
        .replace("%t", "0")
    )


def srun(args: list[str]) -> int:
    output = error = None
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            value = fill(args.pop(0))
            output, error = (value, error) if flag == "--output" else (output, value)
        elif "=" not in flag and flag not in ("--unbuffered",):
            args.pop(0)  # a flag with a value this stand-in does not use
    env = {**os.environ, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"}
    with open(output or os.devnull, "a") as out, open(error or os.devnull, "a") as err:
        return subprocess.run(args, env=env, stdout=out, stderr=err).returncode


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "sbatch":
        sbatch(args[-1])
    elif command == "_run_job":
        run_job(args[0], int(args[1]))
    elif command == "srun":
        return srun(args)
    elif command == "sacct":
        print("JobID|State|NodeList")
    else:
        raise SystemExit(f"fake_slurm: unknown command {command}")
    return 0


def install(bin_dir: Path, state: Path) -> dict[str, str]:
    """Put sbatch, srun and sacct on a PATH; returns the environment that uses them."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for command in ("sbatch", "srun", "sacct"):
        tool = bin_dir / command
        tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {command} "$@"\n')
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
