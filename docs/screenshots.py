"""Take the README's dashboard screenshots: the Ray dashboard during the demo search, optuna-dashboard after it.

    apt-get install -y chromium chromium-driver     # Debian's browser and its WebDriver (no browser download)
    pip install -e ".[screenshots]"                 # selenium and optuna-dashboard
    python docs/screenshots.py                      # runs the demo search once, with --optuna-storage

Writes, under docs/img/ (or --out):
    ray-dashboard-token.png   what a browser without the token sees: the dashboard asks for it
    ray-dashboard.png         the dashboard's Actors view while trials run: one actor per running trial,
                              with its log, stack trace and flame graph a click away
    optuna-dashboard.png      the demo's study, read from the database the search stored it in

The search's own files go to a temporary folder (--keep DIR keeps them). Chromium runs headless with
a fresh profile and without background networking (a closed network refuses its update and sync
connections). The Ray dashboard requires a token (local ray.init() since Ray 2.59); the browser signs
in as the dashboard's own page does: POST /api/authenticate with `Authorization: Bearer <token>`,
the token being what `ray get-auth-token` prints, sets the session cookie.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser(profile: Path, size: tuple[int, int]):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def start_search(work: Path) -> tuple[subprocess.Popen, str]:
    """The demo search with its study in work/study.db; returns the process and the dashboard URL."""
    argv = [sys.executable, str(REPO / "tuning" / "search.py"), "--storage-path", str(work / "ray"),
            "--name", "demo", "--export-dir", str(work / "export"), "--optuna-storage", f"sqlite:///{work}/study.db"]
    log = open(work / "search.log", "w")  # noqa: SIM115  (open for the life of the process)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"Ray dashboard: (http://\S+)", (work / "search.log").read_text())
        if found:
            return proc, found.group(1)
        time.sleep(1)
    raise SystemExit(f"the search printed no dashboard URL; see {work / 'search.log'}")


def wait_for_trials(experiment: Path, running: int, timeout: float = 600) -> None:
    """Until `running` trials have reported an epoch: the dashboard then shows the search at work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(p.stat().st_size > 0 for p in experiment.glob("*/result.json")) >= running:
            return
        time.sleep(2)
    raise SystemExit(f"fewer than {running} trials reported within {timeout:.0f} s")


def shoot_ray(url: str, profile: Path, out: Path) -> None:
    token = subprocess.run(["ray", "get-auth-token"], capture_output=True, text=True, check=True).stdout.strip()
    driver = browser(profile, (1400, 720))
    try:
        driver.get(f"{url}/#/jobs")  # the page's first API call is refused: it opens the token dialog
        time.sleep(6)
        save(driver, out / "ray-dashboard-token.png")
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/authenticate', {method: 'POST', headers: {Authorization: 'Bearer ' + arguments[0]}})"
            ".then(r => done(r.status), e => done(String(e)));", token)
        if status != 200:
            raise SystemExit(f"POST /api/authenticate answered {status}")
        driver.get(f"{url}/#/actors")
        driver.refresh()  # a hash change alone would keep the open dialog
        time.sleep(8)
        save(driver, out / "ray-dashboard.png")
    finally:
        driver.quit()


def shoot_optuna(storage: str, profile: Path, out: Path, port: int = 8089) -> None:
    server = subprocess.Popen(["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies")
        driver = browser(profile, (1400, 1250))
        try:
            driver.get(f"http://127.0.0.1:{port}/dashboard/studies/1")  # the only study of a new database
            time.sleep(8)  # the plots render client-side
            save(driver, out / "optuna-dashboard.png")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait()


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                json.loads(response.read())
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def save(driver, path: Path) -> None:
    """A PNG reduced to 256 colours: a dashboard's flat colours survive it, and the file is a few times smaller."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "img"), help="folder for the PNGs (default docs/img)")
    parser.add_argument("--keep", metavar="DIR", help="run the search in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hyperiqa-shots-") as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        proc, url = start_search(work)
        try:
            wait_for_trials(work / "ray" / "demo", running=3)
            shoot_ray(url, work / "chrome-ray", out)
            if proc.wait() != 0:
                raise SystemExit(f"the search failed; see {work / 'search.log'}")
        finally:
            if proc.poll() is None:
                proc.terminate()
        shoot_optuna(f"sqlite:///{work}/study.db", work / "chrome-optuna", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
