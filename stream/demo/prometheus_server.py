"""A real Prometheus server on this machine, scraping the roles a demo or a test started.

It is the same server a deployment runs (Debian's ``prometheus`` package, or a release
binary on PATH), pointed at local targets and loading the alert rules of
``deploy/prometheus/alerts.yml`` when the checkout has them, so the demo's roles can be
explored with the queries of the dashboard and the rules before anything is deployed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

ALERT_RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
HOW_TO_GET_IT = ("Prometheus is not on PATH. Install it (Debian/Ubuntu: sudo apt-get install prometheus; "
                 "elsewhere: unpack a release from https://prometheus.io/download/ and put its `prometheus` binary "
                 "on PATH), or run without --prometheus.")


class PrometheusUnavailable(RuntimeError):
    """No server binary, or the server did not come up."""


def find_prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(HOW_TO_GET_IT)
    return found


class LocalPrometheus:
    """``targets`` maps a job name to host:port addresses serving ``/metrics``."""

    def __init__(self, targets: dict[str, list[str]], workdir: Path, port: int, scrape_interval: str = "2s",
                 host: str = "127.0.0.1") -> None:
        self.binary = find_prometheus()
        self.targets, self.workdir, self.port, self.host = targets, workdir, port, host
        self.scrape_interval = scrape_interval
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen | None = None

    def config_text(self) -> str:
        lines = [f"global: {{scrape_interval: {self.scrape_interval}, evaluation_interval: {self.scrape_interval}}}"]
        if ALERT_RULES.exists():
            lines.append(f"rule_files: [{json.dumps(str(ALERT_RULES))}]")
        lines.append("scrape_configs:")
        for job, addresses in self.targets.items():
            lines.append(f"  - job_name: {json.dumps(job)}\n    static_configs: [{{targets: {json.dumps(addresses)}}}]")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        log = self.workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address={self.host}:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-5:]
                raise PrometheusUnavailable(f"prometheus exited with {self.proc.returncode} (port {self.port} "
                                            "taken?):\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise PrometheusUnavailable(f"prometheus not ready within {timeout:.0f}s (log: {log})")

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer = json.loads(resp.read())
        if answer.get("status") != "success":
            raise PrometheusUnavailable(f"query {expr!r} failed: {answer}")
        return answer["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
