"""A reward behind HTTP: the client component (`reward.servers`) and `rest reward serve`.

    reward:
      servers: {judge: {url: "http://10.0.0.5:8000/score", timeout_s: 60, retries: 3}}
      components: {chrf: 1.0, judge: 1.0}                 # writes reward_chrf and reward_judge

The protocol, one POST per batch of at most `batch_size` rows, JSON both ways:

    request:  {"sources": [...], "completions": [...], "references": [... or null], "columns": {"source_id": [...],
               ...the rows' other data columns...}}
    answer:   {"rewards": [one number in [0, 1] or null per row]}      (status 200; anything else is an error)

A request that fails to connect, times out (`timeout_s`) or gets a 5xx answer is tried again after 1, 2, 4 ... s,
`retries` times; then the shard fails with one line naming the server, and nothing is published (the same command
resumes once the server is back). A 4xx answer, an answer that is not that JSON, or values that are not one per row
in [0, 1] fail at once. `rest reward serve --config CONFIG` serves the reward of any run config over this protocol
(on 127.0.0.1 unless --host says otherwise), so a pretrained reward model can live on a GPU machine and the sampler
elsewhere. Lineage: the server's name and url are in the Grow key; what the server runs is its own: put a version
in the url (/score/v2) when it changes.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from rest.errors import RestError
from rest.rewards.functions import check_values
from rest.rewards.scorer import Scorer

log = logging.getLogger("rest")


def _post(url: str, body: bytes, timeout_s: float) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (the user's url)
        return json.loads(response.read())


class _Retry(Exception):
    pass


def ask(name: str, server, payload: dict[str, Any]) -> list:
    """The server's `rewards` for one batch, after retries with back-off; a RestError that says what went wrong."""
    body = json.dumps(payload, allow_nan=False).encode()
    tries = server.retries + 1
    last = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(min(30.0, 2.0 ** (attempt - 1)))
        try:
            answer = _post(server.url, body, server.timeout_s)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[-300:]
            last = f"answered HTTP {exc.code}: {text.strip() or exc.reason}"
            if exc.code < 500:
                break  # the request is wrong: asking again gives the same answer
            continue
        except TimeoutError:
            last = f"did not answer within timeout_s={server.timeout_s} s"
            continue
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                last = f"did not answer within timeout_s={server.timeout_s} s"
            else:
                last = f"is down or unreachable ({reason})"
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RestError(f"reward server `{name}` at {server.url} answered something that is not JSON") from None
        except OSError as exc:  # a reset connection: the server died mid-answer
            last = f"dropped the connection ({exc})"
            continue
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise RestError(
                f'reward server `{name}` at {server.url} answered {str(answer)[:100]!r}; the protocol is {{"rewards": '
                "[one value per row]}"
            )
        return answer["rewards"]
    raise RestError(
        f"reward server `{name}` at {server.url} {last} (tried {attempt + 1} time(s)); start it or fix "
        f"reward.servers.{name}.url, then run the same command again (finished shards are kept)"
    )


def server_scorer(name: str, rc, device: str) -> Scorer:
    """The component scored by reward server `name` of reward.servers."""
    server = rc.servers[name]

    def scored(sources, completions, references, columns: Mapping[str, Sequence] | None = None) -> np.ndarray:
        columns = {k: list(v) for k, v in (columns or {}).items()}
        ids = [str(i) for i in columns.get("source_id", range(len(completions)))]
        out = []
        for a in range(0, len(completions), server.batch_size):
            b = a + server.batch_size
            payload = {
                "sources": list(sources[a:b]),
                "completions": list(completions[a:b]),
                "references": list(references[a:b]),
                "columns": {k: v[a:b] for k, v in columns.items()},
            }
            values = ask(name, server, payload)
            out.append(check_values(f"server {name}", values, len(payload["completions"]), ids[a:b]))
        return np.concatenate(out) if out else np.zeros(0)

    return Scorer(scored, takes_columns=True)


# ---------------------------------------------------------------------------------------------------------------
# rest reward serve


def make_server(reward_cfg, host: str, port: int, device: str = "cpu") -> ThreadingHTTPServer:
    """An HTTP server answering the protocol above with score_config(reward_cfg): `rewards` is the total, and
    `components` each reward_<name> column. One request at a time is scored (a model on one device)."""
    import threading

    from rest.rewards.components import score_config

    lock = threading.Lock()

    def finite(values) -> list:
        return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values).tolist()]

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # a health check
            self._send(200, {"ok": True, "components": list(reward_cfg.components)})

        def do_POST(self) -> None:
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                sources, completions = req["sources"], req["completions"]
                references = req.get("references") or [None] * len(completions)
                columns = req.get("columns") or {}
                if not (len(sources) == len(completions) == len(references)):
                    raise ValueError("sources, completions and references must have one value per row each")
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, {"error": f"not a scoring request: {exc}"})
                return
            try:
                with lock:
                    out = score_config(reward_cfg, sources, completions, references, device, columns)
            except RestError as exc:
                self._send(422, {"error": str(exc)})
                return
            except Exception as exc:
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})
                return
            components = {k.removeprefix("reward_"): finite(v) for k, v in out.items() if k.startswith("reward_")}
            components = {k: v for k, v in components.items() if not k.startswith("tokens_")}
            self._send(200, {"rewards": finite(out["reward"]), "components": components})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("reward serve: " + format % args)

    return ThreadingHTTPServer((host, port), Handler)
