"""How fast `cloudmail-admin import` creates users: N users with plain passwords, end to end.

Writes a config and a CSV of N users (one mailbox each, an alias for every fourth) into a
temporary folder, adds the domain, then times the real `cloudmail-admin import` as a subprocess,
so process start, argon2id hashing in the `auth` pool and the one write transaction all count.

    .venv/bin/python benchmarks/import_users.py [--users N] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAIN = "bench.example"


def write_csv(path: Path, users: int) -> None:
    """N users `userI` with password `password-I`, mailbox `userI@DOMAIN`, every 4th an alias."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["username", "password", "display_name", "mailboxes", "aliases"])
        for i in range(users):
            alias = f"alias{i}@{DOMAIN}" if i % 4 == 0 else ""
            out.writerow([f"user{i}", f"password-{i}", f"User {i}", f"user{i}@{DOMAIN}", alias])


def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command; stop with its stderr when it fails."""
    done = subprocess.run([sys.executable, "-m", "cloudmail.admin.cli", "--config", str(config),
                           *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cloudmail-admin {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="how many users (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cloudmail-bench-"))
    config = folder / "cloudmail.toml"
    config.write_text(f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "{folder / "data"}"\n',
                      encoding="utf-8")
    users_csv = folder / "users.csv"
    write_csv(users_csv, options.users)
    admin(config, "domain", "add", DOMAIN)

    start = time.monotonic()
    done = admin(config, "import", str(users_csv))
    elapsed = time.monotonic() - start
    print(done.stdout.strip())
    print(f"wall time {elapsed:.2f} s for {options.users} users: "
          f"{options.users / elapsed:.0f} users/s")
    if options.keep:
        print(f"kept {folder}")
    else:
        import shutil
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
