"""A stand-in for `python -m hyperiqa.train` in tests of tuning/engine/local_runs.py: the same command line and
run-folder contract (config.yaml in, metrics.jsonl and last/ out, --resume continues), no torch.

Each call appends its argv to <out>/calls.txt. A config with seed FAIL_SEED fails (exit 3) after printing
FAIL_MESSAGE; $FAKE_EPOCH_S seconds pass per epoch (default 0). A config with seed STALL_SEED stops itself
(SIGSTOP) after the first epoch each call writes, unless that was its last: a hung run for the stall watchdog.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

FAIL_SEED = 13
FAIL_MESSAGE = "boom: this run fails on purpose"
STALL_SEED = 17


def main(argv: list[str]) -> int:
    out = Path(argv[argv.index("--out") + 1])
    with open(out / "calls.txt", "a") as fh:
        fh.write(" ".join(argv) + "\n")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    print(f"fake training of {out.name}, seed {cfg['seed']}", flush=True)
    if cfg["seed"] == FAIL_SEED:
        print(FAIL_MESSAGE, flush=True)
        return 3
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if "--resume" in argv and metrics.exists() else []
    for epoch in range(len(lines) + 1, cfg["epochs"] + 1):
        time.sleep(float(os.environ.get("FAKE_EPOCH_S", "0")))
        status = "completed" if epoch == cfg["epochs"] else "running"
        lines.append(json.dumps({"epoch": epoch, "val_srcc": 0.1 * epoch, "test_srcc": 0.05 * epoch + 0.01 * cfg["seed"],
                                 "train_srcc": None, "lr_backbone": 1e-3, "lr_head": 1e-2, "status": status}))
        metrics.write_text("".join(line + "\n" for line in lines))
        (out / "last").mkdir(exist_ok=True)
        (out / "last" / "trainer_state.pt").write_text(str(epoch))
        if cfg["seed"] == STALL_SEED and status != "completed":
            os.kill(os.getpid(), signal.SIGSTOP)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
