"""Import an `export --format label-studio` file into a running Label Studio and read it back (a by-hand check).

The suite validates the tasks with Label Studio's own format validation (label-studio-sdk, tests/
test_export_formats.py); starting a real server takes ~40 s, too slow for it. This script is that server check:

    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/data \\
        label-studio start --no-browser --internal-host 127.0.0.1 --port 18765 \\
        --username admin@example.com --password PASSWORD
    vitpose-batch export OUTPUT tasks.json --format label-studio --image-prefix /data/photos/=/data/local-files/?d=photos/
    python tests/label_studio_live.py http://127.0.0.1:18765 admin@example.com PASSWORD tasks.json --local /data/photos

It logs in with a session (Label Studio 1.23 turns legacy API tokens off per organization), creates a project with
the labeling config written beside the tasks, imports them, connects the local folder as Local Files storage, and
checks that every task and prediction came back as written and that the first task's image is served. Exit 0 when
all holds; a line naming what did not, otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests


def login(base: str, user: str, password: str) -> tuple[requests.Session, dict]:
    session = requests.Session()
    session.get(f"{base}/user/login/", timeout=30)
    answer = session.post(f"{base}/user/login/", allow_redirects=False, timeout=30,
                          data={"email": user, "password": password,
                                "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
                          headers={"Referer": f"{base}/user/login/"})
    if answer.status_code != 302:
        sys.exit(f"login as {user} failed ({answer.status_code})")
    return session, {"X-CSRFToken": session.cookies.get("csrftoken", ""), "Referer": f"{base}/"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="Label Studio's URL")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("tasks", help="the exported tasks JSON (its .label_config.xml beside it)")
    parser.add_argument("--local", help="folder to connect as Local Files storage (images served from it)")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    tasks_file = Path(args.tasks)
    written = json.loads(tasks_file.read_text())
    config = tasks_file.with_suffix(".label_config.xml").read_text()
    session, headers = login(base, args.user, args.password)

    project = session.post(f"{base}/api/projects", json={"title": tasks_file.stem, "label_config": config},
                           headers=headers, timeout=30)
    project.raise_for_status()
    pid = project.json()["id"]
    imported = session.post(f"{base}/api/projects/{pid}/import", data=tasks_file.read_bytes(), timeout=300,
                            headers={**headers, "Content-Type": "application/json"})
    imported.raise_for_status()
    counts = imported.json()
    predictions = sum(len(t.get("predictions", [])) for t in written)
    if (counts["task_count"], counts["prediction_count"]) != (len(written), predictions):
        sys.exit(f"imported {counts['task_count']} tasks / {counts['prediction_count']} predictions, "
                 f"wrote {len(written)} / {predictions}")
    if args.local:
        storage = session.post(f"{base}/api/storages/localfiles", headers=headers, timeout=30,
                               json={"project": pid, "path": args.local, "use_blob_urls": False, "title": "images"})
        storage.raise_for_status()

    listed = session.get(f"{base}/api/tasks", params={"project": pid, "page_size": 1}, headers=headers, timeout=30)
    listed.raise_for_status()
    first = listed.json()["tasks"][0]
    task = session.get(f"{base}/api/tasks/{first['id']}", headers=headers, timeout=30).json()
    source = next(t for t in written if t["data"]["image"] == task["data"]["image"])
    back = session.get(f"{base}/api/predictions", params={"task": first["id"]}, headers=headers, timeout=30).json()
    if [p["result"] for p in back] != [p["result"] for p in source.get("predictions", [])]:
        sys.exit(f"task {first['id']}: its predictions did not come back as written")
    image = session.get(base + task["data"]["image"] if task["data"]["image"].startswith("/") else
                        task["data"]["image"], headers=headers, timeout=30)
    if args.local and (image.status_code != 200 or not image.headers.get("content-type", "").startswith("image/")):
        sys.exit(f"image {task['data']['image']} is not served ({image.status_code})")
    print(f"project {pid}: {len(written)} tasks and {predictions} predictions imported and read back; "
          f"first image {'served' if args.local else 'not checked'}")


if __name__ == "__main__":
    main()
