"""Real servers for the integration tests, started on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts under ``root``
    (the same root again reopens the same store); → (process, http URI) once it answers."""
    port = port or _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else shutil.which("mlflow"), "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(root / "server.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(1)




class LocalRayCluster:
    """A head and a worker node started with `ray start` on 127.0.0.1 (two raylets, one machine),
    with token authentication on; stopped by killing exactly the processes it started."""

    def __init__(self, root: Path, token: str, cpus_per_node: int = 2) -> None:
        """Clients send the token as a bearer header (``headers``; polymae's Jobs client takes
        it from RAY_AUTH_TOKEN)."""
        self.token = token
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        bin_dir = Path(sys.executable).parent
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
        ray_exe = str(bin_dir / "ray")
        common = ["--block", "--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1",
                  "--object-store-memory", str(300 * 2**20)]
        self.logs = open(root / "ray-nodes.log", "a")
        self.head = self.worker = None
        try:
            self._start(ray_exe, common)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _own_ports() -> list[str]:
        """Two nodes on one machine: each needs its own agent ports (the defaults are fixed)."""
        return ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
                "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port())]

    def _start(self, ray_exe: str, common: list[str]) -> None:
        self.head = subprocess.Popen(
            [ray_exe, "start", "--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true", *common,
             *self._own_ports()],
            env=self.env, stdout=self.logs, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for(1)
        self.worker = subprocess.Popen(
            # its own temp dir: two raylets sharing one would share (and clean) runtime_resources
            [ray_exe, "start", "--address", f"127.0.0.1:{self.port}", *common, *self._own_ports(),
             "--temp-dir", tempfile.mkdtemp(prefix="rw", dir="/tmp")],
            env=self.env, stdout=self.logs, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for(2)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def list_state(self, resource: str, filters: list | None = None) -> list:
        """Ray's State API (nodes, actors, …) with the token."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        api = StateApiClient(self.address, headers=self.headers)
        return api.list(StateResource(resource), ListApiOptions(filters=filters or []), raise_on_missing_output=False)

    def _wait_for(self, nodes: int, timeout_s: float = 120) -> None:
        deadline, last = time.time() + timeout_s, None
        while time.time() < deadline:
            try:
                alive = [n for n in self.list_state("nodes") if n.state == "ALIVE"]
                if len(alive) >= nodes:
                    return
            except Exception as err:  # the dashboard is not up yet
                last = err
            time.sleep(2)
        raise RuntimeError(f"the Ray cluster did not reach {nodes} nodes: {last!r}")

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's `ray start`, raylet and everything else in its process group."""
        import signal

        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)

    def stop(self) -> None:
        import signal

        for proc in (self.worker, self.head):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)  # a head whose worker node was killed can take minutes to shut down
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        # `ray start --head` records itself here; a plain ray.init() would try to join it later
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
