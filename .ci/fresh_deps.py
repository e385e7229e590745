"""Make this environment hold what a fresh install resolves today.

A machine that installed the project before keeps its older dependencies
(pip leaves satisfied requirements alone), so a suite that passes there may
fail on a fresh clone in a new venv: a newer `regex` with newer Unicode
tables did exactly that. This asks pip which packages a fresh resolution
would pick (--dry-run --upgrade --upgrade-strategy eager), prints every
difference, and installs those versions, so CI tests what a new user gets.
"""

import json
import subprocess
import sys

cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--upgrade", "--upgrade-strategy", "eager",
       "--report", "-", "-e", ".[test]"]
report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
stale = []
for item in report.get("install", []):
    meta = item["metadata"]
    if meta["name"].lower() == "gpubpe":
        continue
    stale.append(f"{meta['name']}=={meta['version']}")
if not stale:
    print("fresh_deps: every dependency is at the version a fresh install resolves today")
    sys.exit(0)
print("fresh_deps: a fresh install would get " + ", ".join(stale) + ": installing them")
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *stale], check=True)
