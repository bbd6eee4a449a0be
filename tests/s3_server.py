"""An S3-compatible server on loopback for tests and benchmarks: moto's `moto_server` in a
subprocess on a free port, with the environment a user of it sets (credentials,
`AWS_ENDPOINT_URL`, no AWS config files). The one place a moto server is started; a plain
module, so any test file (or a benchmark) can start one:

    with S3Server() as s3:                       # any key may do anything
        s3.make_bucket("slides")
        monkeypatch.setattr(os, "environ", {**os.environ, **s3.env})

    with S3Server(users={"admin": ADMIN, "reader": READ_ONLY}) as s3:   # IAM checked
        s3.access_keys["reader"]                 # (access key id, secret) of each user

With `users`, IAM is on: the server lets exactly the requests that create those users through
unauthenticated (`INITIAL_NO_AUTH_ACTION_COUNT`), then checks every request against the
users' policies, so wrong credentials and denied writes are the server's own answers; `env`,
`client()` and `make_bucket` use the first user's keys.

`log=PATH` keeps the server's request log; `requests()` reads it back as S3 operations
(GET, HEAD, PUT, POST, LIST, DELETE), which is how benchmarks/bench_object_storage.py counts
what a run asks of the store, from every process that talks to it.

`available()` says why not (moto[server] or s3fs missing), for a pytest skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

REGION = "us-east-1"
# IAM policy statements for `S3Server(users=...)`
ADMIN = [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]
WRITES = ["s3:Put*", "s3:CreateMultipartUpload", "s3:UploadPart"]
READ_ONLY = [*ADMIN, {"Effect": "Deny", "Action": WRITES, "Resource": "*"}]
_IAM_CALLS_PER_USER = 3  # create_user, put_user_policy, create_access_key
# a request line of werkzeug's log (moto_server), colour codes and all
_COLOUR = r"(?:\x1b\[[0-9;]*m)*"
_REQUEST = re.compile(rf'"{_COLOUR}([A-Z]+) (\S+) HTTP/[0-9.]+{_COLOUR}" (\d{{3}})')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """None when a server can start here, else why not."""
    for module, pkg in (("moto", "moto[server]"), ("boto3", "boto3"), ("s3fs", "s3fs")):
        try:
            __import__(module)
        except ImportError:
            return f"{pkg} is not installed"
    if _executable() is None:
        return "moto_server is not beside the interpreter (pip install 'moto[server]')"
    return None


def _executable() -> str | None:
    return shutil.which("moto_server", path=str(Path(sys.executable).parent))


class S3Server:
    """`moto_server -H 127.0.0.1 -p PORT`; `env` is what a client of it sets.

    `users`: IAM user name -> policy statements (`ADMIN`, `READ_ONLY`, or your own); none:
    no IAM, any key is accepted. `access_keys`: each user's (access key id, secret)."""

    def __init__(self, extra_env: dict[str, str] | None = None,
                 users: dict[str, list[dict[str, Any]]] | None = None,
                 log: Path | None = None):  # fmt: skip
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(extra_env or {})
        self.users = dict(users or {})
        self.log = Path(log) if log else None
        self.access_keys: dict[str, tuple[str, str]] = {}
        self.proc: subprocess.Popen | None = None
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }  # fmt: skip

    def start(self, timeout: float = 30) -> S3Server:
        exe = _executable()
        if exe is None:
            raise RuntimeError("moto_server not found")
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115
        if self.users:  # the calls creating the users pass unauthenticated, nothing after
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_IAM_CALLS_PER_USER * len(self.users))
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        if self.log:
            out.close()  # the server holds its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("moto_server did not start")
        try:
            self._create_users()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_users(self) -> None:
        import boto3

        if not self.users:
            return
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        for user, statements in self.users.items():
            iam.create_user(UserName=user)
            policy = {"Version": "2012-10-17", "Statement": statements}
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            k = iam.create_access_key(UserName=user)["AccessKey"]
            self.access_keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        first = self.access_keys[next(iter(self.users))]
        self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"] = first

    def client(self, user: str | None = None) -> Any:
        """A boto3 S3 client of this server (as `user`; default: `env`'s keys)."""
        import boto3

        key, secret = self.access_keys[user] if user else (self.env["AWS_ACCESS_KEY_ID"],
                                                    self.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=key, aws_secret_access_key=secret,
        )  # fmt: skip

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix` (paged)."""
        out = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)  # fmt: skip
        for page in pages:
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def requests(self, settle: float = 0.3) -> list[tuple[str, int]]:
        """(operation, HTTP status) of every request the server has answered, oldest first
        (`log` must be set). A line is logged after its response is sent: wait until the log
        has not grown for `settle` seconds. Operations: LIST (GET of a bucket), GET, HEAD,
        PUT (objects and multipart parts), POST (multipart create / complete), DELETE."""
        if self.log is None:
            raise RuntimeError("S3Server(log=PATH) keeps the request log")
        size, steady = -1, time.monotonic()
        while time.monotonic() - steady < settle:
            now = self.log.stat().st_size
            if now != size:
                size, steady = now, time.monotonic()
            time.sleep(0.05)
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _REQUEST.search(line)
            if m:
                out.append((_operation(m.group(1), m.group(2)), int(m.group(3))))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _operation(method: str, target: str) -> str:
    """The S3 operation class of a path-style request (`/bucket[/key][?query]`)."""
    path, _, query = target.partition("?")
    has_key = "/" in path.strip("/")
    if method == "GET" and (not has_key or "list-type" in parse_qs(query, True)):
        return "LIST"
    return method
