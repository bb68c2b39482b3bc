"""A local HTTP server that answers like RunPod's GraphQL API (POST /graphql), for the `runpod`
provider's tests. It follows the documented behaviour (../shared/notes/wave2-facts.md, checked
against runpod-python and runpodctl):

- the key comes as `Authorization: Bearer <key>`; a wrong key is HTTP 401;
- `podFindAndDeployOnDemand` answers HTTP 200 with `data.podFindAndDeployOnDemand: null` and an
  `errors` array ("There are no longer any instances available ...") for a cloud type without
  capacity; otherwise the pod, whose `desiredStatus` already reads RUNNING;
- `pod(input: {podId})` has `runtime: null` while the pod boots (`boot_polls` queries), then a
  runtime whose ports map 22 publicly (`public_ssh=(ip, port)`) or not at all (gateway only);
- `podTerminate` answers `{"data": {"podTerminate": null}}`.

The "pod" itself is the loopback sshd the test started: its SSH is what the gateway or the
public port leads to.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NO_CAPACITY = ("There are no longer any instances available with the requested "
               "specifications. Please refresh and try again.")


class FakeRunPod:
    def __init__(self, key: str, *, capacity: tuple[str, ...] = ("SECURE",),
                 boot_polls: int = 2, public_ssh: tuple[str, int] | None = None,
                 host_id: str = "") -> None:
        self.key = key
        self.capacity = set(capacity)
        self.boot_polls = boot_polls
        self.public_ssh = public_ssh
        self.host_id = host_id  # machine.podHostId: the gateway's user name
        self.pods: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []
        self.terminated: list[str] = []
        self.seen_keys: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = self.headers.get("Authorization", "")
                fake.seen_keys.append(auth)
                if self.path != "/graphql" or auth != f"Bearer {fake.key}":
                    self._send(401, {"errors": [{"message": "Unauthorized"}]})
                    return
                self._send(200, fake.answer(json.loads(body)["query"]))

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/graphql"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, query: str) -> dict[str, Any]:
        if "podFindAndDeployOnDemand" in query:
            cloud = re.search(r"cloudType:\s*(\w+)", query)
            cloud_type = cloud.group(1) if cloud else "ALL"
            self.calls.append({"op": "deploy", "cloud": cloud_type})
            if cloud_type not in self.capacity:
                return {"data": {"podFindAndDeployOnDemand": None},
                        "errors": [{"message": NO_CAPACITY, "path": ["podFindAndDeployOnDemand"]}]}
            pod_id = secrets.token_hex(7)
            host_id = self.host_id or f"{pod_id}-64410d8a"
            self.pods[pod_id] = {"polls": 0, "host_id": host_id, "alive": True}
            return {"data": {"podFindAndDeployOnDemand": {
                "id": pod_id, "desiredStatus": "RUNNING", "imageName": "test",
                "machineId": "m-1", "machine": {"podHostId": host_id}}}}
        m = re.search(r'podId:\s*"([^"]+)"', query)
        pod_id = m.group(1) if m else ""
        if "podTerminate" in query:
            self.calls.append({"op": "terminate", "pod": pod_id})
            if pod_id in self.pods:
                self.pods[pod_id]["alive"] = False
                self.terminated.append(pod_id)
            return {"data": {"podTerminate": None}}
        if re.search(r"\bpod\(", query):
            self.calls.append({"op": "pod", "pod": pod_id})
            pod = self.pods.get(pod_id)
            if pod is None or not pod["alive"]:
                return {"data": {"pod": None}}
            pod["polls"] += 1
            runtime = None
            if pod["polls"] > self.boot_polls:
                ports = [{"ip": "100.65.0.2", "isIpPublic": False, "privatePort": 22,
                          "publicPort": 22, "type": "tcp"}]
                if self.public_ssh:
                    ports.append({"ip": self.public_ssh[0], "isIpPublic": True,
                                  "privatePort": 22, "publicPort": self.public_ssh[1],
                                  "type": "tcp"})
                runtime = {"uptimeInSeconds": pod["polls"], "ports": ports}
            return {"data": {"pod": {"id": pod_id, "desiredStatus": "RUNNING",
                                     "lastStatusChange": "Rented by User",
                                     "runtime": runtime,
                                     "machine": {"podHostId": pod["host_id"]}}}}
        return {"errors": [{"message": f"unsupported query: {query[:80]}"}]}

    def alive(self) -> list[str]:
        return [p for p, v in self.pods.items() if v["alive"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
