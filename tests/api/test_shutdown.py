"""A controller that shuts down answers its waiting long polls at once, with what it has.

Every agent holds a peer-list long poll open, and route followers hold one on the table. On
SIGTERM (a rolling restart, a scale-down) uvicorn stops listening and waits up to 5 s for the
requests in flight; a long poll still waiting then was cancelled and answered 500, which each
agent logged and counted as the controller failing. Now they answer 304 as the shutdown begins.
"""

from __future__ import annotations

import signal
import threading
import time

from tests.conftest import ControllerProcess

REGION = "aws:us-east-1"


def test_waiting_long_polls_answer_304_when_the_controller_shuts_down(controller: ControllerProcess) -> None:
    controller.add_region(REGION)
    node = controller.join_node(REGION)
    with controller.client() as c:

        def settled(path: str) -> str:  # the ETag once a 2 s long poll brings no change (the join moved both)
            etag = c.get(path).headers["etag"]
            for _ in range(20):
                r = c.get(path, params={"wait": 2}, headers={"If-None-Match": etag})
                if r.status_code == 304:
                    return etag
                etag = r.headers["etag"]
            raise AssertionError(f"{path} kept changing")

        polls = {
            "peers": (
                f"/v1/nodes/{node['node_id']}/peers",
                {"wait": 25},
                settled(f"/v1/nodes/{node['node_id']}/peers"),
            ),
            "routes": ("/v1/routes", {"wait": 25}, settled("/v1/routes")),
        }
    answers: dict[str, tuple[int, float]] = {}

    def poll(name: str) -> None:
        path, params, etag = polls[name]
        with controller.client() as c:
            r = c.get(path, params=params, headers={"If-None-Match": etag}, timeout=30)
        answers[name] = (r.status_code, time.monotonic())

    threads = [threading.Thread(target=poll, args=(name,)) for name in polls]
    for t in threads:
        t.start()
    time.sleep(1.0)  # both polls are waiting
    assert not answers, answers
    assert controller.proc is not None
    sigterm = time.monotonic()
    controller.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(15)
    controller.stop()
    assert {name: code for name, (code, _at) in answers.items()} == {"peers": 304, "routes": 304}
    late = {name: round(at - sigterm, 2) for name, (_code, at) in answers.items()}
    assert all(s < 2.0 for s in late.values()), f"answered long after SIGTERM (graceful timeout 5 s): {late}"
